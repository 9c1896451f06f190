"""``identity``: the source's first channel as the prediction, in the target's units.

It applies only where source channel 0 and the target measure the same quantity (``MODALITY_FAMILIES``):
CBCT -> CT (the CBCT in HU as it is, within the CT window), MR -> MR (e.g. T2 -> FLAIR), PET -> PET. It is the
"do nothing" reference: a model that does not beat it has not learned the translation. For MR, which has no
absolute unit, "the target's units" is the plan's MR output scale (each case's p0.5 -> -1, p99.5 -> +1): the source
in its own per-case scale is compared with the target in its own, exactly as every MR prediction is scored.
For MR -> CT, CT -> PET and other cross-modality pairs it is skipped, and the report says so.
"""
from __future__ import annotations

import numpy as np

from autotrans.baselines.base import MODALITY_FAMILIES, Baseline, register_baseline


@register_baseline("identity")
class IdentityBaseline(Baseline):
    description = "the source's first channel in the target's units (same modality family only)"

    def not_applicable(self) -> str | None:
        src, tgt = self.plans.source_modalities[0], self.plans.target_modality
        if MODALITY_FAMILIES.get(src) != MODALITY_FAMILIES.get(tgt):
            return (f"source channel 0 ({src}) and target ({tgt}) are different modalities; the source's values "
                    f"are no estimate of the target's, so identity is skipped")
        return None

    def predict_normalized(self, source: np.ndarray) -> np.ndarray:
        """Source network space -> the common scale -> target network space: physical units (HU, SUV) for
        dataset-level schemes, the per-case output scale for MR."""
        s_norm, t_norm = self.plans.source_normalization[0], self.plans.target_normalization
        if s_norm.per_case or t_norm.per_case:
            return t_norm.from_output_scale(s_norm.to_output_scale(source[0]))
        return t_norm.forward(s_norm.inverse(source[0]))
