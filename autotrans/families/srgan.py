"""SRGAN (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a GAN") for same-resolution
3D translation: a residual generator and a VGG-style discriminator from the plan's ``srgan`` section.

Generator loss (paper Eq. 3, with L1 content as in ESRGAN): ``content_weight * |G(s) - t|_mask +
adversarial_weight * L_adv + perceptual_weight * L_perc``, defaults 1, 1e-3 (paper) and 6e-3 (the paper's
VGG-loss rescaling factor). ``L_adv`` is the non-saturating BCE of the paper (Eq. 6) or, with
``adversarial = "relativistic"``, ESRGAN's relativistic average loss. There is no ImageNet VGG for 3D CT/MR,
so ``L_perc`` is the L1 distance between the discriminator's stage features of target and fake
(feature matching, pix2pixHD Eq. 4; D frozen during the G step), or between the features of a user-supplied
3D network (``perceptual_weights``: a file written with ``torch.jit.save``, or a ``torch.export`` program
saved as ``.pt2``; its forward returns a tensor or a list of tensors).

Schedule within the run's budget, in the paper's proportions (Sec. 3.2: 10^6 SRResNet iterations, then 10^5
GAN iterations at 1e-4 and 10^5 at 1e-5): the first ``pretrain_fraction`` (5/6) of the epochs train G on the
content loss alone (SRResNet pre-training; D untouched), the GAN phase follows with the learning rates divided
by 10 for its second half (``gan_lr_drop``). A run of two or more epochs keeps at least one GAN epoch; a
one-epoch run has room for one phase only and trains the GAN. Adam, betas (0.9, 0.999).
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from autotrans.errors import ConfigurationError
from autotrans.families.base import Family, unwrap, register_family
from autotrans.families.pix2pix import sync_scheduled_lrs
from autotrans.families.losses import (
    bce_loss,
    evaluating,
    feature_l1,
    masked_l1,
    relativistic_d_loss,
    relativistic_g_loss,
    resolved,
    set_requires_grad,
)
from autotrans.networks import build_srgan_generator, build_vgg_discriminator

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "content_weight": 1.0,
    "adversarial_weight": 1e-3,
    "perceptual_weight": 6e-3,
    "perceptual_weights": None,
    "adversarial": "bce",
    "num_epochs": 1000,
    "pretrain_fraction": 5 / 6,
    "gan_lr_drop": 0.1,
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "betas": (0.9, 0.999),
    "output_activation": "tanh",
    "spectral_norm": False,
}
ADVERSARIAL = ("bce", "relativistic")


def pretrain_epochs(num_epochs: int, fraction: float) -> int:
    """Content-only (SRResNet) epochs of a run: ``fraction`` of it, leaving at least one GAN epoch."""
    return min(round(fraction * num_epochs), max(num_epochs - 1, 0))


def load_feature_network(path: str | Path, device: torch.device) -> torch.nn.Module:
    """A frozen 3D feature extractor for the perceptual loss: TorchScript (``torch.jit.save``) or, for a ``.pt2``
    file, a ``torch.export`` program (exported for the training batch shape, or with dynamic shapes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"perceptual_weights: {path} not found")
    if path.suffix == ".pt2":
        try:
            net: torch.nn.Module = torch.export.load(str(path)).module().to(device)
        except Exception as e:  # torch raises several types for a file that is no exported program
            raise ConfigurationError(f"perceptual_weights: {path} is not a torch.export program: {e}") from e
    else:
        try:
            net = torch.jit.load(str(path), map_location=device)
        except RuntimeError as e:
            raise ConfigurationError(f"perceptual_weights: {path} is not a TorchScript module (save one with "
                                     f"torch.jit.save(torch.jit.script(net), path), or a torch.export "
                                     f"program as .pt2): {e}") from e
        net.eval()  # exported programs refuse eval(); they carry no train/eval-dependent layers by construction
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@register_family("srgan")
class SRGANFamily(Family):
    """Residual generator + VGG-style discriminator with content, adversarial and perceptual losses."""

    def build(self) -> None:
        section = self.configuration.family(self.name)
        hp = self.resolved_hparams()
        if hp["adversarial"] not in ADVERSARIAL:
            raise ConfigurationError(f"srgan: adversarial must be one of {', '.join(ADVERSARIAL)}, got {hp['adversarial']!r}")
        n_src = len(self.plans.source_modalities)
        self.generator = build_srgan_generator(section["generator"], n_src, 1,
                                               activation=hp["output_activation"]).to(self.device)
        self.discriminator = build_vgg_discriminator(section["discriminator"], 1,
                                                     spectral_norm=bool(hp["spectral_norm"])).to(self.device)
        self.feature_net: torch.nn.Module | None = None
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: dict[str, Any] = {}

    def resolved_hparams(self) -> dict[str, Any]:
        """Every hyperparameter key of this family with the value this run uses (written to the results)."""
        return resolved(self, DEFAULTS)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def configure_optimizers(self) -> None:
        hp = self.resolved_hparams()
        betas = tuple(float(b) for b in hp["betas"])
        self._optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=float(hp["lr_g"]), betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=float(hp["lr_d"]), betas=betas),
        }
        n, pre, drop = int(hp["num_epochs"]), self.pretrain_epochs(), float(hp["gan_lr_drop"])
        drop_epoch = pre + math.ceil((n - pre) / 2)
        self._schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda e: drop if e >= drop_epoch else 1.0)
                            for k, o in self._optimizers.items()}
        if hp["perceptual_weights"]:  # training only: inference never needs the feature network
            self.feature_net = load_feature_network(hp["perceptual_weights"], self.device)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def pretrain_epochs(self) -> int:
        """Content-only epochs: ``pretrain_fraction`` of the run, leaving at least one GAN epoch."""
        return pretrain_epochs(int(self.hparam("num_epochs", DEFAULTS["num_epochs"])),
                               float(self.hparam("pretrain_fraction", DEFAULTS["pretrain_fraction"])))

    @classmethod
    def phases(cls, num_epochs: int, overrides: dict[str, Any] | None = None) -> dict[str, int]:
        """SRResNet pre-training (content loss), then the GAN: a 1-epoch run has no pre-training, so SRGAN's
        minimum is 2 epochs (at the default ``pretrain_fraction``; the plan's family section is not consulted)."""
        fraction = float((overrides or {}).get("pretrain_fraction", DEFAULTS["pretrain_fraction"]))
        pre = pretrain_epochs(int(num_epochs), fraction)
        if fraction <= 0:  # pre-training switched off (-o pretrain_fraction=0): the GAN phase alone
            return {"GAN": int(num_epochs)}
        return {"SRResNet pre-training": pre, "GAN": int(num_epochs) - pre}

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.pretrain_epochs()

    def schedulers(self) -> dict[str, Any]:
        return self._schedulers

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        with warnings.catch_warnings():  # pre-training never steps D's optimizer; its constant schedule may step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            super().on_epoch_end(epoch, num_epochs)

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        super().load_train_state_dict(state)
        sync_scheduled_lrs(self._schedulers)

    def _perceptual(self, real: torch.Tensor, fake: torch.Tensor, real_feats: list[torch.Tensor],
                    fake_feats: list[torch.Tensor]) -> torch.Tensor:
        """D-feature matching, or the user's feature network when ``perceptual_weights`` was given."""
        if self.feature_net is None:
            return feature_l1([f.detach() for f in real_feats], fake_feats)
        with torch.no_grad():
            ref = self.feature_net(real)
        return feature_l1(ref, self.feature_net(fake))

    def _adversarial(self, real_logits: torch.Tensor, fake_logits: torch.Tensor, for_g: bool) -> torch.Tensor:
        if self.hparam("adversarial", DEFAULTS["adversarial"]) == "relativistic":
            return (relativistic_g_loss if for_g else relativistic_d_loss)(real_logits, fake_logits)
        if for_g:
            return bce_loss(fake_logits, True)
        return 0.5 * (bce_loss(real_logits, True) + bce_loss(fake_logits, False))

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        src, tgt, mask = self.paired_inputs(batch)
        hp = self.resolved_hparams()
        with self.autocast():
            fake = self.generator(src)
        content = masked_l1(fake, tgt, mask)
        if self.warming_up:
            loss_g = float(hp["content_weight"]) * content
            self.optimize(loss_g, self._optimizers["generator"], self.generator.parameters())
            return {"loss_g": loss_g.item(), "loss_l1": content.item()}
        n = tgt.shape[0]
        with self.autocast():  # real and fake in one forward (one DDP pass)
            d_out = self.discriminator(torch.cat([tgt, fake.detach().to(tgt.dtype)]))
        loss_d = self._adversarial(d_out[:n], d_out[n:], for_g=False)
        self.optimize(loss_d, self._optimizers["discriminator"], self.discriminator.parameters())
        disc = unwrap(self.discriminator)
        set_requires_grad([disc], False)
        try:
            with self.autocast():
                fake_logits, fake_feats = disc(fake, return_features=True)
                with torch.no_grad():
                    real_logits, real_feats = disc(tgt, return_features=True)
                adv = self._adversarial(real_logits, fake_logits, for_g=True)
                perc = self._perceptual(tgt, fake, real_feats, fake_feats)
            loss_g = (float(hp["content_weight"]) * content + float(hp["adversarial_weight"]) * adv
                      + float(hp["perceptual_weight"]) * perc)
            self.optimize(loss_g, self._optimizers["generator"], self.generator.parameters())
        finally:
            set_requires_grad([disc], True)
        return {"loss_g": loss_g.item(), "loss_l1": content.item(), "loss_g_adv": adv.item(),
                "loss_perceptual": perc.item(), "loss_d": loss_d.item()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        src, tgt, mask = self.paired_inputs(batch)
        with evaluating([self.generator, self.discriminator]), self.autocast():
            fake = self.generator(src)
            adv = self._adversarial(self.discriminator(tgt), self.discriminator(fake), for_g=True)
            l1 = masked_l1(fake, tgt, mask)
        return {"loss_l1": l1.item(), "loss_g_adv": adv.item()}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.generator(x.to(self.device)).clamp(-1.0, 1.0).float()
