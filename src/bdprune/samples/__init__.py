"""Which training samples are poisoned (issue 23): per-label clusters of the penultimate features
(`detector.detect_poisoned`, what EP's default unlearns and `bdprune scan` lists), and the classic feature-space
detectors as baselines (spectral signatures, activation clustering). Reads only the model and the training set
(no poisoning record, no test data); depends on nothing of the defenses."""

from .baselines import activation_clustering, spectral_signatures
from .detector import detect_in_features, detect_poisoned
from .features import SampleFeatures, sample_features
from .result import SuspectedSamples, precision_recall

__all__ = [
    "SampleFeatures",
    "SuspectedSamples",
    "activation_clustering",
    "detect_in_features",
    "detect_poisoned",
    "precision_recall",
    "sample_features",
    "spectral_signatures",
]
