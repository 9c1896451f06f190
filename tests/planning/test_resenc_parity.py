"""The ResEnc presets plan what nnU-Net v2's nnUNetPlannerResEncM/L/XL plan for the same fingerprints.

Same fingerprints as the 3d_fullres parity test (tests/planning/test_planner_parity.py). The per-family sections
are not part of nnU-Net's plan, so they are left out here (tests/planning/test_resenc_presets.py covers them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is a test dependency: pip install '.[test]'")

from autotrans.planning import planner as planner_module  # noqa: E402
from autotrans.planning.planner import DEFAULT_PLANS_NAME, PlannerOptions, plan_experiment  # noqa: E402
from autotrans.planning.presets import PRESETS, RESENC_UNET_CLASS  # noqa: E402
from tests.planning.nnunet_reference import nnunet_plans_by_planner  # noqa: E402
from tests.planning.test_planner_parity import DJ, FINGERPRINTS  # noqa: E402

RESENC = ("ResEncM", "ResEncL", "ResEncXL")


@pytest.fixture
def no_family_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the U-Net part is compared: skip the (slow, nnU-Net-free) per-family sizing."""
    monkeypatch.setattr(planner_module, "plan_families", lambda *a, **k: {})


def _compare(ours: dict, ref: dict, name: str, preset: str) -> None:
    o, r = ours["configurations"][name], ref["configurations"][name]
    ak_o, ak_r = o["architecture"]["arch_kwargs"], r["architecture"]["arch_kwargs"]
    where = f"{preset} {name}"
    assert o["architecture"]["network_class_name"] == r["architecture"]["network_class_name"] == RESENC_UNET_CLASS
    assert o["patch_size"] == list(r["patch_size"]), where
    assert o["batch_size"] == r["batch_size"], where
    assert np.allclose(o["spacing"], r["spacing"]), where
    assert ak_o["strides"] == [list(s) for s in ak_r["strides"]], where
    assert ak_o["kernel_sizes"] == [list(k) for k in ak_r["kernel_sizes"]], where
    assert ak_o["features_per_stage"] == list(ak_r["features_per_stage"]), where
    assert ak_o["n_stages"] == ak_r["n_stages"], where
    assert ak_o["n_blocks_per_stage"] == list(ak_r["n_blocks_per_stage"]), where
    assert ak_o["n_conv_per_stage_decoder"] == list(ak_r["n_conv_per_stage_decoder"]), where
    # everything else in arch_kwargs (conv/norm/nonlin and their kwargs) as nnU-Net writes it
    assert {k: v for k, v in ak_o.items() if not isinstance(v, list)} == \
        {k: v for k, v in ak_r.items() if not isinstance(v, list)}, where
    # data identifiers mirror nnU-Net's: 3d_fullres reuses the default plan's data, 3d_lowres is the preset's own
    nn_default, ours_default = "nnUNetPlans", DEFAULT_PLANS_NAME
    expected = r["data_identifier"].replace(ref["plans_name"], ours["plans_name"]).replace(nn_default, ours_default)
    assert o["data_identifier"] == expected, where


@pytest.mark.parametrize("key", sorted(FINGERPRINTS))
def test_resenc_parity_on_fingerprints(tmp_path: Path, key: str, no_family_sections: None) -> None:
    spacings, shapes = FINGERPRINTS[key]
    refs = nnunet_plans_by_planner(tmp_path, spacings, shapes, [PRESETS[p].nnunet_planner for p in RESENC])
    fp = {"spacings": spacings, "shapes_after_crop": shapes,
          "foreground_intensity_properties_per_channel": {"0": {}}, "target_intensity_properties": None}
    for preset in RESENC:
        ref = refs[PRESETS[preset].nnunet_planner]
        # nnU-Net's memory estimate counts its output channels (2 labels here); give ours the same count
        ours = plan_experiment(fp, DJ, "Dataset001_P", PlannerOptions(preset=preset, output_channels=2))
        assert ours["plans_name"] == ref["plans_name"].replace("nnUNet", "autotrans")
        expected = {c for c in ref["configurations"] if c in ("3d_fullres", "3d_lowres")}
        assert set(ours["configurations"]) == expected, preset
        for name in expected:
            _compare(ours, ref, name, preset)


def test_resenc_parity_with_another_gpu_target(tmp_path: Path, no_family_sections: None) -> None:
    """-gpu_memory_target overrides the preset's target as nnU-Net's does (its reference scales with it)."""
    spacings, shapes = FINGERPRINTS["large_ct_lowres"]
    refs = nnunet_plans_by_planner(tmp_path, spacings, shapes, ["nnUNetPlannerResEncL"], gb=12.0)
    fp = {"spacings": spacings, "shapes_after_crop": shapes,
          "foreground_intensity_properties_per_channel": {"0": {}}, "target_intensity_properties": None}
    ours = plan_experiment(fp, DJ, "Dataset001_P", PlannerOptions(preset="ResEncL", gpu_memory_target_gb=12,
                                                                  output_channels=2))
    assert ours["plans_name"] == "autotransResEncUNetLPlans_12G"  # nnU-Net's advice: a separate plans name
    ref = refs["nnUNetPlannerResEncL"]
    for name in {c for c in ref["configurations"] if c in ("3d_fullres", "3d_lowres")}:
        _compare(ours, ref, name, "ResEncL@12G")
