"""Sharing a trained model: ``autotrans_export_model`` -> zip -> ``autotrans_install_model`` in a fresh results root
-> ``autotrans_predict`` gives the same volume; tampered, crafted and unsafe zips are refused with one line and
leave the results root untouched.

The end-to-end model is really trained (``test_residual`` on the tiny demo brains, one fold, 2 x 2 iterations),
once per module; the dependency-path tests use fabricated results folders (``make_model``).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autotrans.cli.export_model import main as export_main
from autotrans.cli.install_model import main as install_main
from autotrans.cli.predict import main as predict_main
from autotrans.cli.train import main as train_main
from autotrans.families.base import register_family
from autotrans.inference.models import find_models, load_model
from autotrans.sharing import CARD, MANIFEST, check_member
from tests.inference.helpers import IdentityFamily, make_model
from tests.training.conftest import NAME, _tiny_cache  # noqa: F401  (session fixture: the planned tiny brains)

MODEL = "test_residual__autotransPlans__3d_fullres"
REL = f"{NAME}/{MODEL}"
CKPT = f"{REL}/fold_0/checkpoint_final.pth"
CASE = "MS-patient07_0000.nii.gz"

pytestmark = pytest.mark.usefixtures("one_thread")


@register_family("test_dependent")
class DependentFamily(IdentityFamily):
    """Built on a ``test_constant`` stage, as a latent model is on its autoencoder (path in its overrides)."""

    dependencies = (("test_constant", "dep_checkpoint"),)


@pytest.fixture(scope="module")
def trained(_tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """A really trained one-fold model in its own roots, its export, and a case to predict."""
    base = tmp_path_factory.mktemp("sharing")
    roots = {v: base / v for v in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results")}
    with pytest.MonkeyPatch.context() as mp:
        for var, p in roots.items():
            shutil.copytree(_tiny_cache / var, p)
            mp.setenv(var, str(p))
        assert train_main(["11", "3d_fullres", "test_residual", "0", "--epochs", "2", "--iterations", "2",
                           "--val_iterations", "1", "-device", "cpu", "-num_workers", "0", "--seed", "0",
                           "--disable_val_tta"]) == 0
        zip_path = base / "model.zip"
        assert export_main(["-d", "11", "-c", "3d_fullres", "-m", "test_residual", "-o", str(zip_path)]) == 0
    inputs = base / "in"
    inputs.mkdir()
    shutil.copy(roots["autotrans_raw"] / NAME / "imagesTr" / CASE, inputs / CASE)
    return {"results": roots["autotrans_results"], "zip": zip_path, "in": inputs}


def _errors(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def _predict(results: Path, inputs: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> sitk.Image:
    monkeypatch.setenv("autotrans_results", str(results))
    assert predict_main(["-i", str(inputs), "-o", str(out), "-device", "cpu", "-npp", "0", "-nps", "0"]) == 0
    return sitk.ReadImage(str(out / CASE.replace("_0000", "")))


def _installed(results: Path) -> list[str]:
    """Everything in the results root (hidden staging leftovers included)."""
    return sorted(str(p.relative_to(results)) for p in results.rglob("*"))


def _rewrite(src: Path, dst: Path, change: Callable[[str, bytes], bytes | None] = lambda n, b: b,
             extra: dict[str, bytes] | None = None, fix_manifest: bool = False) -> Path:
    """A copy of the zip ``src`` with members changed/dropped (``change`` returns None) and ``extra`` added; with
    ``fix_manifest`` the manifest lists the new content (a careful forger), else it stays the original."""
    import hashlib

    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    out: dict[str, bytes] = {}
    for name, data in members.items():
        new = change(name, data)
        if new is not None:
            out[name] = new
    out.update(extra or {})
    if fix_manifest:
        manifest["files"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in out.items()}
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in out.items():
            zf.writestr(name, data)
        zf.writestr(MANIFEST, json.dumps(manifest))
    return dst


# --- the round trip ----------------------------------------------------------------------------------
def test_export_install_predict_identical(trained: dict[str, Path], roots: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = roots["autotrans_results"]  # a new root: no raw, no preprocessed data, no results
    with zipfile.ZipFile(trained["zip"]) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST))
    assert names == {MANIFEST, *manifest["files"]}
    assert {f"{REL}/{n}" for n in ("plans.json", "dataset.json", "dataset_fingerprint.json", CARD)} <= names
    assert {CKPT, f"{REL}/fold_0/validation/summary.json", f"{REL}/fold_0/progress.png"} <= names
    assert not any(n.endswith((".nii.gz", ".txt")) or "debug.json" in n for n in names)  # no data, logs, host info
    assert manifest["torch_version"] == torch.__version__ and manifest["autotrans_version"]

    assert install_main([str(trained["zip"])]) == 0
    (spec,) = find_models(fresh)
    assert spec.folder == fresh / NAME / MODEL and spec.folds() == ["0"]
    state = torch.load(spec.folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert "train_state" not in state and "rng" not in state and state["epoch"] == 2  # stripped, card data kept

    a = _predict(trained["results"], trained["in"], tmp_path / "a", monkeypatch)
    b = _predict(fresh, trained["in"], tmp_path / "b", monkeypatch)
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (b.GetSpacing(), b.GetOrigin(), b.GetDirection())


def test_model_card(trained: dict[str, Path]) -> None:
    with zipfile.ZipFile(trained["zip"]) as zf:
        card = zf.read(f"{REL}/{CARD}").decode()
    summary = json.loads((trained["results"] / REL / "fold_0" / "validation" / "summary.json").read_text())
    assert "DemoT2toFLAIR" in card and "T2 (MR) -> FLAIR (MR)" in card
    assert "Licence: CC BY" in card and "Reference: Lesjak" in card
    assert "Folds included: 0; checkpoint(s): checkpoint_final.pth" in card
    assert "2 of 2 epochs; 2 iterations/epoch (4 iterations done)" in card
    assert f"MAE {summary['mean']['mae']:.4g}" in card  # the recorded numbers, nothing invented
    assert f"torch {torch.__version__}" in card and "stripped" in card
    assert "autotrans_install_model model.zip" in card
    assert f"autotrans_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {NAME} -c 3d_fullres -m test_residual " \
           "-p autotransPlans -f 0" in card


# --- install refusals ----------------------------------------------------------------------------------
def test_overwrite_needs_flag_and_replaces_only_that_model(trained: dict[str, Path], roots: dict[str, Path],
                                                           capsys: pytest.CaptureFixture) -> None:
    fresh = roots["autotrans_results"]
    assert install_main([str(trained["zip"])]) == 0
    stray = fresh / REL / "fold_0" / "stray.txt"
    stray.write_text("local note")
    other = fresh / NAME / "pix2pix__autotransPlans__3d_fullres"
    other.mkdir()
    (other / "keep.txt").write_text("another model")
    capsys.readouterr()
    assert install_main([str(trained["zip"])]) == 1
    (err,) = _errors(capsys)
    assert str(fresh / REL) in err and "--overwrite" in err
    assert stray.is_file()
    assert install_main([str(trained["zip"]), "--overwrite"]) == 0
    assert not stray.exists() and (fresh / CKPT).is_file() and (other / "keep.txt").is_file()
    assert not [p for p in fresh.rglob(".*")]  # no staging or set-aside folder left


@pytest.mark.parametrize("kind", ["checksum", "slip", "absolute", "unlisted", "kind", "missing", "link"])
def test_tampered_zip_refused_and_nothing_installed(kind: str, trained: dict[str, Path], roots: dict[str, Path],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fresh = roots["autotrans_results"]
    bad = tmp_path / "bad.zip"
    flip = lambda n, b: (b[:-100] + bytes([b[-100] ^ 1]) + b[-99:]) if n == CKPT else b  # noqa: E731
    if kind == "checksum":
        _rewrite(trained["zip"], bad, flip)
    elif kind == "slip":
        _rewrite(trained["zip"], bad, extra={f"{REL}/../../../evil.json": b"{}"}, fix_manifest=True)
    elif kind == "absolute":
        _rewrite(trained["zip"], bad, extra={str(tmp_path / "evil.json"): b"{}"}, fix_manifest=True)
    elif kind == "unlisted":
        _rewrite(trained["zip"], bad, extra={f"{REL}/fold_1/checkpoint_final.pth": b"x"})
    elif kind == "kind":
        _rewrite(trained["zip"], bad, extra={f"{REL}/fold_0/run.py": b"import os"}, fix_manifest=True)
    elif kind == "missing":
        _rewrite(trained["zip"], bad, lambda n, b: None if n == CKPT else b)
    else:
        shutil.copy(trained["zip"], bad)
        with zipfile.ZipFile(bad, "a") as zf:
            info = zipfile.ZipInfo(f"{REL}/fold_0/checkpoint_best.pth")
            info.external_attr = (0o120777 << 16)  # a symlink to /etc/passwd
            zf.writestr(info, "/etc/passwd")
    capsys.readouterr()
    assert install_main([str(bad)]) == 1
    (err,) = _errors(capsys)
    expected = {"checksum": "checksum mismatch", "slip": "refused member", "absolute": "refused member",
                "unlisted": "not listed", "kind": "refused member", "missing": "missing from the zip",
                "link": "a link"}[kind]
    assert expected in err, err
    assert _installed(fresh) == []
    assert not (tmp_path.parent / "evil.json").exists()


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_zip_refused(keep: float, trained: dict[str, Path], roots: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    data = trained["zip"].read_bytes()
    bad = tmp_path / "cut.zip"
    bad.write_bytes(data[: int(len(data) * keep)])
    assert install_main([str(bad)]) == 1
    (err,) = _errors(capsys)
    assert "truncated" in err  # (the cut may leave a checkpoint's own zip directory for zipfile to find)
    assert _installed(roots["autotrans_results"]) == []


def test_malformed_manifest_refused(trained: dict[str, Path], roots: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    with zipfile.ZipFile(trained["zip"]) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members[MANIFEST])
    manifest["files"][CKPT] = "trust me"
    members[MANIFEST] = json.dumps(manifest).encode()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    assert install_main([str(bad)]) == 1
    assert "is malformed" in _errors(capsys)[0]
    assert _installed(roots["autotrans_results"]) == []


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_crafted_to_run_code_refused(trained: dict[str, Path], roots: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """Checksums that match do not make a file safe: the weights-only loader refuses the pickle's os.system."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"family": "test_residual", "payload": _RunsCode(marker)}, buf)
    bad = _rewrite(trained["zip"], tmp_path / "evil.zip", lambda n, b: buf.getvalue() if n == CKPT else b,
                   fix_manifest=True)
    assert install_main([str(bad)]) == 1
    (err,) = _errors(capsys)
    assert "refused to load" in err and "system" in err and "fold_0/checkpoint_final.pth" in err
    assert not marker.exists()
    assert _installed(roots["autotrans_results"]) == []


# --- export refusals -----------------------------------------------------------------------------------
def test_export_refuses_missing_folds_and_checkpoints(trained: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("autotrans_results", str(trained["results"]))
    base = ["-d", "11", "-c", "3d_fullres", "-m", "test_residual", "-o", str(tmp_path / "m.zip")]
    capsys.readouterr()
    assert export_main([*base, "-f", "0", "3"]) == 1
    (err,) = _errors(capsys)
    assert "fold 3 has no checkpoint_final.pth" in err and "folds 0" in err
    assert export_main([*base, "-chk", "checkpoint_ep5.pth"]) == 1
    (err,) = _errors(capsys)
    assert "no fold holds checkpoint_ep5.pth" in err and "checkpoint_best.pth" in err
    assert export_main([*base, "-m", "pix2pix"]) == 1
    assert "no trained model matches" in _errors(capsys)[0]
    assert not (tmp_path / "m.zip").exists() and not list(tmp_path.iterdir())


def test_export_full_checkpoints_keep_training_state(trained: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("autotrans_results", str(trained["results"]))
    out = tmp_path / "full.zip"
    assert export_main(["-d", NAME, "-c", "3d_fullres", "-m", "test_residual", "-chk", "checkpoint_final.pth",
                        "checkpoint_best.pth", "--full_checkpoints", "-o", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        state = torch.load(io.BytesIO(zf.read(CKPT)), weights_only=True)
        assert f"{REL}/fold_0/checkpoint_best.pth" in zf.namelist()
        assert "complete (with optimizer" in zf.read(f"{REL}/{CARD}").decode()
    assert "train_state" in state and "rng" in state


# --- dependency paths (latent models: the autoencoder's path in the overrides) ---------------------------
def test_dependency_paths_are_root_relative_in_the_zip_and_absolute_after_install(
        roots: dict[str, Path], cbct_plan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = roots["autotrans_results"]
    dep = make_model(old, cbct_plan, "test_constant", {"0": {"value": 0.25}})
    dep_ckpt = dep / "fold_0" / "checkpoint_final.pth"
    model = make_model(old, cbct_plan, "test_dependent", {"0": {"dep_checkpoint": str(dep_ckpt)}})
    rel = dep_ckpt.relative_to(old).as_posix()
    for flags, with_dep in (([], False), (["--include_dependencies"], True)):
        out = tmp_path / f"m{with_dep}.zip"
        assert export_main(["-d", cbct_plan.name, "-c", "3d_fullres", "-m", "test_dependent", "-o", str(out),
                            *flags]) == 0
        with zipfile.ZipFile(out) as zf:
            name = f"{model.relative_to(old).as_posix()}/fold_0/checkpoint_final.pth"
            state = torch.load(io.BytesIO(zf.read(name)), weights_only=True)
            assert state["overrides"]["dep_checkpoint"] == rel  # no trace of the exporter's folders
            assert str(old) not in zf.read(f"{model.relative_to(old).as_posix()}/{CARD}").decode()
            assert (rel in zf.namelist()) is with_dep
        new = tmp_path / f"new{with_dep}"
        monkeypatch.setenv("autotrans_results", str(new))
        assert install_main([str(out)]) == 0
        installed = torch.load(new / model.relative_to(old) / "fold_0" / "checkpoint_final.pth", weights_only=True)
        assert installed["overrides"]["dep_checkpoint"] == str(new / rel)
        assert (new / rel).is_file() is with_dep
        spec = next(s for s in find_models(new) if s.model == "test_dependent")
        assert load_model(spec).folds[0].fold == "0"  # predicts without the dependency's folder
        monkeypatch.setenv("autotrans_results", str(old))


def test_cli_defaults_match_the_library() -> None:
    from autotrans.cli import export_model
    from autotrans.inference.models import DEFAULT_CHECKPOINT
    from autotrans.planning.planner import DEFAULT_PLANS_NAME

    assert export_model.DEFAULT_CHECKPOINT == DEFAULT_CHECKPOINT
    assert export_model.DEFAULT_PLANS_NAME == DEFAULT_PLANS_NAME


@pytest.mark.parametrize("name,ok", [
    (f"{REL}/plans.json", True), (f"{REL}/fold_all/checkpoint_best.pth", True),
    (f"{REL}/fold_0/validation/summary.json", True), (f"{REL}/fold_0/validation/case.nii.gz", False),
    (f"{REL}/fold_0/debug.json", False), ("/etc/passwd", False), (f"{NAME}/../x/plans.json", False),
    (f"{REL}/fold_0/../../plans.json", False), ("C:/x/plans.json", False), (f"{REL}/.hidden.pth", False),
    (f"{NAME}/notamodel/plans.json", False), (f"Datasetx/{MODEL}/plans.json", False),
    (f"{REL}\\fold_0\\checkpoint_final.pth", False), (f"{REL}/fold_x/checkpoint_final.pth", False),
])
def test_member_rules(name: str, ok: bool) -> None:
    if ok:
        check_member(name)
    else:
        with pytest.raises(Exception, match="refused member"):
            check_member(name)


# --- a latent model, really trained: its autoencoder travels inside its checkpoint ---------------------
def test_latent_model_round_trip(_tiny_cache: Path, tmp_path: Path,  # noqa: F811
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.training.helpers import shrink

    old = tmp_path / "old"
    for var in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
        shutil.copytree(_tiny_cache / var, old / var)
        monkeypatch.setenv(var, str(old / var))
    shrink(old / "autotrans_preprocessed" / NAME)
    assert train_main(["11", "3d_fullres", "flow_matching", "0", "--epochs", "1", "--iterations", "1",
                       "--val_iterations", "1", "-device", "cpu", "-num_workers", "0", "--seed", "0",
                       "--disable_val_tta", "--skip_final_validation", "-o", "sampling_steps=2"]) == 0
    out = tmp_path / "fm.zip"
    assert export_main(["-d", "11", "-c", "3d_fullres", "-m", "flow_matching", "-o", str(out),
                        "--include_dependencies"]) == 0
    ae = f"{NAME}/autoencoder__autotransPlans__3d_fullres/fold_0/checkpoint_final.pth"
    fm = f"{NAME}/flow_matching__autotransPlans__3d_fullres"
    with zipfile.ZipFile(out) as zf:
        assert ae in zf.namelist()
        card = zf.read(f"{fm}/{CARD}").decode()
    assert str(old) not in card and "not recorded (no validation/summary.json)" in card
    new = tmp_path / "new"
    monkeypatch.setenv("autotrans_results", str(new))
    assert install_main([str(out)]) == 0
    state = torch.load(new / fm / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert state["overrides"]["autoencoder_checkpoint"] == str(new / ae) and (new / ae).is_file()
    inputs = tmp_path / "in"
    inputs.mkdir()
    img = sitk.ReadImage(str(old / "autotrans_raw" / NAME / "imagesTr" / CASE))
    crop = [min(s, 40) for s in img.GetSize()]  # a small real crop: latent sampling on CPU is the slow part
    sitk.WriteImage(sitk.RegionOfInterest(img, crop, [(s - c) // 2 for s, c in zip(img.GetSize(), crop)]),
                    str(inputs / CASE))
    images = []
    for root, name in ((old / "autotrans_results", "a"), (new, "b")):
        monkeypatch.setenv("autotrans_results", str(root))
        assert predict_main(["-i", str(inputs), "-o", str(tmp_path / name), "-m", "flow_matching", "-device", "cpu",
                             "-npp", "0", "-nps", "0", "--steps", "2", "--seed", "3"]) == 0
        images.append(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / CASE.replace("_0000", "")))))
    assert np.array_equal(*images)
