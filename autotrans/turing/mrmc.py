"""Multi-reader multi-case (MRMC) ROC analysis: Obuchowski-Rockette with Hillis' degrees of freedom.

Radiology reader studies are analysed so that conclusions hold for new readers *and* new cases: readers and
cases are both random factors. This module is plain numpy/scipy and implements

- the empirical (trapezoidal = Mann-Whitney) ROC AUC of every reader in every "modality" (here: a source
  model of synthetic volumes, or an imaging modality; truth is always synthetic (positive) versus real);
- the covariance of those AUCs over cases, by the jackknife (default; Hillis 2007) or DeLong et al. (1988);
- the Obuchowski-Rockette (1995) analysis with the Hillis (2007, 2008) denominator degrees of freedom, random
  readers and random cases: per modality the reader-averaged AUC with its 95% CI and the t-test of
  AUC = 0.5; across modalities the F test of equal AUCs and every pairwise difference with its CI;
- the OR variance components (for sizing a future study) and :func:`design_table`, the expected 95% CI
  half-width for a chosen number of readers and cases (Hillis, Obuchowski & Berbaum 2011);
- :func:`two_afc_summary` for two-alternative forced-choice studies, whose proportion correct *is* the AUC.

Formulas, with I modalities, J readers, theta_ij the AUC of reader j in modality i (Hillis, Obuchowski,
Schartz & Berbaum 2005, Stat Med 24:1579; Hillis 2007, Stat Med 26:596; Hillis, Berbaum & Metz 2008, Acad
Radiol 15:647); they match the printed output of the Iowa OR-DBM MRMC 2.51 software, see the tests:

    MS(T)  = J/(I-1) sum_i (theta_i. - theta..)^2
    MS(R)  = I/(J-1) sum_j (theta_.j - theta..)^2
    MS(TR) = 1/((I-1)(J-1)) sum_ij (theta_ij - theta_i. - theta_.j + theta..)^2
    Var  = mean variance of an AUC over cases;  Cov1 = mean covariance, same reader, different modalities;
    Cov2 = different readers, same modality;     Cov3 = different readers, different modalities
    test of equal AUCs:  F = MS(T) / [MS(TR) + J max(Cov2 - Cov3, 0)],  on (I-1, ddf_H) degrees of freedom,
                         ddf_H = [MS(TR) + J max(Cov2 - Cov3, 0)]^2 / {MS(TR)^2 / [(I-1)(J-1)]}
    difference i - i':   SE = sqrt(2/J [MS(TR) + J max(Cov2 - Cov3, 0)]), t on ddf_H
    one modality i:      SE = sqrt(1/J [MS_i(R) + J max(Cov2_i, 0)]),
                         df = [MS_i(R) + J max(Cov2_i, 0)]^2 / {MS_i(R)^2 / (J-1)}   (Hillis 2007, "ddf_H_single")
    components:          var(TR) = MS(TR) - Var + Cov1 + Cov2 - Cov3
                         var(R)  = [MS(R) - var(TR) - Var - (I-1)Cov1 + Cov2 + (I-1)Cov3] / I
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

RATING_LEVELS = 10


def synthetic_rating(answer: str, confidence: int) -> int:
    """The real/synthetic call plus its 1-5 confidence as one 10-level rating of "synthetic-ness".

    ``real`` with confidence 5 (certain) -> 1, real 4 -> 2, ..., real 1 (guess) -> 5, synthetic 1 (guess) -> 6,
    ..., synthetic 5 (certain) -> 10. Higher means "more surely synthetic"; the AUC of this rating for
    synthetic (positive) against real volumes is 0.5 when readers cannot tell them apart and 1 when they
    always can, with confidence ordering the calls (the ROC has nine operating points).
    """
    if answer not in ("real", "synthetic") or not 1 <= int(confidence) <= 5:
        raise ValueError(f"need answer real|synthetic and confidence 1-5, got {answer!r}, {confidence!r}")
    return 6 - int(confidence) if answer == "real" else 5 + int(confidence)


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney kernel: 1 if the positive case is rated higher, 1/2 for a tie (n_pos x n_neg)."""
    d = pos[:, None] - neg[None, :]
    return (d > 0) + 0.5 * (d == 0)


def empirical_auc(neg: Sequence[float], pos: Sequence[float]) -> float:
    """Trapezoidal area under the empirical ROC = Mann-Whitney U / (n_pos n_neg)."""
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    if not len(neg) or not len(pos):
        return math.nan
    return float(_psi(pos, neg).mean())


def auc_jackknife(scores: np.ndarray, truth: np.ndarray,
                  members: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reader AUCs and their leave-one-case-out values.

    ``scores``: (I modalities, J readers, K cases), higher = more likely positive; ``truth``: (K,) bool,
    True = positive (synthetic); ``members``: optional (I, K) bool, the cases that count in each modality
    (a model's synthetic volumes and the shared real ones); by default every case counts everywhere.
    Returns ``theta`` (I, J) and ``theta_minus`` (I, J, K): the AUC without case k (equal to ``theta``
    where case k does not belong to the modality).
    """
    scores = np.asarray(scores, float)
    n_mod, n_read, n_case = scores.shape
    truth = np.asarray(truth, bool)
    members = np.ones((n_mod, n_case), bool) if members is None else np.asarray(members, bool)
    theta = np.empty((n_mod, n_read))
    minus = np.empty((n_mod, n_read, n_case))
    for i in range(n_mod):
        p_idx = np.flatnonzero(members[i] & truth)
        n_idx = np.flatnonzero(members[i] & ~truth)
        n1, n0 = len(p_idx), len(n_idx)
        if n1 < 2 or n0 < 2:
            raise ValueError(f"modality {i}: need at least 2 positive and 2 negative cases, got {n1} and {n0}")
        for j in range(n_read):
            psi = _psi(scores[i, j, p_idx], scores[i, j, n_idx])
            total = psi.sum()
            theta[i, j] = total / (n1 * n0)
            minus[i, j, :] = theta[i, j]
            minus[i, j, p_idx] = (total - psi.sum(axis=1)) / ((n1 - 1) * n0)
            minus[i, j, n_idx] = (total - psi.sum(axis=0)) / (n1 * (n0 - 1))
    return theta, minus


def jackknife_covariance(theta_minus: np.ndarray) -> np.ndarray:
    """(I*J x I*J) covariance of the reader AUCs over cases: (K-1)/K sum_k (t_k - t_.)(t_k - t_.)^T."""
    n_mod, n_read, n_case = theta_minus.shape
    t = theta_minus.reshape(n_mod * n_read, n_case)
    d = t - t.mean(axis=1, keepdims=True)
    return (n_case - 1) / n_case * (d @ d.T)


def delong_covariance(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """DeLong, DeLong & Clarke-Pearson (1988) covariance of the reader AUCs (every case in every modality)."""
    scores = np.asarray(scores, float)
    n_mod, n_read, _ = scores.shape
    truth = np.asarray(truth, bool)
    pos, neg = scores[..., truth], scores[..., ~truth]
    n1, n0 = pos.shape[-1], neg.shape[-1]
    v10 = np.empty((n_mod * n_read, n1))
    v01 = np.empty((n_mod * n_read, n0))
    for idx, (i, j) in enumerate(np.ndindex(n_mod, n_read)):
        psi = _psi(pos[i, j], neg[i, j])
        v10[idx], v01[idx] = psi.mean(axis=1), psi.mean(axis=0)
    return np.cov(v10) / n1 + np.cov(v01) / n0


def _covariance_averages(cov: np.ndarray, n_mod: int, n_read: int) -> dict[str, float]:
    """Var, Cov1 (same reader, other modality), Cov2 (other reader, same modality), Cov3 (both differ)."""
    c = cov.reshape(n_mod, n_read, n_mod, n_read)
    same_m = np.eye(n_mod, dtype=bool)[:, None, :, None]
    same_r = np.eye(n_read, dtype=bool)[None, :, None, :]

    def avg(mask: np.ndarray) -> float:
        m = np.broadcast_to(mask, c.shape)
        return float(c[m].mean()) if m.any() else math.nan

    return {"var": avg(same_m & same_r), "cov1": avg(~same_m & same_r),
            "cov2": avg(same_m & ~same_r), "cov3": avg(~same_m & ~same_r)}


def _t_ci(est: float, se: float, df: float, alpha: float) -> tuple[float, float]:
    if not math.isfinite(se):
        return (math.nan, math.nan)
    q = float(stats.t.ppf(1 - alpha / 2, df) if math.isfinite(df) else stats.norm.ppf(1 - alpha / 2))
    return (est - q * se, est + q * se)


def _t_p(t: float, df: float) -> float:
    if math.isnan(t):
        return math.nan
    return float(2 * (stats.t.sf(abs(t), df) if math.isfinite(df) else stats.norm.sf(abs(t))))


def single_modality(theta_i: np.ndarray, cov_i: np.ndarray, alpha: float = 0.05, null: float = 0.5) -> dict[str, Any]:
    """Reader-averaged AUC of one modality: SE, Hillis df, CI and the two-sided t-test of AUC = ``null``.

    ``theta_i``: (J,) reader AUCs; ``cov_i``: (J x J) their covariance over cases.
    """
    theta_i = np.asarray(theta_i, float)
    n_read = len(theta_i)
    mean = float(theta_i.mean())
    ms_r = float(theta_i.var(ddof=1)) if n_read > 1 else math.nan
    cv = _covariance_averages(np.asarray(cov_i, float), 1, n_read)
    cov2 = cv["cov2"]
    den = ms_r + n_read * max(cov2, 0.0)
    se = math.sqrt(den / n_read) if den >= 0 else math.nan
    df = den ** 2 / (ms_r ** 2 / (n_read - 1)) if ms_r > 0 else math.inf
    t = (mean - null) / se if se > 0 else (math.inf * np.sign(mean - null) if mean != null else math.nan)
    lo, hi = _t_ci(mean, se, df, alpha)
    return {"auc": mean, "se": se, "df": df, "ci_low": lo, "ci_high": hi, "t": float(t),
            "p_value": _t_p(float(t), df), "null": null, "ms_r": ms_r, "var": cv["var"], "cov2": cov2,
            "var_reader": ms_r - cv["var"] + cov2}


def or_analysis(theta: np.ndarray, cov: np.ndarray, modalities: Sequence[str] | None = None,
                readers: Sequence[str] | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """Obuchowski-Rockette analysis, random readers and random cases, Hillis ddf (formulas: module doc).

    ``theta``: (I, J) reader AUCs; ``cov``: (I*J x I*J) covariance over cases in the order of
    ``theta.ravel()`` (from :func:`jackknife_covariance` or :func:`delong_covariance`).
    """
    theta = np.asarray(theta, float)
    n_mod, n_read = theta.shape
    if n_read < 2:
        raise ValueError("the OR analysis with random readers needs at least 2 readers")
    modalities = list(modalities) if modalities is not None else [str(i) for i in range(n_mod)]
    readers = list(readers) if readers is not None else [str(j) for j in range(n_read)]
    cov = np.asarray(cov, float)
    c4 = cov.reshape(n_mod, n_read, n_mod, n_read)
    out: dict[str, Any] = {
        "modalities": modalities, "readers": readers, "n_readers": n_read,
        "reader_auc": {m: {r: float(theta[i, j]) for j, r in enumerate(readers)} for i, m in enumerate(modalities)},
        "per_modality": [{"modality": m, **single_modality(theta[i], c4[i, :, i, :], alpha)}
                         for i, m in enumerate(modalities)],
    }
    cv = _covariance_averages(cov, n_mod, n_read)
    grand = theta.mean()
    m_i, m_j = theta.mean(axis=1), theta.mean(axis=0)
    ms_r = n_mod / (n_read - 1) * float(((m_j - grand) ** 2).sum())
    comp: dict[str, Any] = {"var_error": cv["var"], "cov2": cv["cov2"], "ms_r": ms_r}
    if n_mod >= 2:
        ms_t = n_read / (n_mod - 1) * float(((m_i - grand) ** 2).sum())
        resid = theta - m_i[:, None] - m_j[None, :] + grand
        ms_tr = float((resid ** 2).sum()) / ((n_mod - 1) * (n_read - 1))
        den = ms_tr + n_read * max(cv["cov2"] - cv["cov3"], 0.0)
        ddf = den ** 2 / (ms_tr ** 2 / ((n_mod - 1) * (n_read - 1))) if ms_tr > 0 else math.inf
        f = ms_t / den if den > 0 else (math.inf if ms_t > 0 else math.nan)
        p = float(stats.f.sf(f, n_mod - 1, ddf) if math.isfinite(ddf) else stats.chi2.sf(f * (n_mod - 1), n_mod - 1))
        se = math.sqrt(2 / n_read * den)
        diffs = []
        for a in range(n_mod):
            for b in range(a + 1, n_mod):
                d = float(m_i[a] - m_i[b])
                t = d / se if se > 0 else math.nan
                lo, hi = _t_ci(d, se, ddf, alpha)
                diffs.append({"a": modalities[a], "b": modalities[b], "difference": d, "se": se, "df": ddf,
                              "t": t, "p_value": _t_p(t, ddf), "ci_low": lo, "ci_high": hi})
        var_tr = ms_tr - cv["var"] + cv["cov1"] + cv["cov2"] - cv["cov3"]
        var_r = (ms_r - var_tr - cv["var"] - (n_mod - 1) * cv["cov1"] + cv["cov2"] + (n_mod - 1) * cv["cov3"]) / n_mod
        comp |= {"ms_t": ms_t, "ms_tr": ms_tr, "cov1": cv["cov1"], "cov3": cv["cov3"], "var_r": var_r, "var_tr": var_tr}
        out["equal_auc_test"] = {"f": f, "df1": n_mod - 1, "ddf": ddf, "p_value": p, "error_term": den}
        out["differences"] = diffs
    else:
        comp["var_reader"] = ms_r - cv["var"] + cv["cov2"]
    out["components"] = comp
    return out


def mrmc_roc(scores: np.ndarray, truth: np.ndarray, members: np.ndarray | None = None,
             modalities: Sequence[str] | None = None, readers: Sequence[str] | None = None,
             covariance: str = "jackknife", alpha: float = 0.05) -> dict[str, Any]:
    """Reader AUCs from ratings and the full OR analysis (see :func:`auc_jackknife` for the arguments).

    ``covariance``: ``"jackknife"`` (default, as OR-DBM MRMC and RJafroc) or ``"delong"`` (every case in
    every modality only).
    """
    scores = np.asarray(scores, float)
    theta, minus = auc_jackknife(scores, truth, members)
    if covariance == "jackknife":
        cov = jackknife_covariance(minus)
    elif covariance == "delong":
        if members is not None and not np.all(members):
            raise ValueError("DeLong covariance here needs every case in every modality; use the jackknife")
        cov = delong_covariance(scores, truth)
    else:
        raise ValueError(f"covariance must be jackknife or delong, got {covariance!r}")
    res = or_analysis(theta, cov, modalities, readers, alpha)
    res["covariance_method"] = covariance
    res["n_cases"] = int(scores.shape[2])
    res["n_positive"] = int(np.asarray(truth, bool).sum())
    return res


def planning_components(result: Mapping[str, Any]) -> dict[str, float]:
    """OR components for :func:`design_table` from an :func:`or_analysis` / :func:`mrmc_roc` result."""
    c = result["components"]
    pm = result["per_modality"]
    out = {"n_cases": float(result.get("n_cases", math.nan)),
           "var_reader": float(np.mean([p["var_reader"] for p in pm])),
           "var_error": float(np.mean([p["var"] for p in pm])), "cov2": float(np.mean([p["cov2"] for p in pm]))}
    if "var_tr" in c:
        out |= {"var_tr": c["var_tr"], "var_error_all": c["var_error"], "cov1": c["cov1"],
                "cov2_all": c["cov2"], "cov3": c["cov3"]}
    return out


def design_table(components: Mapping[str, float], readers: Iterable[int] = (3, 5, 10, 20),
                 cases: Iterable[int] = (50, 100, 200), alpha: float = 0.05) -> list[dict[str, Any]]:
    """Expected 95% CI half-widths for a study with r readers and c cases, from OR variance components.

    ``components`` (as :func:`planning_components` gives them): ``var_reader`` (between-reader variance of
    AUCs in one modality, sigma^2_R + sigma^2_TR), ``var_error`` and ``cov2`` (error variance and
    different-reader covariance of an AUC over cases, estimated with ``n_cases`` cases), and optionally
    ``var_tr``, ``var_error_all``, ``cov1``, ``cov2_all``, ``cov3`` for differences between modalities.
    Following Hillis, Obuchowski & Berbaum (2011, Acad Radiol 18:129) the error variance and covariances
    scale with 1/c (same real/synthetic mix) and negative variance estimates are set to 0. For one modality

        EMS(R) = var_reader + Var_c - Cov2_c,   SE = sqrt([EMS(R) + r max(Cov2_c, 0)] / r),
        df = [EMS(R) + r max(Cov2_c, 0)]^2 / [EMS(R)^2 / (r-1)],   half-width = t_{0.975, df} SE;

    for the difference of two modalities EMS(TR) = var_tr + Var_c - Cov1_c - Cov2_c + Cov3_c,
    SE = sqrt(2/r [EMS(TR) + r max(Cov2_c - Cov3_c, 0)]), df = [...]^2 / [EMS(TR)^2 / (r-1)].
    """
    c0 = float(components["n_cases"])
    readers, cases = list(readers), list(cases)
    if min(readers) < 2 or min(cases) < 2:
        raise ValueError("a design needs at least 2 readers and 2 cases")
    rows = []
    for r in readers:
        for c in cases:
            s = c0 / c
            var_r = max(components["var_reader"], 0.0)
            v, c2 = components["var_error"] * s, components["cov2"] * s
            ems = var_r + v - c2
            den = ems + r * max(c2, 0.0)
            se = math.sqrt(den / r)
            df = den ** 2 / (ems ** 2 / (r - 1)) if ems > 0 else math.inf
            row: dict[str, Any] = {"readers": r, "cases": c, "se_auc": se, "df_auc": df,
                                   "half_width_auc": _t_ci(0.0, se, df, alpha)[1]}
            if "var_tr" in components:
                ve, c1, c2a, c3 = (components[k] * s for k in ("var_error_all", "cov1", "cov2_all", "cov3"))
                ems_tr = max(components["var_tr"], 0.0) + ve - c1 - c2a + c3
                den_d = ems_tr + r * max(c2a - c3, 0.0)
                se_d = math.sqrt(2 / r * den_d)
                df_d = den_d ** 2 / (ems_tr ** 2 / (r - 1)) if ems_tr > 0 else math.inf
                row |= {"se_difference": se_d, "df_difference": df_d,
                        "half_width_difference": _t_ci(0.0, se_d, df_d, alpha)[1]}
            rows.append(row)
    return rows


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def two_afc_summary(records: Iterable[Mapping[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """Two-alternative forced choice: proportion correct (= the AUC) per reader and pooled.

    ``records``: one mapping per answer with keys ``reader``, ``item`` (or ``case``) and ``correct`` (bool:
    the reader picked the real volume). In 2AFC the proportion correct equals the area under the ROC curve
    (Green & Swets 1966), so 0.5 = readers cannot tell synthetic from real.

    - per reader: k/n, the exact Clopper-Pearson CI and the exact two-sided binomial test of 0.5;
    - pooled: the reader-averaged proportion correct with an Obuchowski-Rockette single-modality CI
      (random readers *and* random items, Hillis 2007 df) on the items every reader answered; each item's
      0/1 score is a reader's "AUC" on that item, so the jackknife covariance over items is the plain
      covariance of the 0/1 scores divided by the number of items. Also the simple pooled k/n with its
      Clopper-Pearson CI, which treats answers as independent (too narrow when readers share items).
    """
    by_reader: dict[str, dict[str, float]] = defaultdict(dict)
    for rec in records:
        item = rec.get("item", rec.get("case"))
        by_reader[str(rec["reader"])][str(item)] = float(bool(rec["correct"]))
    per_reader = []
    for reader, items in sorted(by_reader.items()):
        k, n = int(sum(items.values())), len(items)
        lo, hi = clopper_pearson(k, n, alpha)
        per_reader.append({"reader": reader, "k": k, "n": n, "proportion_correct": k / n if n else math.nan,
                           "ci_low": lo, "ci_high": hi,
                           "p_value": float(stats.binomtest(k, n).pvalue) if n else math.nan})
    k_all = sum(p["k"] for p in per_reader)
    n_all = sum(p["n"] for p in per_reader)
    lo, hi = clopper_pearson(k_all, n_all, alpha)
    out: dict[str, Any] = {
        "per_reader": per_reader,
        "pooled_naive": {"k": k_all, "n": n_all, "proportion_correct": k_all / n_all if n_all else math.nan,
                         "ci_low": lo, "ci_high": hi},
        "method": "Obuchowski-Rockette single-modality analysis of the readers' proportions correct, "
                  "jackknife covariance over items, Hillis (2007) df; random readers and random items",
    }
    common = sorted(set.intersection(*(set(v) for v in by_reader.values()))) if by_reader else []
    if len(by_reader) < 2 or len(common) < 2:
        out["pooled"] = None
        out["pooled_reason"] = (f"needs at least 2 readers who answered at least 2 common items "
                                f"(have {len(by_reader)} readers, {len(common)} common items)")
        return out
    readers = sorted(by_reader)
    x = np.array([[by_reader[r][i] for i in common] for r in readers])  # (J, K)
    cov = np.atleast_2d(np.cov(x)) / x.shape[1]  # the jackknife covariance of means is exactly s^2 / n
    res = single_modality(x.mean(axis=1), cov, alpha)
    out["pooled"] = {"proportion_correct": res["auc"], "se": res["se"], "df": res["df"], "ci_low": res["ci_low"],
                     "ci_high": res["ci_high"], "t": res["t"], "p_value": res["p_value"], "n_readers": len(readers),
                     "n_items": len(common)}
    return out
