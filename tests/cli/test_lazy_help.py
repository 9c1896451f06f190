"""``--help`` and argument errors of every console script import none of the heavy libraries (issue 15.10).

Each script runs in a fresh interpreter (``main(['--help'])``, then a bad flag) and the test checks
``sys.modules``: an import is what made ``autotrans_predict --help`` take 10-14 s and 1.1 GB. How long ``--help``
takes is measured by ``benchmarks/cli_help_time.py``, not asserted here (timings on shared machines flake).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "monai", "SimpleITK", "dynamic_network_architectures", "scipy", "skimage", "matplotlib",
         "nibabel", "pydicom", "sklearn", "batchgenerators")


def console_scripts() -> list[tuple[str, str, str]]:
    """``(script, module, function)`` for every console script in setup.py (read, not executed)."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONSOLE_SCRIPTS" for t in node.targets):
            entries = ast.literal_eval(node.value)
            out = []
            for entry in entries:
                name, target = (x.strip() for x in entry.split("="))
                module, func = target.split(":")
                out.append((name, module, func))
            return out
    raise AssertionError("setup.py has no CONSOLE_SCRIPTS list")


CODE = """
import json, sys
from {module} import {func} as main
codes = []
for argv in (["--help"], ["--no_such_flag_at_all"]):
    try:
        codes.append(main(argv))
    except SystemExit as e:
        codes.append(e.code)
print(json.dumps({{"codes": codes, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


@pytest.mark.parametrize("script,module,func", console_scripts(), ids=lambda v: v if "_" in str(v) else None)
def test_help_and_argument_errors_import_nothing_heavy(script: str, module: str, func: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CODE.format(module=module, func=func, heavy=HEAVY)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 2], (script, result, proc.stderr[-500:])
    assert result["heavy"] == [], f"{script} --help imports {', '.join(result['heavy'])}"


def test_predict_default_checkpoint_matches_inference() -> None:
    from autotrans.cli.predict import DEFAULT_CHECKPOINT
    from autotrans.inference.models import DEFAULT_CHECKPOINT as INFERENCE_DEFAULT

    assert DEFAULT_CHECKPOINT == INFERENCE_DEFAULT


def test_train_and_predict_accept_the_same_devices() -> None:
    from autotrans.cli.predict import build_parser as predict_parser
    from autotrans.cli.train import build_parser as train_parser
    from autotrans.utils.devices import DEVICES

    def choices(parser: object) -> tuple[str, ...]:
        action = next(a for a in parser._actions if "-device" in a.option_strings)  # type: ignore[attr-defined]
        return tuple(action.choices)

    assert choices(train_parser()) == choices(predict_parser()) == DEVICES == ("cpu", "cuda", "mps")
    args = predict_parser().parse_args(["-i", "in", "-o", "out", "-device", "mps"])
    assert args.device == "mps"
