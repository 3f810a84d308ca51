"""bdprune: find and prune backdoor neurons in image classifiers.

Implements "Pre-activation Distributions Expose Backdoor Neurons" (Zheng et al., NeurIPS 2022): entropy-based
pruning (EP) and BN-statistics pruning (BNP), with the attacks, baselines and metrics around them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`bdprune.scan`: the model-level verdict (`bdprune.detection.scan`), imported on first use."""
    if name == "scan":
        from .detection import scan

        return scan
    raise AttributeError(f"module 'bdprune' has no attribute {name!r}")
