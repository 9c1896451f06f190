"""Two-alternative forced choice and source (context) volumes: study layout, answers with display
settings, and the leak rules: no byte a reader receives may tell which side of a pair is real."""
from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from autotrans.turing import Study, StudyError, SyntheticSource, create_study, render
from autotrans.turing.server import PAGES, TuringServer
from autotrans.turing.store import AnswerStore

from .conftest import CASES, CT, MODELS, REAL_DIR, SOURCE_DIR, SYNTH_DIRS, Client, make_volumes

DISPLAY = {"window_center": 3.5, "window_width": 7.0, "colormap": "hot_iron", "fusion": True,
           "fusion_alpha": 0.4, "source_view": False, "time_s": 4.5}


# ---- study ------------------------------------------------------------------------------------------
def test_2afc_study_pairs_each_case_once(pet_2afc_template: Path) -> None:
    study = Study.load(pet_2afc_template)
    assert study.design == "2afc" and len(study.items) == len(CASES)
    assert sorted(it["case"] for it in study.items.values()) == sorted(CASES)  # a case never appears twice
    assert Counter(it["model"] for it in study.items.values()) == {m: 2 for m in MODELS}  # models spread evenly
    sides = []
    for item_id, it in study.items.items():
        left, right = it["volumes"]
        truths = {study.volumes[v]["truth"] for v in (left, right)}
        assert truths == {"real", "synthetic"}
        assert {study.volumes[v]["case"] for v in (left, right)} == {it["case"]}
        sides.append(it["volumes"].index(it["real"]))
        assert study.owner[left] == study.owner[right] == study.owner[it["context"]] == item_id
    assert set(sides) == {0, 1}, "the real volume is not always on the same side"
    # every served file has one size: both sides and the CT context alike
    sizes = {study.item_path(v).stat().st_size for v in study.owner}
    assert sizes == {int(np.prod(study.display["shape"])) * 2}
    assert study.display["context"]["modality"] == "CT" and study.display["context"]["unit"] == "HU"
    assert all(re.fullmatch(r"[0-9a-f]{20}", v) for v in study.owner)


def test_context_is_the_source_ct_in_hounsfield_units(pet_2afc_template: Path) -> None:
    study = Study.load(pet_2afc_template)
    ctx = next(iter(study.contexts))
    code = np.frombuffer(study.item_path(ctx).read_bytes(), dtype="<u2")
    hu = render.decode(code, "CT")
    assert hu.min() < -500 and hu.max() > 0, "the CT context holds air and soft tissue in HU (not normalized values)"


def test_2afc_same_seed_same_layout(tmp_path: Path) -> None:
    vols = make_volumes(CT, tmp_path / "v", shape=(8, 16, 16))
    a = create_study(vols["real"], vols["synthetic"], tmp_path / "a", "CT", seed=11, design="2afc")
    b = create_study(vols["real"], vols["synthetic"], tmp_path / "b", "CT", seed=11, design="2afc")

    def layout(s: Study) -> list[tuple[str, str, list[str]]]:
        return sorted((it["case"], it["model"], [s.volumes[v]["truth"] for v in it["volumes"]])
                      for it in s.items.values())

    assert layout(a) == layout(b)
    assert not set(a.owner) & set(b.owner), "ids are fresh random tokens, not derived from the seed"


def test_2afc_needs_paired_cases(ct_volumes: dict, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for p in ct_volumes["synthetic"][0].folder.iterdir():
        (other / ("x_" + p.name)).write_bytes(p.read_bytes())
    with pytest.raises(StudyError, match=r"--design 2afc needs real and synthetic volumes of the same cases") as e:
        create_study(ct_volumes["real"], [SyntheticSource(other, "m")], tmp_path / "s", "CT", design="2afc")
    assert "\n" not in str(e.value)
    with pytest.raises(StudyError, match=r"--n_per_class 5: --design 2afc uses each case once"):
        create_study(ct_volumes["real"], ct_volumes["synthetic"], tmp_path / "s", "CT", design="2afc", n_per_class=5)
    with pytest.raises(StudyError, match=r"--design 'abx'"):
        create_study(ct_volumes["real"], ct_volumes["synthetic"], tmp_path / "s", "CT", design="abx")
    assert not (tmp_path / "s").exists()


def test_source_must_cover_every_case(ct_volumes: dict, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{CASES[0]}.nii.gz").write_bytes((ct_volumes["real"] / f"{CASES[0]}.nii.gz").read_bytes())
    with pytest.raises(StudyError, match=r"--source .*: no source volume for case 'pt_zebra_0[2-4]'"):
        create_study(ct_volumes["real"], ct_volumes["synthetic"], tmp_path / "s", "CT", n_per_class=4, source=src)


def test_single_design_with_source_view(ct_volumes: dict, tmp_path: Path) -> None:
    """MR to MR (here CT to CT for speed): the single design serves each item's source beside it."""
    study = create_study(ct_volumes["real"], ct_volumes["synthetic"], tmp_path / "s", "CT", n_per_class=2,
                         seed=5, source=ct_volumes["real"])
    assert study.design == "single" and len(study.contexts) == 4
    assert all(study.owner[it["context"]] == i for i, it in study.items.items())
    assert study.session_layout(list(study.items))["context"].keys() == study.items.keys()


# ---- answers ----------------------------------------------------------------------------------------
def test_2afc_answer_stores_pick_and_display(client_2afc: Client, study_2afc: Study) -> None:
    tok = study_2afc.readers["alice"]["token"]
    item = study_2afc.readers["alice"]["order"][0]
    left, right = study_2afc.item_volumes(item)
    other_item = study_2afc.readers["alice"]["order"][1]
    bad = [
        ({"item": item, "pick": study_2afc.item_volumes(other_item)[0]}, "pick: must be the id"),
        ({"item": item, "pick": left, "answer": "real"}, "unknown fields: answer"),
        ({"item": item, "pick": left, "display": {**DISPLAY, "colormap": "jet"}}, "display.colormap"),
        ({"item": item, "pick": left, "display": {**DISPLAY, "fusion": 1}}, "display.fusion: must be true or false"),
        ({"item": item, "pick": left, "display": {**DISPLAY, "fusion_alpha": 1.5}}, "display.fusion_alpha"),
        ({"item": item, "pick": left, "display": {**DISPLAY, "window_width": 0}}, "display.window_width"),
        ({"item": item, "pick": left, "display": {**DISPLAY, "zoom": 2}}, "display: unknown fields: zoom"),
        ({"item": item, "pick": left, "display": [1]}, "display: must be a JSON object"),
    ]
    for extra, message in bad:
        body = {"confidence": 3, "time_on_item_s": 1.0, **extra}
        status, _, reply = client_2afc.request("POST", "/api/answer", tok, body)
        assert status == 400 and message in json.loads(reply)["error"], (extra, reply)
    status, _, reply = client_2afc.pick(tok, item, right, 4, display=DISPLAY)
    assert status == 201, reply
    row = [a for a in AnswerStore(study_2afc.db_path).all_answers() if a["item"] == item][0]
    assert row["picked"] == right and row["answer"] == "real" and row["confidence"] == 4
    assert row["display"] == DISPLAY


def test_old_answer_database_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "answers.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE answers (reader TEXT NOT NULL, item TEXT NOT NULL, answer TEXT NOT NULL, "
                    "confidence INTEGER NOT NULL, comment TEXT NOT NULL DEFAULT '', time_on_item_s REAL NOT NULL, "
                    "server_elapsed_s REAL, answered_at REAL NOT NULL, PRIMARY KEY (reader, item))")
        con.execute("INSERT INTO answers VALUES ('a', 'i', 'real', 3, '', 1.0, NULL, 1.0)")
    con.close()
    store = AnswerStore(db)
    assert store.save_answer("a", "j", "synthetic", 2, "", 1.0, display={"colormap": "gray"})
    rows = {r["item"]: r for r in store.all_answers()}
    assert rows["i"]["display"] is None and rows["j"]["display"] == {"colormap": "gray"}


# ---- leaks ------------------------------------------------------------------------------------------
Traffic = list[tuple[str, int, dict[str, str], bytes]]


def traffic_2afc(client: Client, study: Study, reader: str) -> tuple[Traffic, dict]:
    """Every byte a 2AFC reader's browser can get, answering each pair (alternately left and right)."""
    tok = study.readers[reader]["token"]
    out = []

    def get(path: str, t: str | None = tok) -> bytes:
        status, headers, body = client.get(path, t)
        out.append((path, status, headers, body))
        return body

    for path in PAGES:
        get(path, None)
    session = json.loads(get("/api/session"))
    for item in session["items"]:
        for vol in session["volumes"][item] + [session["context"][item]]:
            get(f"/api/item/{vol}")
    get("/api/item/ffffffffffffffffffff")
    for i, item in enumerate(session["items"]):
        status, headers, body = client.pick(tok, item, session["volumes"][item][i % 2], 1 + i % 5, display=DISPLAY)
        out.append(("POST /api/answer", status, headers, body))
    get("/api/session")
    return out, session


def test_nothing_served_in_a_2afc_study_reveals_the_real_side(client_2afc: Client, study_2afc: Study) -> None:
    traffic, session = traffic_2afc(client_2afc, study_2afc, "alice")
    forbidden = set(MODELS) | set(CASES) | {REAL_DIR, *SYNTH_DIRS, SOURCE_DIR, "truth", "nii.gz"}
    forbidden |= {study_2afc.admin_token}
    forbidden |= {study_2afc.readers["bob"]["token"]}
    for v in [*study_2afc.volumes.values(), *study_2afc.contexts.values()]:
        forbidden |= {Path(v["source"]).name, str(Path(v["source"]).parent)}
    for what, _status, headers, body in traffic:
        text = body.decode("latin-1") + "\n" + "\n".join(f"{k}: {v}" for k, v in headers.items())
        for word in forbidden:
            assert word.lower() not in text.lower(), f"{word!r} leaked in {what}"
        assert "etag" not in headers and "last-modified" not in headers, what
        if headers.get("content-type") == "application/json":
            assert not re.search(r"real|synthetic|left|right|side", body.decode(), re.I), f"{what}: {body[:200]!r}"
    # the session names the sides only by random ids, in the stored (seeded, random) order
    for item in session["items"]:
        assert session["volumes"][item] == study_2afc.items[item]["volumes"]


def test_both_sides_are_identical_in_transport(client_2afc: Client, study_2afc: Study) -> None:
    tok = study_2afc.readers["bob"]["token"]
    shapes = Counter()
    for item in study_2afc.readers["bob"]["order"]:
        for vol in study_2afc.item_volumes(item) + [study_2afc.items[item]["context"]]:
            status, headers, body = client_2afc.get(f"/api/item/{vol}", tok)
            assert status == 200
            shapes[(len(body), tuple(sorted((k, v) for k, v in headers.items() if k != "date")))] += 1
    assert len(shapes) == 1, "volume responses differ in size or headers"


def test_real_side_does_not_follow_position_or_reader_order(study_2afc: Study) -> None:
    """The real one is not always left, and readers get the pairs in their own orders."""
    items = study_2afc.items.values()
    assert {it["volumes"].index(it["real"]) for it in items} == {0, 1}
    orders = [r["order"] for r in study_2afc.readers.values()]
    assert all(sorted(o) == sorted(study_2afc.items) for o in orders)


def test_views_are_recorded_per_pair_not_per_side(client_2afc: Client, study_2afc: Study) -> None:
    tok = study_2afc.readers["alice"]["token"]
    item = study_2afc.readers["alice"]["order"][0]
    for vol in study_2afc.item_volumes(item) + [study_2afc.items[item]["context"]]:
        assert client_2afc.get(f"/api/item/{vol}", tok)[0] == 200
    with sqlite3.connect(study_2afc.db_path) as con:
        assert con.execute("SELECT item FROM views").fetchall() == [(item,)]
    con.close()


@pytest.fixture()
def client_2afc(server_2afc: TuringServer) -> Client:
    return Client(server_2afc.url)
