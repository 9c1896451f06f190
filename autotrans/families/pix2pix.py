"""Pix2Pix (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks") in 3D.

Generator: the plan's U-Net (source channels -> 1, tanh). Discriminator: the plan's conditional PatchGAN on
``concat(source, image)``. Objective (paper Eq. 4 with the LSGAN loss of Mao et al. 2017, as in the
authors' released code): G minimizes ``(D(s, G(s)) - 1)^2 + lambda_l1 * |G(s) - t|_mask``; D minimizes
``0.5 * [(D(s, t) - 1)^2 + D(s, G(s))^2]``. The L1 term is averaged over body-mask voxels. Adam
(lr 2e-4, betas (0.5, 0.999)) for both; LR constant for the first half of the epochs, then linear to 0.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from autotrans.families.base import Family, unwrap, register_family
from autotrans.families.losses import (
    LinearDecay,
    evaluating,
    lsgan_loss,
    masked_l1,
    resolved,
    set_requires_grad,
)
from autotrans.networks import build_patchgan, build_planned_unet

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "lambda_l1": 100.0,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": (0.5, 0.999),
    "num_epochs": 1000,
    "lr_decay_start": 0.5,  # fraction of num_epochs with constant LR
    "output_activation": "tanh",
    "d_norm": "instance",
    "spectral_norm": False,
}


def gan_schedulers(optimizers: dict[str, torch.optim.Optimizer], num_epochs: int, decay_fraction: float
                   ) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    """Pix2Pix/CycleGAN LR policy per optimizer: constant, then linear to 0 at ``num_epochs`` (stepped per epoch).

    The rule is wrapped in a function, which ``LambdaLR.state_dict`` does not store: a resumed run follows its
    own ``num_epochs`` (extending training stretches the decay) while the epoch count comes from the checkpoint.
    """
    rule = LinearDecay(int(num_epochs), round(float(decay_fraction) * int(num_epochs)))
    return {k: torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: rule(epoch)) for k, o in optimizers.items()}


def sync_scheduled_lrs(schedulers: dict[str, Any]) -> None:
    """Set each optimizer's LR to what its LambdaLR gives at the restored epoch (after loading a train state,
    the optimizer holds the LR of the checkpointed run, which differs when ``num_epochs`` changed)."""
    for sched in schedulers.values():
        for group, base_lr, rule in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base_lr * rule(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


@register_family("pix2pix")
class Pix2PixFamily(Family):
    """Conditional GAN with a planned U-Net generator and a conditional 3D PatchGAN."""

    def build(self) -> None:
        section = self.configuration.family(self.name)
        n_src = len(self.plans.source_modalities)
        self.generator = build_planned_unet(self.configuration.architecture, n_src, 1,
                                            activation=self.hparam("output_activation", DEFAULTS["output_activation"])
                                            ).to(self.device)
        self.discriminator = build_patchgan(section["discriminator"], in_channels=n_src + 1,
                                            norm=self.hparam("d_norm", DEFAULTS["d_norm"]),
                                            spectral_norm=bool(self.hparam("spectral_norm", DEFAULTS["spectral_norm"]))
                                            ).to(self.device)
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
        self._schedulers = gan_schedulers(self._optimizers, hp["num_epochs"], hp["lr_decay_start"])

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def schedulers(self) -> dict[str, Any]:
        return self._schedulers

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        super().load_train_state_dict(state)
        sync_scheduled_lrs(self._schedulers)

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        src, tgt, mask = self.paired_inputs(batch)
        lambda_l1 = float(self.hparam("lambda_l1", DEFAULTS["lambda_l1"]))
        with self.autocast():
            fake = self.generator(src)
        # D step on the detached fake; real and fake pairs in one forward (one DDP pass, same per-sample norms)
        set_requires_grad([self.discriminator], True)
        n = src.shape[0]
        with self.autocast():
            pairs = torch.cat([torch.cat([src, tgt], dim=1), torch.cat([src, fake.detach().to(tgt.dtype)], dim=1)])
            d_out = self.discriminator(pairs)
        d_real, d_fake = d_out[:n], d_out[n:]
        loss_d = 0.5 * (lsgan_loss(d_real, True) + lsgan_loss(d_fake, False))
        self.optimize(loss_d, self._optimizers["discriminator"], self.discriminator.parameters())
        # G step: D frozen and called unwrapped (its parameters get no grads, so DDP has nothing to reduce)
        set_requires_grad([self.discriminator], False)
        try:
            with self.autocast():
                g_fake = unwrap(self.discriminator)(torch.cat([src, fake], dim=1))
            loss_adv = lsgan_loss(g_fake, True)
            loss_l1 = masked_l1(fake, tgt, mask)
            loss_g = loss_adv + lambda_l1 * loss_l1
            self.optimize(loss_g, self._optimizers["generator"], self.generator.parameters())
        finally:
            set_requires_grad([self.discriminator], True)
        return {"loss_g": loss_g.item(), "loss_g_adv": loss_adv.item(), "loss_l1": loss_l1.item(),
                "loss_d": loss_d.item()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        src, tgt, mask = self.paired_inputs(batch)
        with evaluating([self.generator, self.discriminator]), self.autocast():
            fake = self.generator(src)
            loss_adv = lsgan_loss(self.discriminator(torch.cat([src, fake], dim=1)), True)
            loss_l1 = masked_l1(fake, tgt, mask)
        return {"loss_l1": loss_l1.item(), "loss_g_adv": loss_adv.item()}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.generator(x.to(self.device)).clamp(-1.0, 1.0).float()
