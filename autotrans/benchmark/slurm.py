"""``--emit_slurm DIR``: the grid as SLURM jobs instead of running it here.

Jobs chained by dependencies (``submit.sh`` submits them): ``prepare`` (plan + preprocess every dataset,
once), one array per shared stage the grid's models build on, in dependency order (``autoencoder_tasks.txt``
with latent models, then ``ldm_prior_tasks.txt`` with ``ldm_controlnet``; one task per dataset x fold, so the
models of one fold never race to train their shared stage), the main array (one line of ``tasks.txt`` per
dataset x model x fold), and ``report`` (after the array, whatever finished). Every task
command is the resumable ``autotrans_benchmark`` itself, so a resubmitted array redoes only what is missing.
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path

from autotrans.benchmark.grid import GridSpec
from autotrans.errors import ConfigurationError
from autotrans.results import model_folder_name
from autotrans.utils.files import atomic_path, ensure_writable_dir

logger = logging.getLogger(__name__)

HEADER = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time={time}
{gres}# Edit the resources (partition, account, time) for your cluster. The three roots autotrans_raw,
# autotrans_preprocessed and autotrans_results must be exported when submitting (sbatch passes the environment).
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-$(dirname "$0")}}"
"""

ARRAY_BODY = """TASKS="${TASKS:-tasks.txt}"
CMD=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$TASKS")
echo "task ${SLURM_ARRAY_TASK_ID}: $CMD"
eval "$CMD"
"""

SUBMIT = """#!/bin/bash
# Submit the benchmark: prepare -> [shared stages, in order] -> grid array -> report. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p logs
prep=$(sbatch --parsable prepare.sbatch)
dep=$prep
for stage in {stages}; do
    if [ -s ${{stage}}_tasks.txt ]; then
        n=$(grep -c . ${{stage}}_tasks.txt)
        dep=$(sbatch --parsable --dependency=afterok:$dep --array=1-$n --export=ALL,TASKS=${{stage}}_tasks.txt \\
              --job-name=autotrans_$stage array.sbatch)
    fi
done
n=$(grep -c . tasks.txt)
main=$(sbatch --parsable --dependency=afterok:$dep --array=1-$n --export=ALL,TASKS=tasks.txt array.sbatch)
sbatch --dependency=afterany:$main report.sbatch
echo "submitted: prepare $prep, grid array $main ($n tasks), report after the array"
"""


def _write(path: Path, text: str, executable: bool = False) -> None:
    with atomic_path(path, suffix=path.suffix or ".txt") as tmp:
        tmp.write_text(text, encoding="utf-8")
    if executable:
        path.chmod(path.stat().st_mode | 0o111)


def emit_slurm(grid: GridSpec, out_dir: str | Path, common: list[str], train_flags: list[str]) -> Path:
    """Write ``tasks.txt``, ``autoencoder_tasks.txt`` (and a task file per further shared stage), ``array.sbatch``, ``prepare.sbatch``, ``report.sbatch``
    and ``submit.sh`` into ``out_dir``; runs nothing. ``common`` are the benchmark flags every command repeats
    (configuration, plans, budget, device, output), ``train_flags`` the budget flags for ``autotrans_train``."""
    from autotrans.families.base import get_family

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"--emit_slurm {out}: exists and is not a folder")
    ensure_writable_dir(out, "--emit_slurm")  # read-only: one line, before any file of the set is replaced
    q = shlex.join
    all_d = [x for d in grid.datasets for x in ("-d", d)]
    every = ["-m", *grid.models, "-f", *grid.folds]
    lines = [q(["autotrans_benchmark", "-d", t.dataset, "-m", t.model, "-f", t.fold, *common, "--no_report"])
             for t in grid.tasks()]
    # the shared stages the models build on, in dependency order (autoencoder, then the ControlNet's prior);
    # autoencoder_tasks.txt is written (empty) without latent models too
    from autotrans.baselines import is_baseline

    stages = list(dict.fromkeys(dep for m in grid.models if not is_baseline(m)
                                for dep, _ in get_family(m).dependencies))

    def stage_task(stage: str, d: str, f: str) -> str:
        final = f"$autotrans_results/{d}/{model_folder_name(stage, grid.plans_name, grid.configuration)}" \
                f"/fold_{f}/checkpoint_final.pth"
        return f'test -f "{final}" || ' + q(["autotrans_train", d, grid.configuration, stage, f, "-p",
                                             grid.plans_name, "--c", *train_flags])

    stage_files = {"autoencoder": [], **{stage: [stage_task(stage, d, f) for d in grid.datasets for f in grid.folds]
                                         for stage in stages}}
    gres = "#SBATCH --gres=gpu:1\n" if grid.device == "cuda" else ""
    _write(out / "tasks.txt", "\n".join(lines) + "\n")
    for stage, stage_tasks in stage_files.items():
        _write(out / f"{stage}_tasks.txt", "".join(f"{line}\n" for line in stage_tasks))
    _write(out / "array.sbatch", HEADER.format(name="autotrans_grid", time="48:00:00", gres=gres) + ARRAY_BODY)
    _write(out / "prepare.sbatch", HEADER.format(name="autotrans_prepare", time="12:00:00", gres="")
           + q(["autotrans_benchmark", *all_d, *every, *common, "--prepare_only"]) + "\n")
    _write(out / "report.sbatch", HEADER.format(name="autotrans_report", time="02:00:00", gres="")
           + q(["autotrans_benchmark", *all_d, *every, *common, "--report_only"]) + "\n")
    _write(out / "submit.sh", SUBMIT.format(stages=" ".join(stage_files)), executable=True)
    n_stage = sum(len(t) for t in stage_files.values())
    logger.info("SLURM: %d grid task(s)%s written to %s; submit with %s", len(lines),
                f" and {n_stage} shared-stage task(s)" if n_stage else "", out, out / "submit.sh")
    return out / "submit.sh"
