"""Evaluation metrics on voxels and point sets: voxel IoU, Chamfer distance, F-score."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def voxel_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two occupancies, dense bool grids of equal shape or (M, 3) voxel index arrays."""
    if a.ndim == 2 and a.shape[1] == 3:
        sa, sb = {tuple(x) for x in np.asarray(a).tolist()}, {tuple(x) for x in np.asarray(b).tolist()}
        union = len(sa | sb)
        return len(sa & sb) / union if union else 1.0
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def chamfer_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance: (mean_p d(p, Q) + mean_q d(q, P)) / 2."""
    if len(p) == 0 or len(q) == 0:
        return float("inf")
    return 0.5 * float(cKDTree(q).query(p)[0].mean() + cKDTree(p).query(q)[0].mean())


def f_score(p: np.ndarray, q: np.ndarray, tau: float) -> float:
    """Harmonic mean of precision (p near q) and recall (q near p) at distance threshold ``tau``."""
    if len(p) == 0 or len(q) == 0:
        return 0.0
    precision = float((cKDTree(q).query(p)[0] <= tau).mean())
    recall = float((cKDTree(p).query(q)[0] <= tau).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
