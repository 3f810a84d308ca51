"""SSBA (Li et al., "Invisible Backdoor Attack with Sample-Specific Triggers", ICCV 2021).

SSBA poisons an image with a StegaStamp encoder (Tancik et al., CVPR 2020): an encoder-decoder pair is
trained so that the encoder hides a bit string in an image as a small residual and the decoder reads it
back. Every poisoned image carries the same code (the original encodes the target label's name), but the
residual depends on the image, so the trigger is sample-specific and invisible. The paper under
reproduction evaluates it on Tiny-ImageNet only (section 5.1); the peers ship pretrained encoders or
precomputed images, so bdprune trains its own encoder with `fit`.

Our encoder is StegaStamp in miniature: the code goes through a dense layer to a low-resolution map that is
upsampled and concatenated with the image, and a two-level U-Net outputs the residual. The residual is
bounded: `residual = eps * tanh(raw)`, so every poisoned pixel is within `eps` (default 8/255) of the
clean one, before clamping to [0, 1] (which only shrinks it). Training minimises the decoder's bit
cross-entropy plus a weight on the residual's mean square (StegaStamp's L2 image loss, ramped in as in its
code), with uniform quantisation noise between encoder and decoder because poisoned images are stored as
uint8. StegaStamp's perceptual (LPIPS), critic and distortion losses are left out; the tanh bound does the
job of keeping the residual invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.imageset import ImageSet, to_float
from ..params import param
from .base import Tensors, register_attack
from .learned import LearnedAttack, seeded_init
from .nets import BitDecoder, UNet

CODE_CHANNELS = 8  # channels of the code's low-resolution map (StegaStamp: 3 at 1/8 of 400 px)
FIT_BUDGETS = {
    "cpu": {"fit_steps": 1500, "width": 8},
    "paper": {"fit_steps": 20000, "width": 32},
}


class StegaEncoder(nn.Module):
    """(images (N, C, H, W) in [0, 1], codes (N, bits) in {0, 1}) -> residuals (N, C, H, W) in [-eps, eps]."""

    def __init__(self, image_shape: tuple[int, int, int], bits: int, width: int, eps: float) -> None:
        super().__init__()
        c, h, w = image_shape
        self.low = ((h + 3) // 4, (w + 3) // 4)
        self.image_size = (h, w)
        self.eps = eps
        self.code_channels = CODE_CHANNELS
        self.code_map = nn.Linear(bits, CODE_CHANNELS * self.low[0] * self.low[1])
        self.unet = UNet(c + CODE_CHANNELS, c, width)

    def forward(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        n = len(images)
        code = self.code_map(2 * codes - 1).view(n, self.code_channels, *self.low)  # (N, K, H/4, W/4)
        code = F.interpolate(code, size=self.image_size, mode="bilinear", align_corners=False)  # (N, K, H, W)
        return self.eps * torch.tanh(self.unet(torch.cat([2 * images - 1, code], 1)))


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class SSBA(LearnedAttack):
    """Sample-specific invisible trigger from a trained steganographic encoder.

    Args:
        image_shape, num_classes, target, mode: as for every attack.
        bits: length of the hidden code (StegaStamp: 100 on large images; 32 suits 28 to 32 px images).
        eps: L-infinity bound of the residual, in [0, 1] units (default 8/255).
        image_loss: final weight of the residual's mean square in the fit loss.
        fit_steps: encoder/decoder training steps (budget "cpu": 1500, "paper": 20000).
        batch_size: fit batch size.
        lr: Adam learning rate of the fit.
        width: U-Net width (budget "cpu": 8, "paper": 32).
        budget: "cpu" or "paper" sizes for `fit_steps` and `width` when not given.
        seed: initialisation, code and fit randomness (default: drawn from `generator`).
        generator: randomness for `seed`.
        tensors: a fitted attack's `state_dict()`: restores the encoder, decoder and code.

    Example:
        >>> attack = SSBA((1, 28, 28), 10, budget="cpu", generator=torch.Generator().manual_seed(0))
        >>> attack.fit(train_set)  # trains the encoder and decoder on the attacker's data
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "ssba"
    fit_budgets = FIT_BUDGETS

    bits: int = param(32, ge=1)
    eps: float = param(8 / 255, gt=0.0, le=1.0)
    image_loss: float = param(20.0, ge=0.0)
    fit_steps: int | None = param(None, ge=1)
    batch_size: int = param(64, ge=1)
    lr: float = param(3e-3, gt=0.0)
    width: int | None = param(None, ge=1)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        self.encoder = seeded_init(lambda: StegaEncoder(self.image_shape, self.bits, self.width, self.eps), self.seed)
        self.decoder = seeded_init(lambda: BitDecoder(self.image_shape[0], self.bits, self.width), self.seed + 1)
        # The one code every poisoned image carries (the original encodes the target's name).
        self.code = torch.randint(0, 2, (self.bits,), generator=torch.Generator().manual_seed(self.seed + 2)).float()
        if tensors:
            if "code" in tensors:
                self.code = tensors["code"].float().cpu()
            self.load_fitted(tensors)

    def networks(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def extra_tensors(self) -> Tensors:
        return {"code": self.code}

    def residuals(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's residuals (N, C, H, W), each within [-eps, eps], for float images in [0, 1]."""
        self.require_fitted()
        encoder = self.nets_on(images.device)["encoder"]
        with torch.no_grad():
            return encoder(images, self.code.to(images.device).expand(len(images), -1))

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.residuals(images)).clamp(0.0, 1.0)

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """Bits (N, bits) the decoder reads from float images: the code on poisoned images."""
        self.require_fitted()
        decoder = self.nets_on(images.device)["decoder"]
        with torch.no_grad():
            return (decoder(images) > 0).float()

    def _fit(self, data: ImageSet, device: torch.device, progress: bool) -> None:
        g = torch.Generator().manual_seed(self.seed + 3)
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        self.encoder.train()
        self.decoder.train()
        # StegaStamp learns the code first and ramps the image loss in afterwards: here none for the first
        # 40% of the steps, then linearly up to `image_loss` over the next 40%.
        quiet, ramp = int(0.4 * self.fit_steps), max(1, int(0.4 * self.fit_steps))
        recent_bits, recent_res = [], []
        with tqdm(total=self.fit_steps, desc="ssba encoder", unit="step", disable=not progress, leave=False) as bar:
            for step in range(self.fit_steps):
                pick = torch.randint(len(data), (self.batch_size,), generator=g)
                x = to_float(data.images[pick]).to(device)
                codes = torch.randint(0, 2, (len(x), self.bits), generator=g).float().to(device)
                residual = self.encoder(x, codes)
                poisoned = (x + residual).clamp(0.0, 1.0)
                # Poisoned sets are stored as uint8: the decoder must read the code through rounding.
                noise = (torch.rand(x.shape, generator=g).to(device) - 0.5) / 255.0
                logits = self.decoder(poisoned + noise)
                bit_loss = F.binary_cross_entropy_with_logits(logits, codes)
                image_loss = residual.pow(2).mean()
                weight = self.image_loss * min(1.0, max(0.0, (step - quiet) / ramp))
                loss = bit_loss + weight * image_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                recent_bits.append(((logits > 0).float() == codes).float().mean().item())
                recent_res.append(residual.detach().abs().mean().item())
                recent_bits, recent_res = recent_bits[-50:], recent_res[-50:]
                bar.set_postfix(bits=recent_bits[-1], loss=loss.item(), refresh=False)
                bar.update(1)
        self.fit_log = {
            "bit_accuracy_last_50_steps": sum(recent_bits) / len(recent_bits),
            "mean_abs_residual_last_50_steps": sum(recent_res) / len(recent_res),
        }
