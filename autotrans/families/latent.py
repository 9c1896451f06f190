"""What the four latent models share: frozen source/target autoencoders, latent batches, the latent protocol
inference relies on, and sampling a patch. Each model (ldm, ldm_controlnet, bbdm, flow_matching) only adds
its denoiser networks, its training loss and its sampler.

Latent protocol (used by ``autotrans.inference.latent``): ``latent = True``, ``downsampling_factor``,
``latent_channels``, ``latent_patch_size``, ``sampling_steps``, ``encode_source``, ``decode_target``,
``sample_latent(z_source, noise, generator)``.

The autoencoder weights come from the fold's trained ``autoencoder`` model (path in the
``autoencoder_checkpoint`` override, set by the training run) and are stored again in every latent model's
checkpoints, so a latent model's results folder predicts on its own.
"""
from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from autotrans.errors import ConfigurationError
from autotrans.families.base import Family, unwrap
from autotrans.families.losses import evaluating, resolved
from autotrans.networks.latent import build_autoencoder, latent_divisor

logger = logging.getLogger(__name__)

#: defaults every latent model shares (each module adds its own)
COMMON_DEFAULTS: dict[str, Any] = {"lr": 1e-4, "weight_decay": 0.0, "num_epochs": 1000, "autoencoder_checkpoint": None}
VALIDATION_SEED = 1234


def latent_section(family: Family) -> dict[str, Any]:
    """The plan's ``latent`` family section (shared by the autoencoder and the four latent models)."""
    section = family.configuration.data.get("families", {}).get("latent")
    if not section:
        raise ConfigurationError(f"{family.name}: the plan's configuration {family.configuration.name!r} has no "
                                 "'latent' family section (re-plan with this version of autotrans)")
    return section


def pad_to_multiple(x: torch.Tensor, divisor: int, value: float) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad ``(N, C, D, H, W)`` symmetrically with ``value`` so each spatial axis is a multiple of ``divisor``;
    also return the spatial slices of the original (to crop predictions back)."""
    amounts = [(-s) % divisor for s in x.shape[2:]]
    if not any(amounts):
        return x, tuple(slice(None) for _ in amounts)
    pads = [(a // 2, a - a // 2) for a in amounts]
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]
    return F.pad(x, flat, value=float(value)), tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, x.shape[2:]))


class LatentFamily(Family):
    """Base of the latent models: subclasses implement ``build_denoisers``, ``latent_loss`` and ``sample_latent``."""

    latent = True
    stochastic = True
    #: whether ``sample_latent`` also needs the source image tile (``source_image=``, image resolution)
    needs_source_image = False
    requires_autoencoder = True
    batch_size_section = ("latent", "diffusion_unet")
    defaults: dict[str, Any] = COMMON_DEFAULTS

    # --- building ------------------------------------------------------------------------------
    def build(self) -> None:
        self.section = latent_section(self)
        ae = self.section["autoencoder"]
        self.downsampling_factor = int(ae["downsampling_factor"])
        self.latent_channels = int(ae["latent_channels"])
        self.latent_patch_size = [int(v) for v in ae["latent_patch_size"]]
        self.divisor = latent_divisor(self.section)
        self.source_channels = len(self.plans.source_modalities)
        self.ae_source = build_autoencoder(ae, self.source_channels).to(self.device)
        self.ae_target = build_autoencoder(ae, 1).to(self.device)
        for net in (self.ae_source, self.ae_target):
            net.requires_grad_(False)
        self.build_denoisers()
        self._optimizers: dict[str, torch.optim.Optimizer] = {}

    @abstractmethod
    def build_denoisers(self) -> None:
        """Create the trainable networks (attributes named like the keys of ``denoisers()``)."""

    @abstractmethod
    def denoisers(self) -> dict[str, torch.nn.Module]:
        """The trainable networks, by name."""

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"ae_source": self.ae_source, "ae_target": self.ae_target, **self.denoisers()}

    def wrap_networks(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """DDP/compile only the trainable networks (DDP refuses modules without trainable parameters)."""
        for name, net in self.denoisers().items():
            setattr(self, name, wrap(net))

    def hp(self, key: str) -> Any:
        return self.hparam(key, self.defaults[key])

    def resolved_hparams(self) -> dict[str, Any]:
        out = resolved(self, self.defaults)
        out["sampling_steps"] = self.sampling_steps
        out["train_timesteps"] = int(self.section.get("train_timesteps", 1000))
        return out

    @property
    def sampling_steps(self) -> int:
        """``--steps`` (override ``sampling_steps``), else the plan's default for this model."""
        if "sampling_steps" in self.overrides:
            return int(self.overrides["sampling_steps"])
        return int(self.section.get("sampling_steps", {}).get(self.name, 50))

    # --- training ------------------------------------------------------------------------------
    def load_dependencies(self) -> None:
        """Copy the fold's trained autoencoders in (training only; a checkpoint of this model has its own copy)."""
        path = self.hp("autoencoder_checkpoint")
        if not path:
            raise ConfigurationError(f"{self.name}: no trained autoencoder given (train 'autoencoder' for this fold "
                                     "first; autotrans_train does so automatically)")
        from autotrans.results import load_checkpoint  # local: results imports the registry

        ckpt = load_checkpoint(Path(path), self.plans.data, map_location=self.device)
        if ckpt.get("family") != "autoencoder":
            raise ConfigurationError(f"{path}: not an autoencoder checkpoint (family {ckpt.get('family')!r})")
        for m in ("source", "target"):
            getattr(self, f"ae_{m}").load_state_dict(ckpt["networks"][f"ae_{m}"])

    def configure_optimizers(self) -> None:
        params = [p for net in self.denoisers().values() for p in net.parameters()]
        self._optimizers = {"denoiser": torch.optim.AdamW(params, lr=float(self.hp("lr")),
                                                          weight_decay=float(self.hp("weight_decay")))}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def latents(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source latent, target latent, air-padded source image) of a training batch; no gradients."""
        src, _ = pad_to_multiple(batch["source"].to(self.device), self.divisor, -1.0)
        tgt, _ = pad_to_multiple(batch["target"].to(self.device), self.divisor, -1.0)
        with torch.no_grad(), self.autocast():
            return self.ae_source.encode(src).float(), self.ae_target.encode(tgt).float(), src

    @abstractmethod
    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        """The model's training loss on one latent batch (``source`` is the padded source image)."""

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        zs, zt, src = self.latents(batch)
        with self.autocast():
            loss = self.latent_loss(zs, zt, src, None)
        self.optimize(loss, self._optimizers["denoiser"], [p for n in self.denoisers().values() for p in n.parameters()])
        return {"loss": loss.item()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The training loss with fixed timesteps and noise: a smooth curve that falls as the model learns."""
        zs, zt, src = self.latents(batch)
        g = torch.Generator(device=self.device)
        g.manual_seed(VALIDATION_SEED)
        with evaluating(list(self.denoisers().values())), torch.no_grad(), self.autocast():
            return {"loss": self.latent_loss(zs, zt, src, g).item()}

    # --- the latent protocol -------------------------------------------------------------------
    def encode_source(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.ae_source.encode(x.to(self.device)).float()

    def decode_target(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.ae_target.decode(z.to(self.device)).float().clamp(-1.0, 1.0)

    @abstractmethod
    def sample_latent(self, z_source: torch.Tensor, noise: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
        """Target latent for a source latent tile; ``noise`` (same shape) is the fixed start noise of the tile."""

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode, sample, decode one image patch (padded with air to the latent divisor and cropped back)."""
        padded, inner = pad_to_multiple(x.to(self.device), self.divisor, -1.0)
        zs = self.encode_source(padded)
        noise = torch.randn(zs.shape, generator=generator, device=self.device, dtype=zs.dtype)
        extra = {"source_image": padded} if self.needs_source_image else {}
        with torch.no_grad():
            zt = self.sample_latent(zs, noise, generator, **extra)
        return self.decode_target(zt)[(slice(None), slice(None), *inner)]

    def denoiser(self, name: str) -> torch.nn.Module:
        """A trainable network unwrapped (for frozen or inference calls outside DDP's forward bookkeeping)."""
        return unwrap(getattr(self, name))


def random_timesteps(n: int, high: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=device)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
