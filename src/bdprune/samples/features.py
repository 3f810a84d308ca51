"""Per-sample features of a network for the poisoned-sample detectors: the input of its last linear layer
(the penultimate representation, what spectral signatures and activation clustering read) and its logits.

One forward pass in eval mode under `torch.inference_mode()`; the hook lives only inside the pass. Works on
any network whose classifier ends in an `nn.Linear` (bdprune's ResNets, torchvision, timm). `recording`
reads them off another pass over the same samples (EP's scoring pass), so EP's default reads its training set
once for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.batches import iterate_batches
from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models.device import evaluating, model_device
from ..models.head import classifier_head


@dataclass
class SampleFeatures:
    """Attributes:
    features: (N, D) float32, the input of the last linear layer.
    logits: (N, K) float32.
    labels: (N,) int64, the labels the samples carry (possibly poisoned ones).
    """

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def loss(self) -> torch.Tensor:
        """(N,) per-sample cross-entropy under the carried labels."""
        return nn.functional.cross_entropy(self.logits, self.labels, reduction="none")


@dataclass
class Recorder:
    """The classifier's inputs and outputs of every forward pass while `recording` is open."""

    features: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)

    def of(self, data: ImageSet) -> SampleFeatures | None:
        """The features of `data`, when exactly one pass over it, in order, was recorded (else None: the caller
        reads them itself)."""
        if not self.features or sum(len(f) for f in self.features) != len(data):
            return None
        return SampleFeatures(torch.cat(self.features), torch.cat(self.logits), data.labels.cpu().clone())


@contextmanager
def recording(model: nn.Module, enabled: bool = True) -> Iterator[Recorder]:
    """Record the input and output of `model`'s classifier (`classifier_head`) in every forward pass of the block;
    a model without one, or `enabled` False, records nothing."""
    recorder = Recorder()
    try:
        head = classifier_head(model)
    except InvalidInput:
        head = None
    if head is None or not enabled:
        yield recorder
        return

    def record(_m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        recorder.features.append(inputs[0].flatten(1).float().cpu())
        recorder.logits.append(output.float().cpu())

    hook = head.register_forward_hook(record)
    try:
        yield recorder
    finally:
        hook.remove()


def sample_features(model: nn.Module, data: ImageSet, *, batch_size: int = 512) -> SampleFeatures:
    """Penultimate features and logits of every sample of `data` (on the CPU), model state unchanged: one pass
    in eval mode, read by `recording`."""
    classifier_head(model, "the poisoned-sample detector")  # say so before the pass when there is none
    with recording(model) as recorder, evaluating(model):
        for images, _, _ in iterate_batches(data, batch_size, device=model_device(model)):
            try:
                model(images)
            except RuntimeError as exc:
                raise InvalidInput(
                    f"the model cannot process images of shape {data.image_shape} from {data.name!r} "
                    f"({str(exc).splitlines()[0]}); check the dataset and the model's input channels and size"
                ) from None
    features = recorder.of(data)
    assert features is not None  # one pass over `data`, in order
    return features
