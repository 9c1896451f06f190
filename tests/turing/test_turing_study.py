"""Study builder: balance, blinding, display data and argument errors."""
from __future__ import annotations

import json
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from autotrans.io import Geometry, read_image, write_image
from autotrans.turing import Study, StudyError, SyntheticSource, create_study, parse_synthetic, render

from .conftest import CASES, FLAIR, MODELS, PET, crop_to, make_volumes


def test_study_is_balanced_and_blinded(ct_study_template: Path) -> None:
    study = Study.load(ct_study_template)
    truths = Counter(it["truth"] for it in study.items.values())
    assert truths == {"real": 4, "synthetic": 4}
    assert Counter(it["model"] for it in study.items.values() if it["model"]) == {MODELS[0]: 2, MODELS[1]: 2}
    # synthetic volumes of cases not shown as real are preferred: 4 real cases use them all, so here
    # overlap is unavoidable, but every real case appears once
    assert sorted(it["case"] for it in study.items.values() if it["truth"] == "real") == CASES

    orders = [r["order"] for r in study.readers.values()]
    for order in orders:
        assert sorted(order) == sorted(study.items)
    assert len({tuple(o) for o in orders}) == 3, "each reader gets their own order"
    tokens = [r["token"] for r in study.readers.values()] + [study.admin_token]
    assert len(set(tokens)) == 4 and all(len(t) >= 32 for t in tokens)

    sizes = {study.item_path(i).stat().st_size for i in study.items}
    assert sizes == {int(np.prod(study.display["shape"])) * 2}, "every item file has the same size"
    names = " ".join(p.name for p in (ct_study_template / "items").iterdir())
    assert not any(c in names for c in CASES) and not any(m in names for m in MODELS)
    assert stat.S_IMODE((ct_study_template / "study.json").stat().st_mode) == 0o600


def test_display_data_is_the_volume_in_hounsfield_units(ct_study_template: Path, ct_volumes: dict) -> None:
    """Same-size crops need no resampling, so the decoded display data must equal the source up to the
    display dither every item gets (Gaussian, one HU for integer CT; see render)."""
    study = Study.load(ct_study_template)
    shape = tuple(study.display["shape"])
    sd = study.meta["display_dither_sd"]
    assert sd == pytest.approx(1.0)
    for item_id, it in study.items.items():
        if it["truth"] != "real":
            continue
        code = np.fromfile(study.item_path(item_id), dtype="<u2").reshape(shape)
        shown = render.decode(code, "CT")
        src = np.clip(ct_volumes["crops"][it["case"]], -1024, None)
        err = shown - src
        assert np.abs(err).max() <= 0.5 + 6 * sd and abs(err.mean()) < 0.1 and err.std() < 1.5 * sd


def test_same_seed_same_study(ct_volumes: dict, tmp_path: Path) -> None:
    def plan(out: Path) -> list[list[tuple[str, str | None, str]]]:
        s = create_study(ct_volumes["real"], ct_volumes["synthetic"], out, "CT", n_per_class=2, readers=["a", "b"], seed=3)
        return [[(s.items[i]["truth"], s.items[i]["model"], s.items[i]["case"]) for i in r["order"]]
                for r in s.readers.values()]

    assert plan(tmp_path / "s1") == plan(tmp_path / "s2")


def test_common_grid_for_different_fields_of_view(tmp_path: Path) -> None:
    """A synthetic volume with a larger field of view and other spacing gets the same display grid."""
    arr, geo = read_image(PET)
    real, syn = tmp_path / "r", tmp_path / "s"
    real.mkdir(), syn.mkdir()
    a, g = crop_to(arr, geo, 20, (20, 30, 30))
    write_image(a, g, real / "one.nii.gz")
    b, gb = crop_to(arr, geo, 10, (40, 50, 44))
    gb = Geometry(size=gb.size, spacing=(2.0, 2.5, 3.0), origin=gb.origin, direction=gb.direction)
    write_image(b, gb, syn / "two.nii.gz")
    study = create_study(real, [SyntheticSource(syn, "m")], tmp_path / "study", "PET", seed=1)
    # common field of view (z, y, x) = min((60, 90, 90), (120, 125, 88)) mm at the median finest spacing 2.5 mm
    assert study.display["spacing_mm"] == pytest.approx(2.5)
    assert study.display["shape"] == [24, 36, 35]
    assert {study.item_path(i).stat().st_size for i in study.items} == {24 * 36 * 35 * 2}
    names = [p["name"] for p in study.display["presets"]]
    # the reading-room default first: inverted grey 0-7 SUV, then hot iron (shown with a colour bar)
    assert study.display["presets"][0] == {"name": "SUV 0-7 inverted", "center": 3.5, "width": 7.0,
                                           "colormap": "gray_inverted"}
    assert {p["colormap"] for p in study.display["presets"]} == {"gray_inverted", "hot_iron"}
    assert all(n.startswith("SUV 0-") for n in names)
    assert study.display["unit"] == "SUV"


def test_grid_respects_size_limits() -> None:
    grid = render.plan_grid([np.array([900.0, 500.0, 500.0])], [np.array([0.5, 0.5, 0.5])])
    assert max(grid.shape) <= render.MAX_DIM and np.prod(grid.shape) <= render.MAX_VOXELS
    assert grid.spacing >= 900.0 / render.MAX_DIM - 1e-9


def test_mr_is_reoriented_and_auto_windowed(tmp_path: Path) -> None:
    arr, geo = read_image(FLAIR)
    assert geo.direction[4] < 0, "this FLAIR is stored with a flipped y axis"
    real, syn = tmp_path / "r", tmp_path / "s"
    real.mkdir(), syn.mkdir()
    crop, g = crop_to(arr, geo, 11, (16, 60, 50))
    write_image(crop, g, real / "c.nii.gz")
    write_image(crop * 0.5 + 3, g, syn / "c.nii.gz")
    lps, _ = render.load_lps(real / "c.nii.gz")
    np.testing.assert_array_equal(lps, crop[:, ::-1, :])
    study = create_study(real, [SyntheticSource(syn, "m")], tmp_path / "study", "MR", seed=1)
    shows = []
    for item_id in sorted(study.items):
        code = np.fromfile(study.item_path(item_id), dtype="<u2").reshape(study.display["shape"])
        shown = render.decode(code, "MR")
        fg = shown[lps > lps.min()]
        assert np.percentile(fg, 0.5) == pytest.approx(0.0, abs=0.02)
        assert np.percentile(fg, 99.5) == pytest.approx(1.0, abs=0.02)
        shows.append(shown)
    # intensity scaling alone must not tell the classes apart after auto-windowing
    np.testing.assert_allclose(shows[0], shows[1], atol=1e-3)


def test_parse_synthetic() -> None:
    assert parse_synthetic("/data/pred:unet") == SyntheticSource(Path("/data/pred"), "unet")
    assert parse_synthetic("/data/pred_gan").label == "pred_gan"
    assert parse_synthetic("rel/dir:a.b-c+1").label == "a.b-c+1"
    with pytest.raises(StudyError, match="label"):
        parse_synthetic("/data/pred:bad label!")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modality": "XR"}, "--modality"),
        ({"n_per_class": 9}, "needs 9 real"),
        ({"n_per_class": 0}, "at least 1"),
        ({"readers": ["a", "a"]}, "distinct"),
        ({"readers": ["../evil"]}, "reader name"),
        ({"synthetic": []}, "at least one --synthetic"),
        ({"synthetic": [SyntheticSource(Path("x"), "real")]}, "'real' cannot label"),
        ({"synthetic": [SyntheticSource(Path("x"), "m"), SyntheticSource(Path("y"), "m")]}, "distinct"),
    ],
)
def test_create_errors(ct_volumes: dict, tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"real": ct_volumes["real"], "synthetic": ct_volumes["synthetic"], "out": tmp_path / "s", "modality": "CT"}
    args.update(kwargs)
    with pytest.raises(StudyError, match=message):
        create_study(**args)
    assert not (tmp_path / "s").exists()


def test_create_refuses_missing_empty_and_used_folders(ct_volumes: dict, tmp_path: Path) -> None:
    syn = ct_volumes["synthetic"]
    with pytest.raises(StudyError, match="does not exist"):
        create_study(tmp_path / "nope", syn, tmp_path / "s", "CT")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="holds no volumes"):
        create_study(tmp_path / "empty", syn, tmp_path / "s", "CT")
    used = tmp_path / "used"
    used.mkdir()
    (used / "x.txt").write_text("keep me")
    with pytest.raises(StudyError, match="not empty"):
        create_study(ct_volumes["real"], syn, used, "CT")
    assert (used / "x.txt").read_text() == "keep me"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.nii.gz").write_bytes(b"not an image")
    with pytest.raises(StudyError, match="bad.nii.gz"):
        create_study(broken, syn, tmp_path / "s2", "CT", n_per_class=1)


def test_load_rejects_non_study(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="not a study folder"):
        Study.load(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(StudyError, match="unsupported study format"):
        Study.load(tmp_path)


def test_make_volumes_is_reusable(tmp_path: Path) -> None:
    """The synthetic volumes really differ from the real ones (else the study would test nothing)."""
    vols = make_volumes(PET, tmp_path, shape=(8, 16, 16), noise=0.2, yx0=10)
    a, _ = read_image(vols["real"] / f"{CASES[0]}.nii.gz")
    b, _ = read_image(vols["synthetic"][0].folder / f"{CASES[0]}.nii.gz")
    assert a.shape == b.shape and not np.allclose(a, b)
