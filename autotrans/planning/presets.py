"""Planner presets: the default PlainConvUNet plan and nnU-Net v2's residual-encoder presets (ResEnc M/L/XL).

Each preset fixes what nnU-Net's planner class fixes (``nnUNetPlannerResEncM/L/XL`` in
``nnunetv2/experiment_planning/experiment_planners/residual_unets/residual_encoder_unet_planners.py``): the
generator class, the GPU memory target and the reference feature-map voxel count that fits it at batch 2, the
residual blocks per encoder stage, the convs per decoder stage, the share of the dataset one batch may cover and
the plans name. The rest of the planning rules (spacing, topology, patch shrinking, 3d_lowres) are shared, so a
preset's plan equals what the corresponding nnU-Net planner gives the same fingerprint (tests/planning).

A preset's plans go to their own plans file (``autotransResEncUNetLPlans.json``), beside the default ones.
Its 3d_fullres data are the default plan's (nnU-Net reuses ``nnUNetPlans_3d_fullres``: spacing, resampling and
normalization do not depend on the network) unless the preprocessing options differ from the defaults; its
3d_lowres spacing depends on the patch size, so that gets its own identifier.
"""
from __future__ import annotations

from dataclasses import dataclass

from autotrans.errors import ConfigurationError

PLAIN_UNET_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
DEFAULT_PRESET = "default"
#: nnU-Net's ResEnc blocks per encoder stage (as many entries as stages are used) and convs per decoder stage
RESENC_BLOCKS_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
RESENC_CONVS_DECODER = (1,) * 12


@dataclass(frozen=True)
class PlannerPreset:
    """What one nnU-Net planner class fixes; ``n_blocks_per_stage`` None means a PlainConvUNet (2 convs/stage)."""

    name: str
    nnunet_planner: str  # the nnU-Net v2 class whose plans this preset reproduces
    network_class_name: str
    gpu_memory_target_gb: float
    reference_val_3d: float  # feature-map voxels that fit reference_gb at batch size 2
    reference_gb: float
    plans_name: str
    max_dataset_covered: float  # one batch covers at most this share of the dataset's voxels
    n_blocks_per_stage: tuple[int, ...] | None = None
    n_conv_per_stage_decoder: tuple[int, ...] | None = None

    @property
    def residual(self) -> bool:
        return self.n_blocks_per_stage is not None

    def encoder_kwargs(self, n_stages: int) -> dict[str, list[int]]:
        """Per-stage depth entries of ``arch_kwargs``, exactly as the nnU-Net planner writes them."""
        if self.residual:
            return {"n_blocks_per_stage": list(self.n_blocks_per_stage[:n_stages]),
                    "n_conv_per_stage_decoder": list(self.n_conv_per_stage_decoder[:n_stages - 1])}
        return {"n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1)}

    def plans_name_for(self, gpu_memory_target_gb: float) -> str:
        """The preset's plans name; a ResEnc preset run at another GPU target gets ``_<GB>G`` appended (nnU-Net's
        documented ``-overwrite_plans_name nnUNetResEncUNetPlans_80G`` practice), so it cannot overwrite the
        preset's own plans. The default preset keeps ``autotransPlans`` (as ``-gpu_memory_target`` always did)."""
        if not self.residual or gpu_memory_target_gb == self.gpu_memory_target_gb:
            return self.plans_name
        return f"{self.plans_name}_{gpu_memory_target_gb:g}G"


PRESETS: dict[str, PlannerPreset] = {p.name: p for p in (
    PlannerPreset("default", "ExperimentPlanner", PLAIN_UNET_CLASS, 8.0, 560_000_000, 8.0, "autotransPlans", 0.05),
    PlannerPreset("ResEncM", "nnUNetPlannerResEncM", RESENC_UNET_CLASS, 8.0, 680_000_000, 8.0,
                  "autotransResEncUNetMPlans", 1.0, RESENC_BLOCKS_ENCODER, RESENC_CONVS_DECODER),
    PlannerPreset("ResEncL", "nnUNetPlannerResEncL", RESENC_UNET_CLASS, 24.0, 2_100_000_000, 24.0,
                  "autotransResEncUNetLPlans", 1.0, RESENC_BLOCKS_ENCODER, RESENC_CONVS_DECODER),
    PlannerPreset("ResEncXL", "nnUNetPlannerResEncXL", RESENC_UNET_CLASS, 40.0, 3_600_000_000, 40.0,
                  "autotransResEncUNetXLPlans", 1.0, RESENC_BLOCKS_ENCODER, RESENC_CONVS_DECODER),
)}


def get_preset(name: str) -> PlannerPreset:
    """A preset by its name, case-insensitively, or by its nnU-Net class name (``-pl nnUNetPlannerResEncL``)."""
    for p in PRESETS.values():
        if name.lower() in (p.name.lower(), p.nnunet_planner.lower()):
            return p
    raise ConfigurationError(f"-pl {name}: unknown planner preset (valid: {', '.join(PRESETS)})")


def preset_for_plans_name(plans_name: str) -> PlannerPreset | None:
    """The preset whose plans name ``plans_name`` is (its own, or with a ``_<GB>G`` target suffix)."""
    for p in PRESETS.values():
        if plans_name == p.plans_name or (p.residual and plans_name.startswith(p.plans_name + "_")
                                          and plans_name.endswith("G")):
            return p
    return None
