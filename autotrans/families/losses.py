"""Losses and helpers shared by the GAN families (Pix2Pix, CycleGAN, SRGAN).

Every function works on ``(N, C, D, H, W)`` tensors in the plan's normalized space; masks are
``(N, 1, D, H, W)`` float 0/1 (all ones when the dataset has no body masks).
"""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over the voxels inside ``mask`` (all voxels without one).

    Averaging over mask voxels, not over the patch, keeps the loss scale independent of how much air a patch
    holds, so the L1 weight (Pix2Pix's lambda = 100) means the same for head and pelvis patches. A patch
    without any mask voxel contributes 0.
    """
    diff = (pred.float() - target.float()).abs()
    if mask is None:
        return diff.mean()
    m = mask.float().expand_as(diff)
    return (diff * m).sum() / m.sum().clamp_min(1.0)


def lsgan_loss(pred: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017, "Least Squares GANs", Eq. 2 with a=0, b=c=1): mean (D(x) - t)^2,
    t = 1 for real (or for the generator's fakes in the G step) and 0 for fakes in the D step."""
    pred = pred.float()
    return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))


def bce_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Standard (non-saturating) GAN loss on logits (Goodfellow et al. 2014; SRGAN, Ledig et al. 2017, Eq. 6)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


def relativistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average discriminator loss (Jolicoeur-Martineau 2018; ESRGAN, Wang et al. 2018, Eq. 2):
    real should look more real than the average fake and fakes less real than the average real."""
    r, f = real_logits.float(), fake_logits.float()
    return 0.5 * (bce_loss(r - f.mean(), True) + bce_loss(f - r.mean(), False))


def relativistic_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average generator loss (ESRGAN, Eq. 3): the discriminator loss with the roles swapped."""
    r, f = real_logits.float(), fake_logits.float()
    return 0.5 * (bce_loss(r - f.mean(), False) + bce_loss(f - r.mean(), True))


def feature_l1(real: Sequence[torch.Tensor] | torch.Tensor, fake: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Mean over layers of the L1 distance between feature maps (a perceptual loss, Johnson et al. 2016, with
    L1 as in pix2pixHD's feature matching, Wang et al. 2018, Eq. 4)."""
    if isinstance(real, torch.Tensor):
        real, fake = [real], [fake]
    if len(real) != len(fake) or not real:
        raise ValueError(f"feature lists differ in length ({len(real)} vs {len(fake)}) or are empty")
    return sum(F.l1_loss(f.float(), r.float()) for r, f in zip(real, fake)) / len(real)


def set_requires_grad(nets: Iterable[nn.Module], flag: bool) -> None:
    """Freeze/unfreeze networks, so a generator step does not compute (or leave behind) discriminator grads."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


class ImagePool:
    """History of generated images for discriminator updates (Shrivastava et al. 2017, Sec. 2.3; CycleGAN Sec. 4).

    Until ``size`` images are stored, each new image is stored and returned. Afterwards, each image is, with
    probability 1/2, returned as is, or swapped with a uniformly chosen stored image, which is returned
    instead. The discriminator so sees older fakes too, which damps oscillation. ``size = 0`` disables it.
    The RNG is private and seeded, so training runs repeat.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"image pool size must be >= 0, got {size}")
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    def state_dict(self, max_bytes: int = 256 * 1024 ** 2) -> dict[str, Any]:
        """Stored images and RNG state, so a resumed run continues exactly; images are left out (and the pool
        refills within ``size`` steps) when they would make a checkpoint larger than ``max_bytes``."""
        nbytes = sum(im.numel() * im.element_size() for im in self.images)
        keep = nbytes <= max_bytes
        if not keep:
            logger.warning("image pool (%.0f MiB) not checkpointed; a resumed run refills it", nbytes / 2 ** 20)
        return {"images": [im.cpu() for im in self.images] if keep else [], "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.images = [im.to(device) for im in state["images"]]
        self.rng.setstate(state["rng"])

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Images (detached) to show the discriminator, one per input image."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                idx = self.rng.randrange(self.size)
                out.append(self.images[idx])
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, dim=0)


class LinearDecay:
    """LR factor per epoch: 1 until ``decay_start``, then linear to 0 at ``num_epochs`` (Pix2Pix/CycleGAN: constant
    for the first half, then linear decay)."""

    def __init__(self, num_epochs: int, decay_start: int | None = None) -> None:
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        self.num_epochs = int(num_epochs)
        self.decay_start = int(num_epochs // 2 if decay_start is None else decay_start)

    def __call__(self, epoch: int) -> float:
        if epoch < self.decay_start:
            return 1.0
        return max(0.0, (self.num_epochs - epoch) / max(self.num_epochs - self.decay_start, 1))


@contextlib.contextmanager
def evaluating(nets: Iterable[nn.Module]) -> Iterator[None]:
    """Run a block with ``nets`` in eval mode and without grads, then restore each net's previous mode
    (validation must not change training state)."""
    nets = list(nets)
    modes = [n.training for n in nets]
    try:
        for n in nets:
            n.eval()
        with torch.no_grad():
            yield
    finally:
        for n, mode in zip(nets, modes):
            n.train(mode)


def resolved(family: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter in ``defaults`` as the family sees it (override > plan family section > default)."""
    return {key: family.hparam(key, default) for key, default in defaults.items()}


def masked_ssim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, window: int = 7,
                     data_range: float = 2.0, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """``1 - SSIM`` averaged over the voxels inside ``mask`` (all voxels without one), differentiable.

    The SSIM map is the evaluation's formula (Wang et al. 2004 with scikit-image's uniform ``window``^3 window
    and sample covariance, see ``autotrans.evaluation.ssim``) on the network's normalized space, whose range is
    [-1, 1] (``data_range`` 2). The map is computed on the whole patch (``avg_pool3d``, replicate padding so
    the patch border does not see zeros) and averaged over the mask, like ``masked_l1``.
    """
    p, t = pred.float(), target.float()
    pad = window // 2

    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.pad(x, (pad,) * 6, mode="replicate"), window, stride=1)

    ux, uy = mean(p), mean(t)
    cov = window ** 3 / (window ** 3 - 1.0)
    vx = cov * (mean(p * p) - ux * ux)
    vy = cov * (mean(t * t) - uy * uy)
    vxy = cov * (mean(p * t) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    if mask is None:
        return 1.0 - ssim.mean()
    m = mask.float().expand_as(ssim)
    return 1.0 - (ssim * m).sum() / m.sum().clamp_min(1.0)
