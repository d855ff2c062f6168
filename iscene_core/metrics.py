"""Evaluation metrics on voxels and point sets: voxel IoU, Chamfer distance, F-score.

Conventions (state them in any table that reports these numbers):
- ``voxel_iou``: |A & B| / |A | B| on occupied voxels; two empty sets count as IoU 1.
- ``chamfer_distance``: mean over both directions of the nearest-neighbour *distance* (L2, not
  squared), i.e. ``(mean_p d(p, Q) + mean_q d(q, P)) / 2``; ``squared=True`` gives the squared form
  some papers report.
- ``f_score``: harmonic mean of precision (fraction of predicted points within ``tau`` of the
  reference) and recall (reference points within ``tau`` of the prediction).
Nearest neighbours come from ``scipy.spatial.cKDTree``.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree

__all__ = ["voxel_iou", "chamfer_distance", "f_score", "point_metrics", "sample_surface"]


def _as_index_set(coords: np.ndarray) -> np.ndarray:
    """(M, 3) integer coords -> sorted unique int64 keys (exact for coords in [0, 2^20))."""
    c = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    if len(c) and (c.min() < 0 or c.max() >= 1 << 20):
        raise ValueError("voxel coords must lie in [0, 2^20)")
    return np.unique((c[:, 0] << 40) | (c[:, 1] << 20) | c[:, 2])


def voxel_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two occupancies: dense grids of equal shape, or (M, 3) voxel index arrays."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2 and a.shape[1] == 3 and b.ndim == 2 and b.shape[1] == 3:
        ka, kb = _as_index_set(a), _as_index_set(b)
        inter = len(np.intersect1d(ka, kb, assume_unique=True))
        union = len(ka) + len(kb) - inter
        return inter / union if union else 1.0
    if a.shape != b.shape:
        raise ValueError(f"voxel_iou: dense grids of different shapes {a.shape} and {b.shape}")
    a, b = a.astype(bool), b.astype(bool)
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 1.0


def _nn_dists(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(q, dtype=np.float64).reshape(-1, 3)
    return cKDTree(q).query(p)[0], cKDTree(p).query(q)[0]


def chamfer_distance(p: np.ndarray, q: np.ndarray, *, squared: bool = False) -> float:
    """Symmetric Chamfer distance (see module doc); ``inf`` when either set is empty."""
    if len(p) == 0 or len(q) == 0:
        return float("inf")
    d_pq, d_qp = _nn_dists(p, q)
    if squared:
        d_pq, d_qp = d_pq**2, d_qp**2
    return 0.5 * float(d_pq.mean() + d_qp.mean())


def f_score(p: np.ndarray, q: np.ndarray, tau: float) -> float:
    """F-score at distance ``tau`` of prediction ``p`` against reference ``q``; 0 when either is empty."""
    return point_metrics(p, q, tau)["f_score"]


def point_metrics(p: np.ndarray, q: np.ndarray, tau: float) -> dict[str, float]:
    """Chamfer, precision, recall and F-score from one pair of KD-tree queries."""
    if len(p) == 0 or len(q) == 0:
        return {"chamfer": float("inf"), "precision": 0.0, "recall": 0.0, "f_score": 0.0}
    d_pq, d_qp = _nn_dists(p, q)
    precision, recall = float((d_pq <= tau).mean()), float((d_qp <= tau).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer": 0.5 * float(d_pq.mean() + d_qp.mean()), "precision": precision, "recall": recall, "f_score": f}


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> np.ndarray:
    """``n`` area-uniform points on a mesh surface, reproducible from ``seed`` (trimesh's sampler)."""
    if len(mesh.faces) == 0:
        return np.zeros((0, 3))
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(points, dtype=np.float64)
