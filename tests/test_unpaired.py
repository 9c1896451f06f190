"""paired: false (CycleGAN data): source-only and target-only cases plan and preprocess."""
from __future__ import annotations

import json
from pathlib import Path

from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
from autotrans.preprocessing.store import PreprocessedCase
from autotrans.utils.files import load_json


def test_unpaired_dataset(brain_demo: Path, roots) -> None:
    for case in ("MS-patient07", "MS-patient19"):
        (brain_demo / "targetsTr" / f"{case}.nii.gz").unlink()
    for case in ("TCGA-DU-7294", "TCGA-FG-6692"):
        (brain_demo / "imagesTr" / f"{case}_0000.nii.gz").unlink()
    dj = json.loads((brain_demo / "dataset.json").read_text())
    dj["paired"] = False
    (brain_demo / "dataset.json").write_text(json.dumps(dj))
    assert main_plan_and_preprocess(["-d", "11", "-np", "1"]) == 0
    pre = roots["autotrans_preprocessed"] / "Dataset011_DemoT2toFLAIR"
    fp = load_json(pre / "dataset_fingerprint.json")
    assert fp["target_intensity_properties"] is not None and fp["foreground_intensity_properties_per_channel"]["0"]
    data = pre / "autotransPlans_3d_fullres"
    src_only = PreprocessedCase(data, "MS-patient07")
    tgt_only = PreprocessedCase(data, "TCGA-DU-7294")
    assert src_only.has("source") and not src_only.has("target")
    assert tgt_only.has("target") and not tgt_only.has("source")
    t = tgt_only.load("target")
    assert t.shape[0] == 1 and -1.0 <= t.min() and t.max() <= 1.0
    assert tgt_only.properties["target_normalization_params"]["high"] > 0
    assert len(load_json(pre / "splits_final.json")) == 4
