"""The engine end to end on real (tiny) data: results folder, resume exactness, user configurations, unpaired, DDP."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autotrans.cli.train import main
from autotrans.inference import load_predictor
from autotrans.planning.planner import plans_hash
from autotrans.training import run_training
from tests.training.conftest import add_configuration
from tests.training.families import ResidualFamily
from tests.training.helpers import fold_dir, load, settings, tensors_equal


def test_cli_writes_self_contained_results(tiny_brain: Path, roots: dict[str, Path]) -> None:
    ResidualFamily.seen.clear()
    rc = main(["11", "3d_fullres", "test_residual", "0", "--epochs", "2", "--iterations", "5", "--val_iterations", "2",
               "-device", "cpu", "-num_workers", "0", "--seed", "3", "-o", "lr=0.005", "--save_every", "1"])
    assert rc == 0
    fd = fold_dir(roots["autotrans_results"])
    model_dir = fd.parent
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (model_dir / name).is_file()
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth", "progress.png", "debug.json"):
        assert (fd / name).is_file(), name
    assert list(fd.glob("training_log_*.txt"))
    # batches: (N, C, *patch) with a 0/1 mask, as the Family contract says
    cfg = json.loads((model_dir / "plans.json").read_text())["configurations"]["3d_fullres"]
    shape = (cfg["batch_size"], 1, *cfg["patch_size"])  # no family section for test_residual: the plan's batch
    assert len(ResidualFamily.seen) == 10
    assert ResidualFamily.seen[0] == {"source": shape, "target": shape, "mask": shape}
    final = load(fd / "checkpoint_final.pth")
    assert final["family"] == "test_residual" and final["epoch"] == 2
    assert final["plans_sha1"] == plans_hash(json.loads((model_dir / "plans.json").read_text()))
    assert final["overrides"] == {"lr": 0.005, "num_epochs": 2}
    assert final["mirror_axes"] == [0, 1, 2]
    assert set(final["rng"]) >= {"python", "numpy", "torch"} and final["loader"] == {"seed": 3, "next_batch": 10}
    assert final["history"]["_epoch"] == [0, 1] and len(final["history"]["val/mae"]) == 2
    assert final["train_state"]["schedulers"]["generator"]["last_epoch"] == 2
    assert load(fd / "checkpoint_latest.pth")["epoch"] == 1  # every epoch, except the last (final)
    debug = json.loads((fd / "debug.json").read_text())
    assert debug["family_hparams"] == {"lr": 0.005, "num_epochs": 2} and debug["settings"]["iterations"] == 5
    summary = json.loads((fd / "validation" / "summary.json").read_text())
    val_cases = json.loads((tiny_brain / "splits_final.json").read_text())[0]["val"]
    assert sorted(summary["cases"]) == sorted(val_cases)
    assert set(summary["mean"]) == {"mae", "psnr", "ssim"}
    case = summary["cases"][val_cases[0]]["metrics"]
    assert 0 < case["mae"] < 2 and np.isfinite(case["psnr"])  # MR: the plan's normalized [-1, 1] scale
    assert (fd / "validation" / f"{val_cases[0]}.nii.gz").is_file()
    # the results folder alone serves inference
    predictor = load_predictor(dataset="11", configuration="3d_fullres", model="test_residual", folds=["0"])
    assert predictor.model.folds[0].mirror_axes == (0, 1, 2)


def test_resume_is_exact(tiny_brain: Path, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """4 epochs in one run == 2 epochs + --c 2 more: same weights, optimizer, scheduler and curves."""
    one = roots["autotrans_results"]
    run_training(settings(num_epochs=4))
    two = one.parent / "results_resumed"
    monkeypatch.setenv("autotrans_results", str(two))
    run_training(settings(num_epochs=2))
    half = load(fold_dir(two) / "checkpoint_final.pth")
    run_training(settings(num_epochs=4, continue_training=True, seed=99))  # the checkpoint's seed wins
    a, b = load(fold_dir(one) / "checkpoint_final.pth"), load(fold_dir(two) / "checkpoint_final.pth")
    assert a["epoch"] == b["epoch"] == 4
    assert tensors_equal(a["networks"], b["networks"])
    assert tensors_equal(a["train_state"], b["train_state"])
    assert a["history"]["train/G_l1"] == b["history"]["train/G_l1"]
    assert a["history"]["val/mae_ema"] == b["history"]["val/mae_ema"]
    assert not tensors_equal(half["networks"], b["networks"])  # training really continued
    assert len(list(fold_dir(two).glob("training_log_*.txt"))) >= 1


def test_inheriting_configuration_uses_parent_data(tiny_brain: Path, roots: dict[str, Path]) -> None:
    add_configuration(tiny_brain, "tiny16", patch_size=[16, 16, 16], batch_size=3)
    ResidualFamily.seen.clear()
    summary = run_training(settings(configuration="tiny16", num_epochs=1, iterations=2, val_iterations=1))
    assert ResidualFamily.seen[0]["source"] == (3, 1, 16, 16, 16)
    assert (fold_dir(roots["autotrans_results"], configuration="tiny16") / "checkpoint_final.pth").is_file()
    assert summary["mean"]["mae"] > 0


def test_fold_all_and_val_best(tiny_brain: Path, roots: dict[str, Path]) -> None:
    assert main(["11", "3d_fullres", "test_residual", "all", "--epochs", "2", "--iterations", "3", "--val_iterations",
                 "2", "-device", "cpu", "-num_workers", "0", "--disable_val_tta", "--no_mirroring"]) == 0
    fd = fold_dir(roots["autotrans_results"], fold="all")
    assert (fd / "checkpoint_best.pth").is_file()
    assert load(fd / "checkpoint_final.pth")["mirror_axes"] == []  # inference: no mirror TTA
    summary = run_training(settings(fold="all", only_validation=True, val_best=True))
    assert summary["checkpoint"] == "checkpoint_best.pth" and len(summary["cases"]) == 4


def test_unpaired_family_on_unpaired_data(tiny_unpaired: Path, roots: dict[str, Path]) -> None:
    summary = run_training(settings(model="test_moments", num_epochs=1, iterations=3))
    fd = fold_dir(roots["autotrans_results"], model="test_moments")
    assert load(fd / "checkpoint_final.pth")["history"]["train/G_moment"][0] >= 0
    assert summary["cases"] == {}  # no validation case has both a source and a target


def test_ddp_gloo_two_processes(tiny_brain: Path, roots: dict[str, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTRANS_TEST_DUMP", str(tmp_path))
    summary = run_training(settings(num_gpus=2, num_epochs=1, iterations=2, val_iterations=1, batch_size=2))
    r0, r1 = load(tmp_path / "rank0_epoch0.pt"), load(tmp_path / "rank1_epoch0.pt")
    assert tensors_equal(r0["networks"], r1["networks"])  # gradients were averaged: both ranks hold one model
    fd = fold_dir(roots["autotrans_results"])
    debug = json.loads((fd / "debug.json").read_text())
    assert debug["world_size"] == 2 and debug["batch_size_per_rank"] == 1
    ckpt = load(fd / "checkpoint_final.pth")
    assert not any(k.startswith("module.") for k in ckpt["networks"]["generator"])  # unwrapped from DDP
    assert ckpt["init_args"]["world_size"] == 2
    assert tensors_equal(ckpt["networks"], r0["networks"])
    assert summary["mean"]["mae"] > 0


def test_ddp_resume_restores_each_ranks_rng(tiny_brain: Path, roots: dict[str, Path]) -> None:
    run_training(settings(num_gpus=2, num_epochs=1, iterations=2, val_iterations=1, batch_size=2))
    fd = fold_dir(roots["autotrans_results"])
    first = load(fd / "checkpoint_final.pth")
    assert len(first["rng_per_rank"]) == 2
    assert not tensors_equal(first["rng_per_rank"][0]["torch"], first["rng_per_rank"][1]["torch"])
    run_training(settings(num_gpus=2, num_epochs=2, iterations=2, val_iterations=1, batch_size=2,
                          continue_training=True))
    assert load(fd / "checkpoint_final.pth")["epoch"] == 2


def test_pretrained_weights(tiny_brain: Path, roots: dict[str, Path]) -> None:
    run_training(settings(num_epochs=1))
    source = fold_dir(roots["autotrans_results"]) / "checkpoint_final.pth"
    # lr 0: the fine-tuned weights must still be exactly the pretrained ones
    run_training(settings(fold="1", num_epochs=1, pretrained_weights=str(source), overrides={"lr": 0.0}))
    tuned = load(fold_dir(roots["autotrans_results"], fold="1") / "checkpoint_final.pth")
    assert tensors_equal(tuned["networks"], load(source)["networks"])
    with pytest.raises(Exception, match="pretrained weights of model 'test_residual'"):
        run_training(settings(model="test_moments", num_epochs=1, pretrained_weights=str(source)))


def test_worker_processes_do_not_change_training(tiny_brain: Path, roots: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed gives the same weights with 2 augmentation processes as in-process (batch = f(seed, index))."""
    run_training(settings(num_epochs=1, iterations=4))
    other = roots["autotrans_results"].parent / "results_workers"
    monkeypatch.setenv("autotrans_results", str(other))
    run_training(settings(num_epochs=1, iterations=4, num_workers=2))
    a = load(fold_dir(roots["autotrans_results"]) / "checkpoint_final.pth")
    b = load(fold_dir(other) / "checkpoint_final.pth")
    assert tensors_equal(a["networks"], b["networks"])


def test_fresh_run_sets_earlier_checkpoints_aside(tiny_brain: Path, roots: dict[str, Path]) -> None:
    run_training(settings(num_epochs=2))
    run_training(settings(num_epochs=1, val_iterations=0))  # no validation patches: no new best
    fd = fold_dir(roots["autotrans_results"])
    assert load(fd / "checkpoint_final.pth")["epoch"] == 1
    assert load(fd / "checkpoint_final.pth.previous")["epoch"] == 2
    assert not (fd / "checkpoint_best.pth").exists() and (fd / "checkpoint_best.pth.previous").exists()


def test_ct_to_pet_validation_in_suv(petct_demo: Path, roots: dict[str, Path]) -> None:
    """A dataset-level normalization (PET): per-epoch MAE and the final summary are in SUV, range [0, ceiling]."""
    from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
    from tests.training.conftest import TINY_PLAN

    assert main_plan_and_preprocess(["-d", "12", *TINY_PLAN]) == 0
    summary = run_training(settings(dataset="12", num_epochs=1, fold="all"))
    plans = json.loads((roots["autotrans_preprocessed"] / "Dataset012_DemoCTtoPET" / "autotransPlans.json").read_text())
    ceiling = plans["normalization"]["target"]["ceiling"]
    assert summary["unit"] == "SUV" and summary["cases"]
    for case in summary["cases"].values():
        assert case["info"]["range"] == [0.0, ceiling]
    fd = roots["autotrans_results"] / "Dataset012_DemoCTtoPET" / "test_residual__autotransPlans__3d_fullres" / "fold_all"
    mae = load(fd / "checkpoint_final.pth")["history"]["val/mae"][0]
    assert 0 < mae < ceiling
