"""Regression: the plan's U-Net trained with a body-masked L1 loss, the way nnU-Net would train it.

This is the baseline every generative family has to beat, and the method that won the SynthRAD2025 MRI->CT task
(nnsyn: nnU-Net's residual-encoder U-Net, ResEnc-L preset, trained with a masked L1 loss; SynthRAD2025's best MAE
64.8 HU for MRI->CT, 48.3 HU for CBCT->CT). Here it is the planned generator U-Net (the same network Pix2Pix and
CycleGAN use, sized by the same rule; a residual-encoder plan gives the residual-encoder U-Net) with nnU-Net's
optimizer and schedule and no adversary.

Loss (the regression loss, documentation/training.md): ``l1_weight * |G(s) - t|_mask + ssim_weight *
(1 - SSIM_mask(G(s), t)) + perceptual_weight * L_perc``; defaults 1, 0 and 0.1. ``|.|_mask`` is the mean
absolute error over body-mask voxels (``losses.masked_l1``: voxels outside the mask do not enter the loss);
the SSIM term is the evaluation's SSIM formula in the network space (``losses.masked_ssim_loss``, averaged over
mask voxels; its 7^3 window reads the neighbourhood of boundary voxels); ``L_perc`` is the feature L1 of a
user-supplied frozen 3D network (``-perceptual_weights``, as for SRGAN and the autoencoder) and is off without one.

Optimizer as nnU-Net v2 (and nnsyn): SGD, lr 1e-2, Nesterov momentum 0.99, weight decay 3e-5, polynomial decay
``(1 - epoch / num_epochs) ** 0.9`` stepped per epoch; gradient norm clipped at 12 (the engine's default).
Linear output (nnU-Net regresses without an output nonlinearity); predictions are clamped to the normalized
target range [-1, 1], which every target normalization fits its values into. Deterministic prediction.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from autotrans.errors import ConfigurationError
from autotrans.families.base import Family, register_family
from autotrans.families.losses import evaluating, feature_l1, masked_l1, masked_ssim_loss, resolved
from autotrans.families.pix2pix import sync_scheduled_lrs
from autotrans.networks import build_planned_unet

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "l1_weight": 1.0,
    "ssim_weight": 0.0,
    "perceptual_weight": 0.1,
    "perceptual_weights": None,
    "lr": 1e-2,
    "momentum": 0.99,
    "weight_decay": 3e-5,
    "poly_exponent": 0.9,
    "num_epochs": 1000,
    "output_activation": "none",
}


class PolyDecay:
    """nnU-Net's PolyLRScheduler factor per epoch: ``(1 - epoch / num_epochs) ** exponent`` (a class, not a lambda,
    so a resumed run follows its own ``num_epochs`` as the GAN schedules do)."""

    def __init__(self, num_epochs: int, exponent: float) -> None:
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        self.num_epochs, self.exponent = int(num_epochs), float(exponent)

    def __call__(self, epoch: int) -> float:
        return max(0.0, 1.0 - epoch / self.num_epochs) ** self.exponent


@register_family("regression")
class RegressionFamily(Family):
    """The planned U-Net, one optimizer, masked L1 (+ optional masked SSIM and perceptual terms)."""

    def build(self) -> None:
        n_src = len(self.plans.source_modalities)
        self.generator = build_planned_unet(self.configuration.architecture, n_src, 1,
                                            activation=self.hparam("output_activation", DEFAULTS["output_activation"])
                                            ).to(self.device)
        self.feature_net: torch.nn.Module | None = None
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: dict[str, Any] = {}

    def resolved_hparams(self) -> dict[str, Any]:
        """Every hyperparameter key of this family with the value this run uses (written to the results)."""
        return resolved(self, DEFAULTS)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def configure_optimizers(self) -> None:
        hp = self.resolved_hparams()
        for key in ("l1_weight", "ssim_weight", "perceptual_weight"):
            if float(hp[key]) < 0:
                raise ConfigurationError(f"regression: {key} must be >= 0, got {hp[key]}")
        if float(hp["l1_weight"]) == 0 and float(hp["ssim_weight"]) == 0 and not hp["perceptual_weights"]:
            raise ConfigurationError("regression: every loss term is off (l1_weight = ssim_weight = 0, no "
                                     "perceptual_weights)")
        self._optimizers = {"generator": torch.optim.SGD(
            self.generator.parameters(), lr=float(hp["lr"]), momentum=float(hp["momentum"]),
            weight_decay=float(hp["weight_decay"]), nesterov=float(hp["momentum"]) > 0)}
        rule = PolyDecay(int(hp["num_epochs"]), float(hp["poly_exponent"]))
        self._schedulers = {"generator": torch.optim.lr_scheduler.LambdaLR(self._optimizers["generator"],
                                                                           lambda epoch: rule(epoch))}
        if hp["perceptual_weights"]:  # training only: inference never needs the feature network
            from autotrans.families.srgan import load_feature_network

            self.feature_net = load_feature_network(hp["perceptual_weights"], self.device)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def schedulers(self) -> dict[str, Any]:
        return self._schedulers

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        super().load_train_state_dict(state)
        sync_scheduled_lrs(self._schedulers)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The regression loss and its terms (only the terms whose weight is on are computed)."""
        hp = self.resolved_hparams()
        l1 = masked_l1(pred, target, mask)
        total = float(hp["l1_weight"]) * l1
        terms = {"loss_l1": l1.item()}
        if float(hp["ssim_weight"]) > 0:
            ssim = masked_ssim_loss(pred, target, mask)
            total = total + float(hp["ssim_weight"]) * ssim
            terms["loss_ssim"] = ssim.item()
        if self.feature_net is not None and float(hp["perceptual_weight"]) > 0:
            with torch.no_grad():
                ref = self.feature_net(target.float())
            perc = feature_l1(ref, self.feature_net(pred.float()))
            total = total + float(hp["perceptual_weight"]) * perc
            terms["loss_perceptual"] = perc.item()
        terms["loss"] = total.item()
        return total, terms

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        src, tgt, mask = self.paired_inputs(batch)
        with self.autocast():
            pred = self.generator(src)
        total, terms = self.loss(pred, tgt, mask)
        self.optimize(total, self._optimizers["generator"], self.generator.parameters())
        return terms

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        src, tgt, mask = self.paired_inputs(batch)
        with evaluating([self.generator]), self.autocast():
            pred = self.generator(src)
        return self.loss(pred, tgt, mask)[1]

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.generator(x.to(self.device)).float().clamp(-1.0, 1.0)
