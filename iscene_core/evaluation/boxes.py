"""IoU-B (IoU of axis-aligned bounding boxes) and per-instance voxel IoU.

IoU-B is the continuous box IoU, i.e. the limit of the voxel IoU of the two boxes that the paper
names; boxes come from mesh vertices (exact), not from sampled points (docs/EVAL.md, section 2).
Voxel IoU voxelises a predicted instance's surface in the bench's view grid with the same
voxeliser the data engine uses (``datagen.voxelize``), so GT and prediction are voxelised alike.
"""

from __future__ import annotations

import numpy as np

from iscene_core import space
from iscene_core.metrics import voxel_iou

__all__ = ["aabb", "box_iou", "voxelize_in_grid", "voxel_iou"]


def aabb(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) corners of the axis-aligned box of (N, 3) points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(p) == 0:
        raise ValueError("aabb of an empty point set")
    return p.min(axis=0), p.max(axis=0)


def box_iou(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Volume IoU of two boxes given as (lo, hi); 0 when both are degenerate."""
    (alo, ahi), (blo, bhi) = a, b
    inter = np.prod(np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0.0, None))
    va, vb = np.prod(np.clip(ahi - alo, 0, None)), np.prod(np.clip(bhi - blo, 0, None))
    union = va + vb - inter
    return float(inter / union) if union > 0 else 0.0


def voxelize_in_grid(vertices_view: np.ndarray, faces: np.ndarray, view_to_grid: np.ndarray, resolution: int) -> np.ndarray:
    """Surface voxels (M, 3) uint8 of a mesh given in the view frame, in the bench's view grid.

    Triangles wholly outside the grid cube are dropped; the rest are voxelised and clipped to it
    (a prediction may reach outside the GT's cube).
    """
    from datagen.voxelize import voxelize_surface

    v = space.transform_points(view_to_grid, vertices_view)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return np.zeros((0, 3), np.uint8)
    tri = v[f]
    inside = np.all(tri.max(axis=1) >= -0.5, axis=1) & np.all(tri.min(axis=1) < 0.5, axis=1)
    f = f[inside]
    if len(f) == 0:
        return np.zeros((0, 3), np.uint8)
    used, inv = np.unique(f, return_inverse=True)
    coords = np.asarray(voxelize_surface(np.clip(v[used], -0.5, 0.5 - 1e-9), inv.reshape(-1, 3), resolution))
    return coords.astype(np.uint8).reshape(-1, 3)
