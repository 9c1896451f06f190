"""3D global gamma index (Low et al. 1998) for comparing a dose recomputed on a synthetic CT with the reference.

Conventions: arrays are numpy (z, y, x) order and ``spacing_mm`` is given in the same order; both doses live on
the same grid. Normalisation is global (a percent of ``global_norm``, by default the reference maximum, like
pymedphys' ``local_gamma=False``); the low-dose cut-off applies to the reference dose only.

Search: for every reference voxel above the cut-off, the evaluated dose is trilinearly interpolated at offsets on
a cubic lattice of step ``dta_mm / interp_fraction`` within ``max_gamma * dta_mm`` (points outside the evaluated
grid are never used, no extrapolation), and gamma is the minimum of
``sqrt((dose difference / dose criterion)^2 + (distance / dta)^2)``; this matches pymedphys' shell search at
the same ``interp_fraction`` to a few hundredths of gamma (see tests/dose). Offsets are visited in shells of
growing distance, grouped by the evaluated-grid cell they fall in. A voxel leaves the search once the distance
term alone reaches its current gamma, and skips a group when the distance term plus a lower bound of the dose
term over the group's sub-box (a trilinear function's extremes on a box are at its vertices) cannot beat it.
Both bounds are exact, so pruning never changes the result; it makes passing voxels (found early) and offsets
far from the matching isodose cheap. Gamma values above ``max_gamma`` are reported as ``max_gamma``.
Memory: about 64 bytes per voxel of the bounding box of the evaluated region, plus ~50 MB of temporaries.
"""
from __future__ import annotations

import math

import numpy as np

from autotrans.errors import ConfigurationError

#: interpolated values per chunk (voxels x offsets): keeps the float64 temporaries at a few tens of MB
_CHUNK_ELEMENTS = 2_000_000
_EPS = 1e-9


def gamma_index(reference: np.ndarray, evaluated: np.ndarray, spacing_mm: tuple[float, float, float],
                dose_percent: float, dta_mm: float, cutoff_percent: float = 10.0,
                global_norm: float | None = None, max_gamma: float = 2.0, mask: np.ndarray | None = None,
                interp_fraction: int = 10) -> np.ndarray:
    """Gamma per voxel of ``reference``; NaN below the cut-off, outside ``mask`` (bool, reference grid).

    ``dose_percent`` and ``cutoff_percent`` are percent of ``global_norm`` (default: ``reference.max()``),
    ``dta_mm`` and ``spacing_mm`` (z, y, x) in mm. Values are capped at ``max_gamma`` (the search radius is
    ``max_gamma * dta_mm``, so larger values would not be exact anyway).
    """
    ref, ev, spacing, sel = _checked(reference, evaluated, spacing_mm, mask)
    if not (dose_percent > 0 and dta_mm > 0 and max_gamma > 0 and cutoff_percent >= 0):
        raise ConfigurationError("gamma criteria must be positive: dose_percent, dta_mm, max_gamma > 0, "
                                 "cutoff_percent >= 0")
    if int(interp_fraction) != interp_fraction or interp_fraction < 1:
        raise ConfigurationError(f"interp_fraction must be a positive integer, got {interp_fraction!r}")
    norm = float(ref.max()) if global_norm is None else float(global_norm)
    if not norm > 0:
        raise ConfigurationError(f"gamma normalisation dose must be > 0, got {norm:g}")
    dose_crit = dose_percent / 100.0 * norm
    compute = ref >= cutoff_percent / 100.0 * norm
    if sel is not None:
        compute &= sel
    gamma = np.full(ref.shape, np.nan)
    idx = np.flatnonzero(compute)
    if idx.size:
        gamma.ravel()[idx] = _search(ref, ev, spacing, idx, dose_crit, float(dta_mm), float(max_gamma),
                                     int(interp_fraction))
    return gamma


def gamma_pass_rate(reference: np.ndarray, evaluated: np.ndarray, spacing_mm: tuple[float, float, float],
                    dose_percent: float, dta_mm: float, cutoff_percent: float = 10.0,
                    global_norm: float | None = None, max_gamma: float = 2.0, mask: np.ndarray | None = None,
                    interp_fraction: int = 10) -> float:
    """Percent of evaluated voxels (above the cut-off, inside ``mask``) with gamma <= 1; NaN if there are none."""
    return pass_rate(gamma_index(reference, evaluated, spacing_mm, dose_percent, dta_mm, cutoff_percent,
                                 global_norm, max_gamma, mask, interp_fraction))


def pass_rate(gamma: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percent of non-NaN gamma values (within ``mask``) that are <= 1, so one gamma map serves several regions.

    NaN when no voxel was evaluated: an empty region has no pass rate, and 0 or 100 would both mislead.
    """
    values = gamma if mask is None else gamma[np.asarray(mask, dtype=bool)]
    values = values[~np.isnan(values)]
    return float(100.0 * np.count_nonzero(values <= 1.0) / values.size) if values.size else float("nan")


def _checked(reference: np.ndarray, evaluated: np.ndarray, spacing_mm: tuple[float, float, float],
             mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Validated float64 copies: a wrong shape or a NaN would otherwise give a silently wrong pass rate."""
    ref = np.asarray(reference, dtype=np.float64)
    ev = np.asarray(evaluated, dtype=np.float64)
    if ref.ndim != 3 or ref.shape != ev.shape:
        raise ConfigurationError(f"gamma needs two 3D doses on one grid, got shapes {ref.shape} and {ev.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(ev).all()):
        raise ConfigurationError("gamma doses must be finite (NaN or inf found)")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not (spacing > 0).all():
        raise ConfigurationError(f"spacing_mm must be three positive (z, y, x) values, got {spacing_mm!r}")
    sel = None
    if mask is not None:
        sel = np.asarray(mask)
        if sel.shape != ref.shape:
            raise ConfigurationError(f"gamma mask shape {sel.shape} differs from the dose shape {ref.shape}")
        sel = sel.astype(bool)
    return ref, ev, spacing, sel


def _lattice(step: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer lattice offsets (in units of ``step``) within ``radius``, sorted by distance, and their distances."""
    n = int(math.floor(radius / step + _EPS))
    k = np.arange(-n, n + 1)
    grid = np.stack(np.meshgrid(k, k, k, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = step * np.sqrt((grid.astype(np.float64) ** 2).sum(axis=1))
    keep = dist <= radius * (1 + _EPS)
    grid, dist = grid[keep], dist[keep]
    order = np.argsort(dist, kind="stable")
    return grid[order], dist[order]


def _search(ref: np.ndarray, ev: np.ndarray, spacing: np.ndarray, idx: np.ndarray, dose_crit: float,
            dta: float, max_gamma: float, interp_fraction: int) -> np.ndarray:
    """Minimum gamma over the offset lattice for the flat voxel indices ``idx`` (see the module docstring)."""
    shape = np.array(ref.shape)
    step = dta / interp_fraction
    lattice, dist = _lattice(step, max_gamma * dta)
    # offsets in voxel units; snap round-off so that on-grid offsets have exactly zero fraction
    vox = lattice * step / spacing
    snapped = np.round(vox)
    vox = np.where(np.abs(vox - snapped) < 1e-9, snapped, vox)
    base = np.floor(vox).astype(np.int64)
    frac = vox - base
    weights = _corner_weights(frac)  # (m, 8)
    edge_lo = -base  # a point is inside the grid iff coord + base >= 0 ...
    edge_hi = shape[None, :] - 1 - base - (frac > 0)  # ... and coord + base + (frac > 0) <= n - 1

    coords = np.stack(np.unravel_index(idx, ref.shape), axis=1).astype(np.int64)  # (n, 3)
    pad = np.ceil(max_gamma * dta / spacing + _EPS).astype(np.int64) + 1
    cells, origin, strides = _cell_table(ev, coords.min(axis=0) - pad, coords.max(axis=0) + pad)
    flat = ((coords - origin) * strides).sum(axis=1)
    cell_off = (base * strides).sum(axis=1)
    near_edge = ((coords < pad) | (coords >= shape - pad)).any(axis=1)
    ref_v = ref.ravel()[idx]
    # distance 0: the plain dose difference; capping at max_gamma makes every later test "can it beat the cap"
    best = np.minimum(np.abs(ev.ravel()[idx] - ref_v) / dose_crit, max_gamma)

    alive = np.arange(idx.size)
    for shell, group, r_min, vertex_w in _groups(dist, base, frac, step):
        if shell == 0:  # only the distance-0 point, done above
            continue
        alive = alive[best[alive] > (shell - 1e-6) * step / dta]  # no later point is nearer than this shell
        if not alive.size:
            break
        # the group's points lie in one cell, inside the sub-box spanned by their fractions; a trilinear
        # function's extremes on a box are at its vertices, which bounds the dose term of the whole group
        corner_vals = cells[flat[alive] + cell_off[group[0]]]  # (n, 8)
        vert_vals = corner_vals @ vertex_w
        rv = ref_v[alive]
        lb = np.maximum(np.maximum(vert_vals.min(axis=1) - rv, rv - vert_vals.max(axis=1)), 0.0) / dose_crit
        candidates = lb ** 2 + (r_min / dta) ** 2 < best[alive] ** 2
        active, corner_vals = alive[candidates], corner_vals[candidates]
        r2 = (dist[group] / dta) ** 2
        chunk = max(1, _CHUNK_ELEMENTS // group.size)
        for c0 in range(0, active.size, chunk):
            act = active[c0:c0 + chunk]
            g2 = corner_vals[c0:c0 + chunk] @ weights[group].T  # (n, g): a group's points share one cell
            g2 -= ref_v[act][:, None]
            g2 *= 1.0 / dose_crit
            np.square(g2, out=g2)
            g2 += r2
            edge = near_edge[act]
            if edge.any():
                ce = coords[act[edge]][:, None, :]
                ok = ((ce >= edge_lo[None, group]) & (ce <= edge_hi[None, group])).all(axis=2)
                g2[edge] = np.where(ok, g2[edge], np.inf)
            best[act] = np.minimum(best[act], np.sqrt(g2.min(axis=1)))
    return best


_CORNERS = np.array([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.int64)  # (8, 3)


def _corner_weights(frac: np.ndarray) -> np.ndarray:
    """Trilinear weights (m, 8) of points at fractional cell positions ``frac`` (m, 3), in ``_CORNERS`` order."""
    return np.prod(np.where(_CORNERS[None] == 1, frac[:, None, :], 1.0 - frac[:, None, :]), axis=2)


def _cell_table(ev: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corner values (cells, 8) of every cell whose origin is in the box [lo, hi] (grid indices, may overhang).

    One row gather then serves a whole group of offsets; values beyond the grid are 0 and never used (the edge
    test discards those points). Returns the table, the box origin and the row strides of the box.
    """
    shape = np.array(ev.shape)
    before, after = np.maximum(-lo, 0), np.maximum(hi + 1 - (shape - 1), 0)
    padded = np.pad(ev, [(int(b), int(a)) for b, a in zip(before, after)])
    start = lo + before
    extent = hi - lo + 1
    table = np.empty((*extent, 8))
    for k, corner in enumerate(_CORNERS):
        sl = tuple(slice(int(s + c), int(s + c + n)) for s, c, n in zip(start, corner, extent))
        table[..., k] = padded[sl]
    strides = np.array([extent[1] * extent[2], extent[2], 1], dtype=np.int64)
    return table.reshape(-1, 8), lo, strides


def _groups(dist: np.ndarray, base: np.ndarray, frac: np.ndarray,
            step: float) -> list[tuple[int, np.ndarray, float, np.ndarray]]:
    """Offsets grouped by (distance shell of width ``step``, cell), in increasing shell order.

    Each group: shell index, offset indices, smallest distance, and the (8, 8) trilinear weights (corners x
    vertices) of the sub-box its fractions span, so a group's bound costs one small matrix product per voxel.
    (Splitting cells further into sub-boxes pruned more but measured slower: per-group overhead dominates.)
    """
    shell = np.floor(dist / step + 1e-6).astype(np.int64)
    _, inverse = np.unique(np.column_stack([shell, base]), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.lexsort((inverse, shell))
    starts = np.flatnonzero(np.r_[True, inverse[order][1:] != inverse[order][:-1]])
    ends = np.r_[starts[1:], order.size]
    sub_lo = np.minimum.reduceat(frac[order], starts, axis=0)
    sub_hi = np.maximum.reduceat(frac[order], starts, axis=0)
    r_min = np.minimum.reduceat(dist[order], starts)
    # vertex v of group k takes sub_hi on the axes where _CORNERS[v] is 1, sub_lo elsewhere
    vertices = np.where(_CORNERS[None] == 1, sub_hi[:, None, :], sub_lo[:, None, :])  # (k, 8, 3)
    vertex_w = _corner_weights(vertices.reshape(-1, 3)).reshape(-1, 8, 8).transpose(0, 2, 1)  # (k, corner, v)
    return [(int(shell[order[a]]), order[a:b], float(r), w)
            for a, b, r, w in zip(starts, ends, r_min, vertex_w)]
