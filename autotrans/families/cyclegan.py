"""CycleGAN (Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
Networks") in 3D, for unpaired data (source and target patches from different cases).

``g_ab``: source (C channels) -> target (planned U-Net, tanh); ``g_ba``: target -> source (planned U-Net with
C outputs and a linear output, since sources are not clipped to [-1, 1]). ``d_a``/``d_b``: unconditional
PatchGANs on the source/target domain. Objective (paper Eq. 3 with the LSGAN loss, Sec. 4):
``L_GAN(g_ab, d_b) + L_GAN(g_ba, d_a) + lambda_cycle * (|g_ba(g_ab(a)) - a| + |g_ab(g_ba(b)) - b|)`` plus the
identity term ``lambda_cycle * lambda_identity * (|g_ab(b) - b| + |g_ba(a) - a|)`` (Sec. 5.2), which needs equal
channel counts and is dropped otherwise. L1 terms are averaged over each image's own body mask.
Discriminators see fakes from a 50-image history pool. Adam 2e-4, betas (0.5, 0.999); LR as in Pix2Pix.

Masks: an unpaired batch holds two cases; ``mask`` is the source case's body mask and ``target_mask`` the
target case's (the training engine's batch contract). Without ``target_mask`` (paired batches) ``mask`` serves
both; an explicit ``source_mask`` takes precedence over ``mask``.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any

import torch

from autotrans.families.base import Family, unwrap, register_family
from autotrans.families.losses import (
    ImagePool,
    evaluating,
    lsgan_loss,
    masked_l1,
    resolved,
    set_requires_grad,
)
from autotrans.families.pix2pix import gan_schedulers, sync_scheduled_lrs
from autotrans.networks import build_patchgan, build_planned_unet

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "lambda_cycle": 10.0,
    "lambda_identity": 0.5,  # relative to lambda_cycle, as in the authors' code
    "pool_size": 50,
    "pool_seed": 0,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": (0.5, 0.999),
    "num_epochs": 1000,
    "lr_decay_start": 0.5,
    "output_activation": "tanh",
    "source_output_activation": "none",
    "d_norm": "instance",
    "spectral_norm": False,
}


def _d_loss(disc: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss ``0.5 * [(D(real) - 1)^2 + D(fake)^2]`` from one forward of both batches."""
    out = disc(torch.cat([real, fake.to(real.dtype)]))
    n = real.shape[0]
    return 0.5 * (lsgan_loss(out[:n], True) + lsgan_loss(out[n:], False))


@register_family("cyclegan")
class CycleGANFamily(Family):
    """Two planned U-Net generators and two unconditional PatchGANs, trained on unpaired batches."""

    paired_batches = False

    def build(self) -> None:
        section = self.configuration.family(self.name)["discriminator"]
        n_src = len(self.plans.source_modalities)
        arch = self.configuration.architecture
        hp = self.resolved_hparams()
        self.g_ab = build_planned_unet(arch, n_src, 1, activation=hp["output_activation"]).to(self.device)
        self.g_ba = build_planned_unet(arch, 1, n_src, activation=hp["source_output_activation"]).to(self.device)
        d_kw = {"norm": hp["d_norm"], "spectral_norm": bool(hp["spectral_norm"])}
        self.d_a = build_patchgan(section, in_channels=n_src, **d_kw).to(self.device)
        self.d_b = build_patchgan(section, in_channels=1, **d_kw).to(self.device)
        self.use_identity = n_src == 1 and float(hp["lambda_identity"]) > 0
        if n_src != 1 and float(hp["lambda_identity"]) > 0:
            logger.info("cyclegan: identity loss off (%d source channels vs 1 target channel)", n_src)
        seed = int(hp["pool_seed"])
        self.pool_a = ImagePool(int(hp["pool_size"]), seed)
        self.pool_b = ImagePool(int(hp["pool_size"]), seed + 1)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: dict[str, Any] = {}

    def resolved_hparams(self) -> dict[str, Any]:
        """Every hyperparameter key of this family with the value this run uses (written to the results)."""
        return resolved(self, DEFAULTS)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"g_ab": self.g_ab, "g_ba": self.g_ba, "d_a": self.d_a, "d_b": self.d_b}

    def configure_optimizers(self) -> None:
        hp = self.resolved_hparams()
        betas = tuple(float(b) for b in hp["betas"])
        self._optimizers = {
            "generators": torch.optim.Adam(itertools.chain(self.g_ab.parameters(), self.g_ba.parameters()),
                                           lr=float(hp["lr_g"]), betas=betas),
            "discriminators": torch.optim.Adam(itertools.chain(self.d_a.parameters(), self.d_b.parameters()),
                                               lr=float(hp["lr_d"]), betas=betas),
        }
        self._schedulers = gan_schedulers(self._optimizers, hp["num_epochs"], hp["lr_decay_start"])

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def schedulers(self) -> dict[str, Any]:
        return self._schedulers

    def train_state_dict(self) -> dict[str, Any]:
        return {**super().train_state_dict(), "pools": [self.pool_a.state_dict(), self.pool_b.state_dict()]}

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        super().load_train_state_dict(state)
        sync_scheduled_lrs(self._schedulers)
        if "pools" in state:
            self.pool_a.load_state_dict(state["pools"][0], self.device)
            self.pool_b.load_state_dict(state["pools"][1], self.device)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        def dev(key: str) -> torch.Tensor | None:
            t = batch.get(key, batch.get("mask"))
            return None if t is None else t.to(self.device)

        return batch["source"].to(self.device), batch["target"].to(self.device), dev("source_mask"), dev("target_mask")

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Paper Eq. 3 + identity, one optimizer step per side. The generator loss is a sum of terms on separate
        graphs, so each cycle is backpropagated as soon as it is computed (same gradients, one cycle's graph
        alive at a time: the memory the plan counts)."""
        a, b, mask_a, mask_b = self._inputs(batch)
        lam = float(self.hparam("lambda_cycle", DEFAULTS["lambda_cycle"]))
        lam_id = float(self.hparam("lambda_identity", DEFAULTS["lambda_identity"]))
        nets_d = [self.d_a, self.d_b]
        g_params = list(itertools.chain(self.g_ab.parameters(), self.g_ba.parameters()))
        opt_g = self._optimizers["generators"]
        opt_g.zero_grad(set_to_none=True)
        # G step (both generators, one optimizer), discriminators frozen and called unwrapped
        set_requires_grad(nets_d, False)
        try:
            with self.autocast():  # a -> fake_b -> rec_a, judged by D_B
                fake_b = self.g_ab(a)
                adv_b = lsgan_loss(unwrap(self.d_b)(fake_b), True)
                cycle_a = masked_l1(self.g_ba(fake_b), a, mask_a)
            self.backward(adv_b + lam * cycle_a)
            with self.autocast():  # b -> fake_a -> rec_b, judged by D_A
                fake_a = self.g_ba(b)
                adv_a = lsgan_loss(unwrap(self.d_a)(fake_a), True)
                cycle_b = masked_l1(self.g_ab(fake_a), b, mask_b)
            self.backward(adv_a + lam * cycle_b)
            idt = torch.zeros((), device=self.device)
            if self.use_identity:
                with self.autocast():
                    idt = masked_l1(self.g_ab(b), b, mask_b) + masked_l1(self.g_ba(a), a, mask_a)
                self.backward(lam * lam_id * idt)
            self.step(opt_g, g_params)
        finally:
            set_requires_grad(nets_d, True)
        adv, cycle = adv_a + adv_b, cycle_a + cycle_b
        loss_g = adv + lam * cycle + lam * lam_id * idt
        # D step on pooled, detached fakes; each discriminator's graph backpropagated on its own
        opt_d = self._optimizers["discriminators"]
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            loss_da = _d_loss(self.d_a, a, self.pool_a.query(fake_a.detach()))
        self.backward(loss_da)
        with self.autocast():
            loss_db = _d_loss(self.d_b, b, self.pool_b.query(fake_b.detach()))
        self.backward(loss_db)
        self.step(opt_d, itertools.chain(self.d_a.parameters(), self.d_b.parameters()))
        return {"loss_g": loss_g.item(), "loss_g_adv": adv.item(), "loss_cycle": cycle.item(),
                "loss_identity": idt.item(), "loss_d_a": loss_da.item(), "loss_d_b": loss_db.item()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """``loss_l1`` compares g_ab(source) with the target: meaningful for paired validation cases only."""
        a, b, mask_a, mask_b = self._inputs(batch)
        with evaluating(self.networks().values()), self.autocast():
            fake_b = self.g_ab(a)
            adv = lsgan_loss(self.d_b(fake_b), True)
            cycle = masked_l1(self.g_ba(fake_b), a, mask_a)
            l1 = masked_l1(fake_b, b, mask_b)
        return {"loss_l1": l1.item(), "loss_g_adv": adv.item(), "loss_cycle_a": cycle.item()}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.g_ab(x.to(self.device)).clamp(-1.0, 1.0).float()
