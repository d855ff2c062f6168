"""Surface voxelisation at 64^3: a voxel is occupied where a triangle passes through it.

Exact triangle/box overlap by the separating-axis theorem (Akenine-Moeller's 13 axes). Boxes are
closed (a triangle touching a voxel's face marks it), like upstream TRELLIS's conservative open3d
voxelisation.

The fast path is one compiled loop over triangles (numba; the numpy form of the same scan
conversion was 2-5x slower and open3d 1-4x slower, bench/bench_voxelize.py): each triangle is
scan-converted along its normal's dominant axis w, the plane bounds the (at most a few) voxels of
each column of its bounding box it can cross, voxels already occupied are skipped, and only the
rest get the full test. Work follows the triangle's area instead of its bounding-box volume.

The 9 "box axis a x edge" axes split into three groups by a: group a only involves the two other
coordinates (it is the 2-D test of the projection along a). Every path evaluates a given axis on a
given (triangle, voxel) pair with the same floating-point operations (``_sat_pairs`` and its
per-pair twin ``_overlaps``), so the fast path returns exactly what testing every bounding-box voxel returns (``method="plain"``), ties
included; tests/test_voxelize.py checks both against an independent reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["voxelize_surface"]

_CHUNK = 1 << 18  # (triangle, voxel) pairs the plain path tests per batch: bounds memory


@dataclass
class _Tris:
    """Per-triangle arrays in grid units (voxel (i,j,k) spans [i, i+1] per axis), struct of arrays.

    ``p[a][m]``: coordinate a of vertex m; ``e[a][k]``: coordinate a of edge k = v[k+1] - v[k];
    ``n[a]``: normal e0 x e1; ``rn``: plane radius.
    """

    p: list
    e: list
    n: list
    rn: np.ndarray
    lo: list
    span: list

    @staticmethod
    def build(g: list, fc: list, R: int) -> "_Tris":
        p = [[g[a][fc[m]] for m in range(3)] for a in range(3)]
        mn = [np.minimum(np.minimum(pa[0], pa[1]), pa[2]) for pa in p]
        mx = [np.maximum(np.maximum(pa[0], pa[1]), pa[2]) for pa in p]
        keep = (mx[0] >= 0) & (mx[1] >= 0) & (mx[2] >= 0) & (mn[0] <= R) & (mn[1] <= R) & (mn[2] <= R)
        if not keep.all():  # triangles whose box misses the cube
            p = [[c[keep] for c in pa] for pa in p]
            mn, mx = [c[keep] for c in mn], [c[keep] for c in mx]
        # closed voxel i = [i, i+1] touches [a, b] iff ceil(a) - 1 <= i <= floor(b)
        lo = [np.minimum(np.maximum(np.ceil(c) - 1, 0), R - 1).astype(np.int64) for c in mn]
        hi = [np.minimum(np.maximum(np.floor(c), 0), R - 1).astype(np.int64) for c in mx]
        e = [[pa[(k + 1) % 3] - pa[k] for k in range(3)] for pa in p]
        # n[a] = e0[a+1] e1[a+2] - e0[a+2] e1[a+1] (np.cross's formula)
        n = [e[(a + 1) % 3][0] * e[(a + 2) % 3][1] - e[(a + 2) % 3][0] * e[(a + 1) % 3][1] for a in range(3)]
        an = [np.abs(c) for c in n]
        return _Tris(p, e, n, 0.5 * ((an[0] + an[1]) + an[2]), lo, [h - l + 1 for h, l in zip(hi, lo)])


def _sat_pairs(T: _Tris, f: np.ndarray, c: list) -> np.ndarray:
    """Boolean per pair: does triangle ``f[i]`` overlap the closed unit box centred at ``c[a][i]``?

    The plane, then the 9 edge axes (the box axes are the caller's bounding-box range). Pairs are
    dropped as soon as a test separates them. ``_overlaps`` does the same arithmetic per pair.
    """
    alive = np.arange(len(f))
    fa = f

    def centred(a, m):
        return T.p[a][m][fa] - c[a][alive]

    # signed distance of vertex 0 to the box centre along n, summed in axis order
    val = (T.n[0][fa] * centred(0, 0) + T.n[1][fa] * centred(1, 0)) + T.n[2][fa] * centred(2, 0)
    keep = np.abs(val) <= T.rn[fa]
    alive, fa = alive[keep], fa[keep]
    for a in range(3):
        b, cc = (a + 1) % 3, (a + 2) % 3
        B = [centred(b, m) for m in range(3)]
        C = [centred(cc, m) for m in range(3)]
        ok = None
        for k in range(3):
            # projection c*e_b - b*e_c of edge k (vertex k) and of the opposite vertex (k+2);
            # the third vertex projects like vertex k in exact arithmetic
            eb, ec = T.e[b][k][fa], T.e[cc][k][fa]
            r = 0.5 * (np.abs(eb) + np.abs(ec))
            m2 = (k + 2) % 3
            pa = C[k] * eb - B[k] * ec
            pb = C[m2] * eb - B[m2] * ec
            o = (np.minimum(pa, pb) <= r) & (np.maximum(pa, pb) >= -r)
            ok = o if ok is None else ok & o
        alive, fa = alive[ok], fa[ok]
    hit = np.zeros(len(f), dtype=bool)
    hit[alive] = True
    return hit


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, rank) of every item when owner i has counts[i] items."""
    owner = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, rank


def _mark_plain(occ: np.ndarray, T: _Tris, sel: np.ndarray, R: int) -> None:
    """Reference path: every voxel of every bounding box, all tests."""
    f, r = _expand(T.span[0][sel] * T.span[1][sel] * T.span[2][sel])
    f = sel[f]
    s1, s2 = T.span[1][f], T.span[2][f]
    idx = [T.lo[0][f] + r // (s1 * s2), T.lo[1][f] + (r // s2) % s1, T.lo[2][f] + r % s2]
    hit = _sat_pairs(T, f, [x + 0.5 for x in idx])
    occ[((idx[0] * R + idx[1]) * R + idx[2])[hit]] = True


def _batches(cost: np.ndarray):
    """Index arrays of consecutive items whose summed cost stays near _CHUNK (memory bound)."""
    if len(cost) == 0:
        return
    cum = np.cumsum(cost)
    starts = np.searchsorted(cum, np.arange(0, cum[-1], _CHUNK), side="right")
    bounds = sorted(set(starts.tolist()) | {0, len(cost)})
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield np.arange(a, b)


@numba.njit(cache=True, nogil=True)
def _overlaps(P, E, N, rn, c0, c1, c2):  # pragma: no cover - compiled
    """``_sat_pairs`` for one (triangle, voxel centre) pair, with the same operations."""
    c = (c0, c1, c2)
    val = (N[0] * (P[0, 0] - c0) + N[1] * (P[1, 0] - c1)) + N[2] * (P[2, 0] - c2)
    if not abs(val) <= rn:
        return False
    for a in range(3):
        b, cc = (a + 1) % 3, (a + 2) % 3
        for k in range(3):
            eb, ec = E[b, k], E[cc, k]
            r = 0.5 * (abs(eb) + abs(ec))
            m2 = (k + 2) % 3
            pa = (P[cc, k] - c[cc]) * eb - (P[b, k] - c[b]) * ec
            pb = (P[cc, m2] - c[cc]) * eb - (P[b, m2] - c[b]) * ec
            if not (min(pa, pb) <= r and max(pa, pb) >= -r):
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _voxel_kernel(g, faces, R, occ):  # pragma: no cover - compiled
    """Marks in ``occ`` (R^3, flat) every voxel a triangle overlaps, scan-converting each triangle
    along its normal's dominant axis w: per column (u, v) of its bounding box the plane bounds the
    w range (widened a hair), and only those voxels get the full test."""
    P = np.empty((3, 3))
    E = np.empty((3, 3))
    N = np.empty(3)
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    idx = np.empty(3, np.int64)
    for t in range(faces.shape[0]):
        for a in range(3):
            for m in range(3):
                P[a, m] = g[faces[t, m], a]
        miss = False
        for a in range(3):
            mn = min(P[a, 0], P[a, 1], P[a, 2])
            mx = max(P[a, 0], P[a, 1], P[a, 2])
            if mx < 0 or mn > R:
                miss = True
            # closed voxel i = [i, i+1] touches [mn, mx] iff ceil(mn) - 1 <= i <= floor(mx)
            lo[a] = min(max(np.ceil(mn) - 1, 0), R - 1)
            hi[a] = min(max(np.floor(mx), 0), R - 1)
        if miss:
            continue
        for a in range(3):
            for k in range(3):
                E[a, k] = P[a, (k + 1) % 3] - P[a, k]
        for a in range(3):
            b, cc = (a + 1) % 3, (a + 2) % 3
            N[a] = E[b, 0] * E[cc, 1] - E[cc, 0] * E[b, 1]
        rn = 0.5 * ((abs(N[0]) + abs(N[1])) + abs(N[2]))
        an0, an1, an2 = abs(N[0]), abs(N[1]), abs(N[2])
        w = 0 if an0 >= max(an1, an2) else (1 if an1 >= an2 else 2)
        u, v = (w + 1) % 3, (w + 2) % 3
        for iu in range(lo[u], hi[u] + 1):
            cu = iu + 0.5
            for iv in range(lo[v], hi[v] + 1):
                cv = iv + 0.5
                k0, k1 = lo[w], hi[w]
                if N[w] != 0.0:
                    # |base + n_w (p_w - c_w)| <= rn solved for c_w; the exact test follows
                    base = N[u] * (P[u, 0] - cu) + N[v] * (P[v, 0] - cv)
                    s1 = (-rn - base) / N[w]
                    s2 = (rn - base) / N[w]
                    zw = P[w, 0] - 0.5
                    k0 = max(k0, int(np.ceil(zw - max(s1, s2) - 1e-6)))
                    k1 = min(k1, int(np.floor(zw - min(s1, s2) + 1e-6)))
                idx[u], idx[v] = iu, iv
                for kw in range(k0, k1 + 1):
                    idx[w] = kw
                    lin = (idx[0] * R + idx[1]) * R + idx[2]
                    if occ[lin]:
                        continue
                    c = (idx[0] + 0.5, idx[1] + 0.5, idx[2] + 0.5)
                    if _overlaps(P, E, N, rn, c[0], c[1], c[2]):
                        occ[lin] = True


def voxelize_surface(vertices: np.ndarray, faces: np.ndarray, resolution: int = 64, *, method: str = "fast") -> np.ndarray:
    """Occupied voxels ``(M, 3) uint8`` (sorted, unique) of a surface inside ``[-0.5, 0.5]^3``.

    Voxel ``(i, j, k)`` is the closed box ``[i/R - 0.5, (i+1)/R - 0.5]`` (per axis); geometry outside
    the cube is ignored (voxels are clipped to the grid). ``method="plain"`` tests every voxel of
    every triangle's bounding box with the same arithmetic: slow, kept as the reference the fast
    path must equal.
    """
    if method not in ("fast", "plain"):
        raise ValueError(f"voxelize_surface: method must be 'fast' or 'plain', got {method!r}")
    R = int(resolution)
    if not 1 <= R <= 256:
        raise ValueError(f"voxelize_surface: resolution must be in 1..256 (uint8 output), got {resolution}")
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"voxelize_surface: vertices must be (N, 3), got {v.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError("voxelize_surface: face index out of range")
    if not np.all(np.isfinite(v)):
        raise ValueError("voxelize_surface: non-finite vertices")
    occ = np.zeros(R ** 3, dtype=bool)
    if method == "fast":
        _voxel_kernel(np.ascontiguousarray((v + 0.5) * R), np.ascontiguousarray(f), R, occ)  # grid units per vertex
    else:
        g = [(np.ascontiguousarray(v[:, a]) + 0.5) * R for a in range(3)]
        T = _Tris.build(g, [np.ascontiguousarray(f[:, m]) for m in range(3)], R)
        for idx in _batches(T.span[0] * T.span[1] * T.span[2]):
            _mark_plain(occ, T, idx, R)
    lin = np.nonzero(occ)[0]
    return np.stack([lin // (R * R), (lin // R) % R, lin % R], axis=1).astype(np.uint8)
