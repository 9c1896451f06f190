"""Test-only families that implement the whole Family interface with a few hundred parameters.

``test_residual`` (paired) learns a residual correction of the first source channel with a masked L1 loss;
``test_moments`` (``paired_batches = False``, CycleGAN-like data) matches masked intensity moments between a
translated source patch and a target patch of another case. Both step an LR schedule that does not depend on
``num_epochs``, so "4 epochs" and "2 epochs + --c 2 more" must give bit-identical weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from autotrans.families.base import Family, register_family


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((a - b).abs() * mask).sum() / mask.sum().clamp(min=1.0)


class _Residual(Family):
    def build(self) -> None:
        c = len(self.plans.source_modalities)
        self.generator = torch.nn.Conv3d(c, 1, 3, padding=1).to(self.device)
        torch.nn.init.zeros_(self.generator.bias)

    def configure_optimizers(self) -> None:
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=float(self.hparam("lr", 1e-2)))
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=0.9)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {"generator": self.sched}

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x[:, :1] + self.generator(x)

    def resolved_hparams(self) -> dict[str, Any]:
        return {"lr": float(self.hparam("lr", 1e-2)), "num_epochs": self.hparam("num_epochs", None)}


@register_family("test_residual")
class ResidualFamily(_Residual):
    seen: list[dict[str, Any]] = []  # batch shapes the engine handed over (checked by the tests)

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        ResidualFamily.seen.append({k: tuple(v.shape) for k, v in batch.items()})
        noisy = batch["source"] + 0.05 * torch.randn_like(batch["source"])  # uses torch's RNG: resume must restore it
        with self.autocast():
            loss = masked_l1(self.predict_patch(noisy), batch["target"], batch["mask"])
        self.optimize(loss, self.opt, self.generator.parameters())
        return {"G_l1": loss.item()}

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """With AUTOTRANS_TEST_DUMP set, each DDP rank saves its weights (the DDP test compares ranks)."""
        super().on_epoch_end(epoch, num_epochs)
        dump = os.environ.get("AUTOTRANS_TEST_DUMP")
        if dump:
            rank = dist.get_rank() if dist.is_initialized() else 0
            torch.save({"networks": self.state_dict(), "batches": len(ResidualFamily.seen)},
                       Path(dump) / f"rank{rank}_epoch{epoch}.pt")


@register_family("test_moments")
class MomentsFamily(_Residual):
    paired_batches = False

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        m_s, m_t = batch["mask"], batch["target_mask"]
        with self.autocast():
            fake = self.predict_patch(batch["source"])
            mean_f = (fake * m_s).sum() / m_s.sum().clamp(min=1.0)
            mean_t = (batch["target"] * m_t).sum() / m_t.sum().clamp(min=1.0)
            loss = (mean_f - mean_t).abs()
        self.optimize(loss, self.opt, self.generator.parameters())
        return {"G_moment": loss.item()}
