"""Planner presets (``-pl default|ResEncM|ResEncL|ResEncXL``): options, plans files, what each family gets, and
a ResEnc plan through training and prediction (tiny networks, CPU).

The nnU-Net parity of the presets' U-Net part is tests/planning/test_resenc_parity.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

import autotrans.families
from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
from autotrans.errors import ConfigurationError
from autotrans.families.base import get_family
from autotrans.networks.unet import build_planned_unet, unet_receptive_field
from autotrans.planning.planner import PlannerOptions, plan_experiment, validate_options
from autotrans.planning.plans import Plans
from autotrans.planning.presets import PRESETS, RESENC_UNET_CLASS, get_preset
from autotrans.utils.files import load_json, save_json
from tests.families.helpers import shrink_plans
from tests.planning.test_planner_parity import DJ

NAME = "Dataset011_DemoT2toFLAIR"
#: the demo brains at 4 mm (about 34 x 42 x 34 voxels): seconds to plan and preprocess
SMALL = ["-np", "1", "--overwrite_target_spacing", "4", "4", "4"]


def test_preset_options_resolve_like_nnunet() -> None:
    assert (PlannerOptions().plans_name, PlannerOptions().gpu_memory_target_gb) == ("autotransPlans", 8.0)
    for preset, gb, name in (("ResEncM", 8, "autotransResEncUNetMPlans"), ("ResEncL", 24, "autotransResEncUNetLPlans"),
                             ("ResEncXL", 40, "autotransResEncUNetXLPlans")):
        o = PlannerOptions(preset=preset)
        assert (o.gpu_memory_target_gb, o.plans_name) == (gb, name)
    # another GPU target: nnU-Net's advice (-overwrite_plans_name nnUNetResEncUNetPlans_80G), applied by default
    assert PlannerOptions(preset="ResEncL", gpu_memory_target_gb=80).plans_name == "autotransResEncUNetLPlans_80G"
    assert PlannerOptions(preset="ResEncL", gpu_memory_target_gb=80, plans_name="mine").plans_name == "mine"
    assert PlannerOptions(gpu_memory_target_gb=4).plans_name == "autotransPlans"  # the default keeps its name
    assert get_preset("nnUNetPlannerResEncL").name == get_preset("resencl").name == "ResEncL"
    with pytest.raises(ConfigurationError, match=r"^-pl ResEncXXL: unknown planner preset \(valid: default, ResEncM, "
                                                 r"ResEncL, ResEncXL\)$"):
        PlannerOptions(preset="ResEncXXL")
    with pytest.raises(ConfigurationError, match="belongs to planner preset ResEncL"):
        validate_options(PlannerOptions(plans_name="autotransResEncUNetLPlans"))


def _reach(net: torch.nn.Module, pos: int, n: int = 48) -> int:
    """Extent (voxels along z) of the input that output voxel ``pos`` depends on, from its gradient."""
    for p in net.parameters():  # positive weights: no cancellation hides a voxel the output depends on
        p.data = p.data.abs() + 0.01
    x = torch.ones(1, 1, n, n, n, dtype=torch.float64, requires_grad=True)
    net(x)[0, 0, pos, pos, pos].backward()
    hit = np.flatnonzero(x.grad[0, 0].abs().sum(axis=(1, 2)) > 0)
    return int(hit[-1] - hit[0] + 1)


def test_resenc_receptive_field_matches_gradients() -> None:
    """A ResidualEncoderUNet reaches exactly as far as a PlainConvUNet with its longest-path convs per stage
    (``encoder_convs_per_stage``), and the planned receptive field lies within what its output voxels reach
    (strided convs make the reach depend on the voxel's alignment)."""
    from autotrans.networks.unet import encoder_convs_per_stage

    plan = plan_experiment({"spacings": [[4, 4, 4]] * 2, "shapes_after_crop": [[40, 40, 40]] * 2,
                            "foreground_intensity_properties_per_channel": {"0": {}},
                            "target_intensity_properties": None}, DJ, "Dataset001_P",
                           PlannerOptions(preset="ResEncM"))
    arch = shrink_plans(Plans(plan), patch=(48, 48, 48), features=(2, 2, 2)).configuration("3d_fullres").architecture
    # instance norm mixes the whole patch (global statistics): leave it out to see the convolutions' reach
    arch["arch_kwargs"].update(n_blocks_per_stage=[1, 2, 1], norm_op=None)
    plain_kw = {k: v for k, v in arch["arch_kwargs"].items() if k != "n_blocks_per_stage"}
    plain_kw["n_conv_per_stage"] = encoder_convs_per_stage(arch["arch_kwargs"])
    plain = dict(arch, network_class_name=PRESETS["default"].network_class_name, arch_kwargs=plain_kw)
    rf = unet_receptive_field(arch["arch_kwargs"])
    assert rf == unet_receptive_field(plain_kw) == [39, 39, 39]
    reach = []
    for pos in (23, 24, 25):
        torch.manual_seed(0)
        r = _reach(build_planned_unet(arch, 1, 1, activation="none").double(), pos)
        torch.manual_seed(0)
        assert r == _reach(build_planned_unet(plain, 1, 1, activation="none").double(), pos)
        reach.append(r)
    assert min(reach) <= rf[0] <= max(reach)


def test_unknown_preset_is_one_line(brain_demo: Path, capsys: pytest.CaptureFixture) -> None:
    assert main_plan_and_preprocess(["-d", "11", "-pl", "ResEncXXL", *SMALL]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "valid: default, ResEncM, ResEncL, ResEncXL" in err[0]


@pytest.fixture(scope="module")
def resenc_plans() -> Plans:
    """A ResEnc L plan of a small fingerprint, networks shrunk (same building code) for CPU steps."""
    plan = plan_experiment({"spacings": [[4, 4, 4]] * 4, "shapes_after_crop": [[34, 42, 34]] * 4,
                            "foreground_intensity_properties_per_channel": {"0": {}},
                            "target_intensity_properties": None}, DJ, "Dataset001_P", PlannerOptions(preset="ResEncL"))
    return shrink_plans(Plans(plan), patch=(16, 16, 16), features=(4, 8))


def _unet_families(plans: Plans) -> list[str]:
    """The registered families whose plan section names the planned U-Net as their generator."""
    fams = plans.configuration("3d_fullres").data["families"]
    return [n for n, sec in fams.items() if isinstance(sec, dict) and sec.get("generator") == "planned_unet"
            and n in autotrans.families.available_families()]


def test_every_unet_family_gets_the_resenc_generator(resenc_plans: Plans) -> None:
    fams = resenc_plans.configuration("3d_fullres").data["families"]
    names = _unet_families(resenc_plans)
    assert {"pix2pix", "cyclegan"} <= set(names)
    assert all(fams[n]["generator_network"] == "ResidualEncoderUNet" for n in names)
    assert fams["budget"]["planner_preset"] == "ResEncL" and fams["budget"]["unet_network"] == "ResidualEncoderUNet"
    assert fams["budget"]["max_dataset_covered"] == PRESETS["ResEncL"].max_dataset_covered
    # families with their own generators keep them, sized by the same rule
    assert fams["srgan"]["generator"]["block"] == "residual" and "diffusion_unet" in fams["latent"]


def test_data_identifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preset's 3d_fullres shares the default plan's data (nnU-Net's rule) only while the preprocessing options
    are the defaults; with its own target spacing it gets its own folder, so neither overwrites the other's."""
    from autotrans.planning import planner as planner_module

    monkeypatch.setattr(planner_module, "plan_families", lambda *a, **k: {})
    fp = {"spacings": [[1, 1, 1]] * 4, "shapes_after_crop": [[400, 512, 512]] * 4,
          "foreground_intensity_properties_per_channel": {"0": {}}, "target_intensity_properties": None}
    shared = plan_experiment(fp, DJ, "Dataset001_P", PlannerOptions(preset="ResEncM"))["configurations"]
    assert shared["3d_fullres"]["data_identifier"] == "autotransPlans_3d_fullres"
    assert shared["3d_lowres"]["data_identifier"] == "autotransResEncUNetMPlans_3d_lowres"
    own = plan_experiment(fp, DJ, "Dataset001_P", PlannerOptions(preset="ResEncM",
                                                                 overwrite_target_spacing=(2.0, 2.0, 2.0)))
    assert own["configurations"]["3d_fullres"]["data_identifier"] == "autotransResEncUNetMPlans_3d_fullres"


@pytest.mark.parametrize("model", ["pix2pix", "cyclegan", "regression"])
def test_resenc_plan_trains_one_step_and_round_trips(model: str, resenc_plans: Plans, one_thread: None) -> None:
    """One training step of each U-Net-generator family on a ResEnc plan; a fresh family built from the same plan
    (what inference does) loads its weights strictly and predicts the same."""
    if model not in _unet_families(resenc_plans):
        pytest.skip(f"family {model} is not registered in this checkout")
    cfg = resenc_plans.configuration("3d_fullres")
    torch.manual_seed(0)
    fam = get_family(model)(resenc_plans, cfg, {"num_epochs": 10}, "cpu")
    fam.build()
    fam.configure_optimizers()
    assert any(isinstance(m, ResidualEncoderUNet) for net in fam.networks().values() for m in net.modules())
    patch = list(cfg.patch_size)
    batch = {"source": torch.rand(2, 1, *patch) * 2 - 1, "target": torch.rand(2, 1, *patch) * 2 - 1,
             "mask": torch.ones(2, 1, *patch)}
    losses = fam.train_step(batch, 0)
    assert losses and all(np.isfinite(v) for v in losses.values())
    fresh = get_family(model)(resenc_plans, cfg, {"num_epochs": 10}, "cpu")
    fresh.build()
    fresh.load_state_dict(fam.state_dict())  # strict: same classes, same keys and shapes
    x = torch.rand(1, 1, *patch) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fam.eval().predict_patch(x), fresh.eval().predict_patch(x))


def test_fresh_user_flow_plan_train_predict(brain_demo: Path, roots: dict[str, Path], tmp_path: Path) -> None:
    """``autotrans_plan_and_preprocess -d 11 -pl ResEncL`` then ``autotrans_train 11 3d_fullres pix2pix 0 -p
    autotransResEncUNetLPlans`` and ``autotrans_predict -p autotransResEncUNetLPlans``; the default plan beside
    it reuses the same 3d_fullres data (nnU-Net's data identifier rule)."""
    from autotrans.cli.predict import main as predict_main
    from autotrans.cli.train import main as train_main

    pre = roots["autotrans_preprocessed"] / NAME
    assert main_plan_and_preprocess(["-d", "11", "-pl", "ResEncL", "-np", "1"]) == 0
    plans = load_json(pre / "autotransResEncUNetLPlans.json")
    cfg = plans["configurations"]["3d_fullres"]
    assert plans["planner_preset"] == "ResEncL" and plans["gpu_memory_target_gb"] == 24
    assert cfg["architecture"]["network_class_name"] == RESENC_UNET_CLASS
    assert cfg["data_identifier"] == "autotransPlans_3d_fullres"
    assert not (pre / "autotransPlans.json").exists()
    data = pre / "autotransPlans_3d_fullres"
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    assert main_plan_and_preprocess(["-d", "11", "-np", "1"]) == 0  # the default plan: same data, nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == stamps
    assert load_json(pre / "autotransPlans.json")["configurations"]["3d_fullres"]["architecture"][
        "network_class_name"].endswith("PlainConvUNet")

    path = pre / "autotransResEncUNetLPlans.json"
    save_json(shrink_plans(Plans.load(path), patch=(32, 32, 32), features=(4, 8)).data, path)
    argv = ["11", "3d_fullres", "pix2pix", "0", "-p", "autotransResEncUNetLPlans", "--epochs", "1", "--iterations", "1",
            "--val_iterations", "0", "-device", "cpu", "-num_workers", "0", "--seed", "0", "--skip_final_validation"]
    assert train_main(argv) == 0
    fold = roots["autotrans_results"] / NAME / "pix2pix__autotransResEncUNetLPlans__3d_fullres" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert any(".blocks." in k for k in ckpt["networks"]["generator"])  # residual blocks in the encoder
    images = tmp_path / "in"
    images.mkdir()
    src = sorted((roots["autotrans_raw"] / NAME / "imagesTr").iterdir())[0]
    (images / src.name).symlink_to(src)
    out = tmp_path / "out"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", "11", "-c", "3d_fullres", "-m", "pix2pix",
                         "-p", "autotransResEncUNetLPlans", "-f", "0", "-chk", "checkpoint_final.pth",
                         "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 1


def test_benchmark_plans_new_datasets_with_the_preset_of_its_plans_name() -> None:
    """``autotrans_benchmark -p autotransResEncUNetLPlans`` plans a dataset without plans with ``-pl ResEncL``."""
    from autotrans.cli.benchmark import build_parser, planner_options

    for extra, expected in ((["-p", "autotransResEncUNetLPlans"], ("ResEncL", "autotransResEncUNetLPlans", 24.0)),
                            ([], ("default", "autotransPlans", 8.0)),
                            (["-p", "autotransResEncUNetLPlans", "-gpu_memory_target", "48"],
                             ("ResEncL", "autotransResEncUNetLPlans", 48.0))):
        o = planner_options(build_parser().parse_args(["-d", "11", "-m", "pix2pix", *extra]))
        assert (o.preset, o.plans_name, o.gpu_memory_target_gb) == expected
