"""Point-set alignment before scoring: rigid ICP (plain, robust), FilterReg-like, scale + rigid, none.

Every function returns a 4x4 matrix ``T`` with ``aligned = T @ source`` (homogeneous), so the same
transform can be applied to meshes, boxes and points. What each peer does is in docs/EVAL.md; the
implementations here are ours (scipy KD-trees and closed-form Kabsch/Umeyama fits).

``align`` adds one guard to all of them: an alignment is kept only if it does not increase the
symmetric squared Chamfer distance on the points it was fitted on. Identical inputs therefore stay
exactly identical (GT against itself scores CD 0 under every protocol).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["METHODS", "apply", "kabsch", "icp", "filterreg_like", "scale_rigid", "align"]

METHODS = ("none", "icp", "robust_icp", "filterreg", "scale_rigid")


def apply(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ T[:3, :3].T + T[:3, 3]


def kabsch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = False) -> np.ndarray:
    """Least-squares rotation (+ uniform scale when asked, Umeyama) and translation src -> dst."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, sv, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    corr = np.diag([1.0, 1.0, d])
    rot = u @ corr @ vt
    scale = 1.0
    if with_scale:
        var = float((w * (a * a).sum(axis=1)).sum())
        scale = float((sv * np.diag(corr)).sum() / var) if var > 0 else 1.0
    T = np.eye(4)
    T[:3, :3] = scale * rot
    T[:3, 3] = mu_d - scale * rot @ mu_s
    return T


def _subsample(points: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or len(points) <= n:
        return points
    return points[rng.choice(len(points), n, replace=False)]


def icp(src: np.ndarray, dst: np.ndarray, iters: int = 50, tol: float = 1e-5, robust: bool = False,
        center_init: bool = False, max_points: int | None = None, seed: int = 0, with_scale: bool = False,
        init: np.ndarray | None = None) -> np.ndarray:
    """Point-to-point ICP (nearest neighbours in ``dst``, Kabsch each step).

    Stops when the mean correspondence distance changes by less than ``tol`` (MIDI's criterion).
    ``robust``: correspondences farther than 3x the median distance are dropped each step.
    ``center_init``: start by matching centroids (widens the basin for a translated prediction).
    """
    rng = np.random.default_rng(seed)
    s = _subsample(np.asarray(src, np.float64), max_points, rng)
    tree = cKDTree(np.asarray(dst, np.float64))
    T = np.eye(4) if init is None else np.asarray(init, np.float64).copy()
    if center_init:
        shift = np.eye(4)
        shift[:3, 3] = np.asarray(dst).mean(axis=0) - apply(T, s).mean(axis=0)
        T = shift @ T
    prev = np.inf
    for _ in range(iters):
        cur = apply(T, s)
        dist, idx = tree.query(cur)
        keep = dist <= 3.0 * np.median(dist) + 1e-12 if robust else np.ones(len(dist), bool)
        if keep.sum() < 3:
            break
        step = kabsch(cur[keep], tree.data[idx[keep]], with_scale=with_scale)
        T = step @ T
        err = float(dist[keep].mean())
        if abs(prev - err) < tol:
            break
        prev = err
    return T


def filterreg_like(src: np.ndarray, dst: np.ndarray, iters: int = 200, tol: float = 1e-4, max_points: int = 1000,
                   seed: int = 0) -> np.ndarray:
    """Rigid point-to-point FilterReg as SceneGen calls it (update_sigma2=False, sigma2=None).

    sigma^2 is fixed at probreg's initial value sum ||x - y||^2 / (3 N M) (closed form below).
    E-step: Gaussian-weighted mean of the target at each source point (exact and dense on at most
    ``max_points`` random points per side; probreg filters on a permutohedral lattice). M-step:
    Kabsch to those means with uniform weights; stop when the objective changes by < ``tol``.
    """
    rng = np.random.default_rng(seed)
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mx, my = src.mean(axis=0), dst.mean(axis=0)
    sigma2 = (float(((src - mx) ** 2).sum(axis=1).mean() + ((dst - my) ** 2).sum(axis=1).mean()) + float(((mx - my) ** 2).sum())) / 3.0
    sigma2 = max(sigma2, 1e-4)
    s, y = _subsample(src, max_points, rng), _subsample(dst, max_points, rng)
    T = np.eye(4)
    q_prev = None
    for _ in range(iters):
        x = apply(T, s)
        d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
        k = np.exp(-np.maximum(d2, 0.0) / (2.0 * sigma2))
        m0 = k.sum(axis=1)
        ok = m0 > 0
        if ok.sum() < 3:
            break
        target = (k[ok] @ y) / m0[ok, None]
        step = kabsch(x[ok], target)
        T = step @ T
        q = float(np.linalg.norm(x[ok] - target, axis=1).sum() / np.sqrt(sigma2))
        if q_prev is not None and abs(q - q_prev) < tol:
            break
        q_prev = q
    return T


def _obb_volume(points: np.ndarray) -> float:
    import trimesh

    try:
        _, extents = trimesh.bounds.oriented_bounds(points)
        return float(np.prod(extents))
    except Exception:  # degenerate (flat) point sets: fall back to the axis-aligned box
        return float(np.prod(np.ptp(points, axis=0)))


def _yaw(theta: float, up: np.ndarray) -> np.ndarray:
    u = up / np.linalg.norm(up)
    kx = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def scale_rigid(src: np.ndarray, dst: np.ndarray, restarts: int = 20, iters: int = 30, up=(0.0, 0.0, 1.0),
                max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """DepR's scale + rigid fit: OBB-volume scale, centroid match, then a 7-DoF fit from random yaws.

    Each restart rotates the pre-aligned source about ``up`` (through the target centroid) and runs a
    similarity ICP; the restart with the lowest symmetric squared Chamfer distance wins.
    """
    rng = np.random.default_rng(seed)
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    v_src, v_dst = _obb_volume(src), _obb_volume(dst)
    s0 = (v_dst / v_src) ** (1.0 / 3.0) if v_src > 0 and v_dst > 0 else 1.0
    T0 = np.diag([s0, s0, s0, 1.0])
    T0[:3, 3] = dst.mean(axis=0) - s0 * src.mean(axis=0)
    s = _subsample(src, max_points, rng)
    y = _subsample(dst, max_points, rng)
    c = dst.mean(axis=0)
    best, best_cd = T0, _sym_sq_chamfer(apply(T0, s), y)
    for r in range(restarts):
        R = np.eye(4)
        R[:3, :3] = _yaw(float(rng.uniform(0, 2 * np.pi)) if r else 0.0, np.asarray(up, np.float64))
        R[:3, 3] = c - R[:3, :3] @ c
        T = icp(s, y, iters=iters, tol=1e-7, with_scale=True, init=R @ T0)
        cd = _sym_sq_chamfer(apply(T, s), y)
        if cd < best_cd:
            best, best_cd = T, cd
    return best


def _sym_sq_chamfer(p: np.ndarray, q: np.ndarray) -> float:
    a = cKDTree(q).query(p)[0]
    b = cKDTree(p).query(q)[0]
    return float((a**2).mean() + (b**2).mean())


def align(method: str, src: np.ndarray, dst: np.ndarray, seed: int = 0, **kw) -> np.ndarray:
    """Dispatch by name (``METHODS``), with the no-worse guard described in the module doc."""
    src = np.asarray(src, np.float64).reshape(-1, 3)
    dst = np.asarray(dst, np.float64).reshape(-1, 3)
    if method == "none" or len(src) < 3 or len(dst) < 3:
        return np.eye(4)
    if method == "icp":
        T = icp(src, dst, seed=seed, **kw)
    elif method == "robust_icp":
        T = icp(src, dst, robust=True, center_init=True, seed=seed, **kw)
    elif method == "filterreg":
        T = filterreg_like(src, dst, seed=seed, **kw)
    elif method == "scale_rigid":
        T = scale_rigid(src, dst, seed=seed, **kw)
    else:
        raise ValueError(f"unknown alignment {method!r}; expected one of {', '.join(METHODS)}")
    rng = np.random.default_rng(seed)
    s, y = _subsample(src, 20000, rng), _subsample(dst, 20000, rng)
    if _sym_sq_chamfer(apply(T, s), y) > _sym_sq_chamfer(s, y):
        return np.eye(4)
    return T
