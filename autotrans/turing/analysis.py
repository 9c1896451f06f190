"""Statistics of a visual Turing test: can readers tell synthetic volumes from real ones?

Accuracy near 50% means readers cannot distinguish the classes. "Positive" is a synthetic volume, so
sensitivity is the share of synthetic volumes spotted and specificity the share of real volumes called
real. Confidence intervals are exact (Clopper-Pearson), the test against chance is the exact two-sided
binomial test, agreement between readers is Fleiss' kappa on the items every reader of a study answered.
The binomial test and kappa are implemented here (small, exact, checked against scipy and textbook
values in the tests) so the numbers do not depend on optional packages. The MRMC ROC analysis
(Obuchowski-Rockette, Hillis ddf) and the display-settings analysis are added by
:mod:`autotrans.turing.analysis_mrmc` (statistics in :mod:`autotrans.turing.mrmc`).
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta

from autotrans.errors import AutotransError
from autotrans.turing.store import AnswerStore
from autotrans.turing.study import Study

logger = logging.getLogger(__name__)

CATEGORIES = ("real", "synthetic")


def expected_accuracy(confidence: int) -> float:
    """Accuracy a calibrated reader would reach at a confidence level: 1 = guess (50%) .. 5 = certain."""
    return 0.5 + 0.125 * (confidence - 1)


class AnalysisError(AutotransError):
    """The answers cannot be analysed as asked."""


@dataclass(frozen=True)
class Rating:
    study: str
    reader: str
    item: str
    truth: str
    model: str
    modality: str
    answer: str
    confidence: int
    time_on_item_s: float
    comment: str
    display: dict[str, Any] | None = None  # the reader's display settings for this answer (colour map, ...)

    @property
    def correct(self) -> bool:
        return self.answer == self.truth


def load_ratings(study_dirs: Sequence[str | Path]) -> list[Rating]:
    """Join every stored answer with its item's ground truth (one row per reader and item).

    A study given twice (spelled differently: ``st``, ``st/``, ``./st``, a symlink, or a copy of the
    folder) is counted once: studies are told apart by the id stored in ``study.json``.
    """
    ratings: list[Rating] = []
    names: set[str] = set()
    seen: dict[str, tuple[Path, int]] = {}
    for folder in study_dirs:
        study = Study.load(folder)
        answers = AnswerStore(study.db_path).all_answers()
        first = seen.get(study.identity)
        if first is not None:
            same = first[0] == Path(folder).resolve()
            logger.info("%s is %s %s: its answers are counted once", folder,
                        "the same folder as" if same else "a copy of the study", first[0])
            if not same and len(answers) != first[1]:
                logger.warning("%s holds %d answers, %s %d: only the first is analysed; merge the copies or "
                               "analyse them one at a time", folder, len(answers), first[0], first[1])
            continue
        seen[study.identity] = (Path(folder).resolve(), len(answers))
        name = Path(folder).resolve().name
        while name in names:
            name += "_"
        names.add(name)
        for a in answers:
            item = study.items.get(a["item"])
            if item is None or a["reader"] not in study.readers:
                logger.warning("%s: skipping an answer for an unknown item or reader", folder)
                continue
            ratings.append(Rating(
                study=name, reader=a["reader"], item=a["item"], truth=item["truth"],
                model=item["model"] or "real", modality=study.modality, answer=a["answer"],
                confidence=int(a["confidence"]), time_on_item_s=float(a["time_on_item_s"]), comment=a["comment"],
                display=a.get("display") if isinstance(a.get("display"), dict) else None,
            ))
    return ratings


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact binomial confidence interval for ``k`` successes in ``n`` trials."""
    if n == 0:
        return (math.nan, math.nan)
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def _log_pmf(i: int, n: int, p: float) -> float:
    if p in (0.0, 1.0):
        return 0.0 if (i == 0 and p == 0.0) or (i == n and p == 1.0) else -math.inf
    return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: sum of the probabilities of outcomes no likelier than ``k``."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    log_d = _log_pmf(k, n, p)
    limit = log_d + math.log1p(1e-7)  # relative tolerance for ties, as in scipy.stats.binomtest
    total = sum(math.exp(lp) for lp in (_log_pmf(i, n, p) for i in range(n + 1)) if lp <= limit)
    return min(1.0, total)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa for a (items x categories) table of how many raters chose each category.

    Every item needs the same number (>= 2) of ratings. Returns NaN when chance agreement is perfect
    (all ratings in one category), where kappa is undefined.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.shape[0] < 1:
        raise AnalysisError("Fleiss' kappa needs a non-empty items x categories table")
    n = counts.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise AnalysisError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    n_raters = n[0]
    p_item = ((counts ** 2).sum(axis=1) - n_raters) / (n_raters * (n_raters - 1))
    p_cat = counts.sum(axis=0) / counts.sum()
    p_bar, p_e = p_item.mean(), (p_cat ** 2).sum()
    if math.isclose(p_e, 1.0):
        return math.nan
    return float((p_bar - p_e) / (1 - p_e))


def proportion(k: int, n: int) -> dict[str, float]:
    lo, hi = clopper_pearson(k, n)
    return {"k": k, "n": n, "value": k / n if n else math.nan, "ci_low": lo, "ci_high": hi}


def summarize_group(ratings: Sequence[Rating]) -> dict[str, Any]:
    """Accuracy (with CI and p-value against 50%), sensitivity, specificity, confidence and time."""
    n = len(ratings)
    correct = sum(r.correct for r in ratings)
    synth = [r for r in ratings if r.truth == "synthetic"]
    real = [r for r in ratings if r.truth == "real"]
    return {
        "n": n,
        "accuracy": proportion(correct, n),
        "p_value": binomial_test(correct, n) if n else math.nan,
        "sensitivity": proportion(sum(r.correct for r in synth), len(synth)),
        "specificity": proportion(sum(r.correct for r in real), len(real)),
        "mean_confidence": float(np.mean([r.confidence for r in ratings])) if n else math.nan,
        "median_time_s": float(np.median([r.time_on_item_s for r in ratings])) if n else math.nan,
    }


def kappa_table(ratings: Iterable[Rating]) -> dict[str, Any]:
    """Fleiss' kappa per study on the items answered by all of that study's readers (and pooled if the
    number of readers is the same in every study)."""
    by_study: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_study[r.study].append(r)
    per_study = {}
    rows_by_raters: dict[int, list[list[int]]] = defaultdict(list)
    for study, rs in sorted(by_study.items()):
        readers = {r.reader for r in rs}
        by_item: dict[str, list[str]] = defaultdict(list)
        for r in rs:
            by_item[r.item].append(r.answer)
        table = [[a.count(c) for c in CATEGORIES] for a in by_item.values() if len(a) == len(readers)]
        if len(readers) < 2 or not table:
            per_study[study] = {"kappa": math.nan, "n_items": len(table), "n_readers": len(readers)}
            continue
        per_study[study] = {"kappa": fleiss_kappa(np.array(table)), "n_items": len(table), "n_readers": len(readers)}
        rows_by_raters[len(readers)].extend(table)
    overall = {"kappa": math.nan, "n_items": 0, "n_readers": 0}
    if len(rows_by_raters) == 1:
        n_r, table = next(iter(rows_by_raters.items()))
        overall = {"kappa": fleiss_kappa(np.array(table)), "n_items": len(table), "n_readers": n_r}
    return {"overall": overall, "per_study": per_study}


def calibration(ratings: Sequence[Rating]) -> dict[str, Any]:
    """Accuracy per confidence level against the accuracy that level promises; ECE = weighted gap."""
    levels = []
    gap = 0.0
    for c in range(1, 6):
        rs = [r for r in ratings if r.confidence == c]
        acc = proportion(sum(r.correct for r in rs), len(rs))
        levels.append({"confidence": c, "expected_accuracy": expected_accuracy(c), **acc})
        if rs:
            gap += len(rs) * abs(acc["value"] - expected_accuracy(c))
    right = [r.confidence for r in ratings if r.correct]
    wrong = [r.confidence for r in ratings if not r.correct]
    return {
        "levels": levels,
        "ece": gap / len(ratings) if ratings else math.nan,
        "mean_confidence_correct": float(np.mean(right)) if right else math.nan,
        "mean_confidence_wrong": float(np.mean(wrong)) if wrong else math.nan,
    }


def analyze(ratings: Sequence[Rating]) -> dict[str, Any]:
    """All statistics of the report as one JSON-friendly dictionary."""
    from autotrans.turing.analysis_mrmc import display_section, mrmc_section  # it imports this module

    if not ratings:
        raise AnalysisError("no answers to analyse yet: readers have not submitted anything")
    multi = len({r.study for r in ratings}) > 1
    readers: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        readers[f"{r.study}/{r.reader}" if multi else r.reader].append(r)
    models: dict[str, list[Rating]] = defaultdict(list)
    modalities: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        models[r.model].append(r)
        modalities[r.modality].append(r)
    by_model = []
    for model in sorted(models, key=lambda m: (m != "real", m)):
        rs = models[model]
        k = sum(r.correct for r in rs)
        by_model.append({"model": model, "truth": rs[0].truth, "n": len(rs),
                         "items": len({(r.study, r.item) for r in rs}),
                         "accuracy": proportion(k, len(rs)), "p_value": binomial_test(k, len(rs)),
                         "called_synthetic": proportion(sum(r.answer == "synthetic" for r in rs), len(rs))})
    return {
        "n_ratings": len(ratings),
        "n_readers": len(readers),
        "n_items": len({(r.study, r.item) for r in ratings}),
        "overall": summarize_group(ratings),
        "per_reader": [{"reader": name, **summarize_group(rs)} for name, rs in sorted(readers.items())],
        "by_model": by_model,
        "by_modality": [{"modality": m, **summarize_group(rs)} for m, rs in sorted(modalities.items())],
        "calibration": calibration(ratings),
        "kappa": kappa_table(ratings),
        "mrmc": mrmc_section(ratings),
        "display_settings": display_section(ratings),
    }


def analyze_studies(study_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Analyse one or more study folders and write the HTML/CSV/PNG report to ``out_dir``."""
    from autotrans.turing.analysis_2afc import analyze_2afc_dirs, is_2afc_request
    from autotrans.turing.report import write_report

    if is_2afc_request(study_dirs):  # forced choice: proportion correct (= AUC) per reader and pooled
        return analyze_2afc_dirs(study_dirs, out_dir)
    ratings = load_ratings(study_dirs)
    summary = analyze(ratings)
    write_report(summary, [asdict(r) | {"correct": r.correct} for r in ratings], Path(out_dir))
    return summary
