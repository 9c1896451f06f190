"""What the latent models share: the frozen shared autoencoder, latent batches, EMA weights, the latent protocol
inference relies on, and sampling a patch. Each model (ldm, ldm_prior, ldm_controlnet, bbdm, flow_matching)
only adds its denoiser networks, its training loss and its sampler.

One autoencoder for every domain (as the LDM and the released BBDM use one first stage): each source channel
and the target are encoded separately by the same single-channel autoencoder, so a source latent and a target
latent live in one space — what a bridge or a flow *between* them needs. ``encode_source`` returns the source
channels' latents concatenated (``C * latent_channels`` channels); a model that needs one source end point
(the bridge, the flow) takes channel 0's.

EMA: every latent model keeps an exponential moving average of its denoiser weights (decay 0.995 every 8
steps, as BBDM's released configs; the warm-up ``min(decay, (1 + n) / (10 + n))`` of the LDM code replaces
their fixed start step so that short runs still average recent weights). Validation and prediction use the EMA
weights (``ema = false`` turns it off); checkpoints store both.

Latent protocol (used by ``autotrans.inference.latent``): ``latent = True``, ``downsampling_factor``,
``latent_channels``, ``latent_patch_size``, ``sampling_steps``, ``encode_source``, ``decode_target``,
``sample_latent(z_source, noise, generator)`` (the EMA weights' sampler).

The autoencoder weights come from the fold's trained ``autoencoder`` model (path in the
``autoencoder_checkpoint`` override, set by the training run) and are stored again in every latent model's
checkpoints, so a latent model's results folder predicts on its own.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from autotrans.errors import ConfigurationError
from autotrans.families.base import Family, unwrap
from autotrans.families.losses import evaluating, resolved
from autotrans.networks.latent import build_autoencoder, latent_divisor

logger = logging.getLogger(__name__)

#: defaults every latent model shares (each module adds its own)
COMMON_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4, "weight_decay": 0.0, "num_epochs": 1000, "autoencoder_checkpoint": None,
    "ema": True, "ema_decay": 0.995, "ema_every": 8,
    # per-epoch validation in physical units samples only this many batches with this many steps (the
    # validation loss still covers every batch): sampling 50 batches at the full step count every epoch would
    # cost more than the epoch's training
    "val_sampling_batches": 4, "val_sampling_steps": 10,
}
VALIDATION_SEED = 1234
AUTOENCODER = ("autoencoder", "autoencoder_checkpoint")


def latent_section(family: Family) -> dict[str, Any]:
    """The plan's ``latent`` family section (shared by the autoencoder and the latent models)."""
    section = family.configuration.data.get("families", {}).get("latent")
    if not section or not section.get("autoencoder", {}).get("shared"):
        raise ConfigurationError(f"{family.name}: the plan's configuration {family.configuration.name!r} has no "
                                 "shared-autoencoder 'latent' section (re-plan with this version of autotrans)")
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


def load_trained(path: str | Path, family: str, plans: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A dependency's checkpoint (the fold's autoencoder, the ControlNet's prior), checked to be that family's."""
    from autotrans.results import load_checkpoint  # local: results imports the registry

    ckpt = load_checkpoint(Path(path), plans, map_location=device)
    if ckpt.get("family") != family:
        raise ConfigurationError(f"{path}: a checkpoint of {ckpt.get('family')!r}, not of {family}")
    return ckpt


class LatentFamily(Family):
    """Base of the latent models: subclasses implement ``build_denoisers``, ``latent_loss`` and ``sample_latent``."""

    latent = True
    stochastic = True
    #: whether ``sample_latent`` also needs the source image tile (``source_image=``, image resolution)
    needs_source_image = False
    dependencies = (AUTOENCODER,)
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
        self.ae = build_autoencoder(ae, 1).to(self.device).requires_grad_(False)
        self.build_denoisers()
        self.ema = {name: copy.deepcopy(net).requires_grad_(False).eval() for name, net in self.denoisers().items()} \
            if self.hp("ema") else {}
        self.ema_updates = 0
        self._steps: int | None = None  # a temporary sampling-step count (cheap validation sampling)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}

    @abstractmethod
    def build_denoisers(self) -> None:
        """Create the trainable networks (attributes named like the keys of ``denoisers()``)."""

    @abstractmethod
    def denoisers(self) -> dict[str, torch.nn.Module]:
        """The trainable networks, by name."""

    def frozen_networks(self) -> dict[str, torch.nn.Module]:
        """Networks loaded from dependencies and never trained here (checkpointed for inference)."""
        return {"ae": self.ae}

    def networks(self) -> dict[str, torch.nn.Module]:
        return {**self.frozen_networks(), **self.denoisers(), **{f"ema_{k}": v for k, v in self.ema.items()}}

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
        if self._steps is not None:
            return self._steps
        if "sampling_steps" in self.overrides:
            return int(self.overrides["sampling_steps"])
        return int(self.section.get("sampling_steps", {}).get(self.name, 50))

    # --- training ------------------------------------------------------------------------------
    def load_dependencies(self) -> None:
        """Copy the fold's trained autoencoder in (training only; a checkpoint of this model has its own copy)."""
        path = self.hp("autoencoder_checkpoint")
        if not path:
            raise ConfigurationError(f"{self.name}: no trained autoencoder given (train 'autoencoder' for this fold "
                                     "first; autotrans_train does so automatically)")
        self.ae.load_state_dict(load_trained(path, "autoencoder", self.plans.data, self.device)["networks"]["ae"])

    def configure_optimizers(self) -> None:
        params = [p for net in self.denoisers().values() for p in net.parameters() if p.requires_grad]
        self._optimizers = {"denoiser": torch.optim.AdamW(params, lr=float(self.hp("lr")),
                                                          weight_decay=float(self.hp("weight_decay")))}
        self.reset_ema()  # the average starts from the weights training starts from (a resume then loads its own)

    @torch.no_grad()
    def reset_ema(self) -> None:
        for name, ema in self.ema.items():
            ema.load_state_dict(unwrap(getattr(self, name)).state_dict())
        self.ema_updates = 0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def train_state_dict(self) -> dict[str, Any]:
        return {**super().train_state_dict(), "ema_updates": self.ema_updates}

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        super().load_train_state_dict(state)
        self.ema_updates = int(state.get("ema_updates", 0))

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """Every ``ema_every`` steps: ``ema = d * ema + (1 - d) * weights``, d = min(decay, (1 + n) / (10 + n))."""
        if not self.ema or (step + 1) % int(self.hp("ema_every")):
            return
        decay = min(float(self.hp("ema_decay")), (1 + self.ema_updates) / (10 + self.ema_updates))
        for name, ema in self.ema.items():
            live = unwrap(getattr(self, name)).state_dict()
            for key, value in ema.state_dict().items():
                if value.dtype.is_floating_point:
                    value.mul_(decay).add_(live[key].detach(), alpha=1 - decay)
                else:
                    value.copy_(live[key])
        self.ema_updates += 1

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Run a block with the EMA denoisers in place of the live ones (validation, prediction)."""
        if not self.ema:
            yield
            return
        live = {name: getattr(self, name) for name in self.ema}
        try:
            for name, ema in self.ema.items():
                setattr(self, name, ema)
            yield
        finally:
            for name, net in live.items():
                setattr(self, name, net)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, D, H, W)`` -> each channel encoded by the shared autoencoder, concatenated: ``(N, C * lc, ...)``."""
        with torch.no_grad(), self.autocast():
            return torch.cat([self.ae.encode(x[:, c:c + 1]) for c in range(x.shape[1])], dim=1).float()

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the device, padded with air to the latent divisor."""
        return pad_to_multiple(x.to(self.device), self.divisor, -1.0)[0]

    def latents(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source latents, target latent, air-padded source image) of a training batch; no gradients."""
        src = self.pad(batch["source"])
        return self.encode_images(src), self.encode_images(self.pad(batch["target"])), src

    @abstractmethod
    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        """The model's training loss on one latent batch (``source`` is the padded source image)."""

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        zs, zt, src = self.latents(batch)
        with self.autocast():
            loss = self.latent_loss(zs, zt, src, None)
        self.optimize(loss, self._optimizers["denoiser"], [p for n in self.denoisers().values() for p in n.parameters()])
        self.update_ema(step)
        return {"loss": loss.item()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The training loss with fixed timesteps and noise, EMA weights: a smooth curve that falls as it learns."""
        zs, zt, src = self.latents(batch)
        g = torch.Generator(device=self.device)
        g.manual_seed(VALIDATION_SEED)
        with self.ema_weights(), evaluating(list(self.denoisers().values())), torch.no_grad(), self.autocast():
            return {"loss": self.latent_loss(zs, zt, src, g).item()}

    def validation_prediction_limit(self) -> int | None:
        return int(self.hp("val_sampling_batches"))

    def validation_prediction(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A cheap sample for the per-epoch physical-unit error: ``val_sampling_steps`` steps, seeded."""
        g = torch.Generator(device=self.device)
        g.manual_seed(VALIDATION_SEED)
        self._steps = min(int(self.hp("val_sampling_steps")), self.sampling_steps)
        try:
            return self.predict_patch(batch["source"], g)
        finally:
            self._steps = None

    # --- the latent protocol -------------------------------------------------------------------
    def encode_source(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_images(x.to(self.device))

    def decode_target(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.ae.decode(z.to(self.device)).float().clamp(-1.0, 1.0)

    def source_end(self, z_source: torch.Tensor) -> torch.Tensor:
        """The source end point of a bridge or flow: source channel 0's latent (the only one for one channel)."""
        return z_source[:, :self.latent_channels]

    @abstractmethod
    def run_sampler(self, z_source: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None,
                    **extra: torch.Tensor) -> torch.Tensor:
        """The model's sampler: target latent for a source latent tile; ``noise`` (one latent's shape) is the tile's
        fixed start noise."""

    def sample_latent(self, z_source: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None,
                      **extra: torch.Tensor) -> torch.Tensor:
        """The latent protocol's sampler (what inference calls): ``run_sampler`` with the EMA weights, no autograd."""
        with self.ema_weights(), torch.no_grad():
            return self.run_sampler(z_source, noise, generator, **extra)

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode, sample, decode one image patch (padded with air to the latent divisor and cropped back)."""
        padded, inner = pad_to_multiple(x.to(self.device), self.divisor, -1.0)
        zs = self.encode_source(padded)
        noise = torch.randn((zs.shape[0], self.latent_channels, *zs.shape[2:]), generator=generator,
                            device=self.device, dtype=zs.dtype)
        extra = {"source_image": padded} if self.needs_source_image else {}
        zt = self.sample_latent(zs, noise, generator, **extra)
        return self.decode_target(zt)[(slice(None), slice(None), *inner)]

    def denoiser(self, name: str) -> torch.nn.Module:
        """A trainable network unwrapped (for frozen or inference calls outside DDP's forward bookkeeping)."""
        return unwrap(getattr(self, name))


def random_timesteps(n: int, high: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=device)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
