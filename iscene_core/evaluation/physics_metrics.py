"""Two physical-plausibility metrics none of the peers reports: interpenetration and floating.

Both work on solid occupancy in the bench's 64^3 view grid: an instance's surface voxels with the
enclosed holes filled (``scipy.ndimage.binary_fill_holes``), on the un-aligned prediction.

- interpenetration of instance i = |V_i & union_{j != i} V_j| / |V_i|;
- instance i floats when no voxel of another instance lies within one voxel below any voxel of it
  (below = along gravity, the world -Z seen from the bench camera) and its lowest voxel is more
  than one voxel above the floor = the lowest voxel of the whole predicted scene.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["solid", "interpenetration", "floating", "physics_scores"]


def solid(coords: np.ndarray, resolution: int) -> np.ndarray:
    """Dense bool occupancy of surface voxels with enclosed cavities filled."""
    dense = np.zeros((resolution,) * 3, dtype=bool)
    c = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    if len(c):
        dense[c[:, 0], c[:, 1], c[:, 2]] = True
    return ndimage.binary_fill_holes(dense)


def interpenetration(solids: dict[int, np.ndarray]) -> dict[int, float]:
    """Per instance: share of its voxels that another instance also occupies (0 for an empty one)."""
    if not solids:
        return {}
    count = np.zeros(next(iter(solids.values())).shape, dtype=np.int32)
    for s in solids.values():
        count += s
    out = {}
    for i, s in solids.items():
        n = int(s.sum())
        out[i] = float(((count - s) > 0)[s].sum() / n) if n else 0.0
    return out


def floating(solids: dict[int, np.ndarray], up_grid: np.ndarray) -> dict[int, bool]:
    """Per instance: True when it neither rests on another instance nor on the floor (module doc)."""
    up = np.asarray(up_grid, dtype=np.float64)
    up = up / np.linalg.norm(up)
    down = -up
    shape = next(iter(solids.values())).shape if solids else (0, 0, 0)
    coords = {i: np.argwhere(s) for i, s in solids.items()}
    heights = [c @ up for c in coords.values() if len(c)]
    if not heights:
        return {i: False for i in solids}
    floor = min(float(h.min()) for h in heights)
    offsets = np.unique(np.rint(np.outer([0.0, 0.5, 1.0], down)).astype(np.int64), axis=0)
    out = {}
    for i, c in coords.items():
        if len(c) == 0:
            out[i] = False
            continue
        if float((c @ up).min()) - floor <= 1.0 + 1e-9:
            out[i] = False
            continue
        others = np.zeros(shape, dtype=bool)
        for j, s in solids.items():
            if j != i:
                others |= s
        supported = False
        for off in offsets:
            q = c + off
            ok = np.all((q >= 0) & (q < np.array(shape)), axis=1)
            if np.any(others[q[ok, 0], q[ok, 1], q[ok, 2]]):
                supported = True
                break
        out[i] = not supported
    return out


def physics_scores(instance_coords: dict[int, np.ndarray], up_grid: np.ndarray, resolution: int) -> dict:
    """Scene summary: mean / max interpenetration, floating share, and the per-instance values."""
    solids = {i: solid(c, resolution) for i, c in instance_coords.items()}
    pen = interpenetration(solids)
    flo = floating(solids, up_grid)
    n = len(solids)
    return {
        "interpenetration": float(np.mean(list(pen.values()))) if n else 0.0,
        "interpenetration_max": float(max(pen.values())) if n else 0.0,
        "floating": float(np.mean([float(v) for v in flo.values()])) if n else 0.0,
        "per_instance": {str(i): {"interpenetration": pen[i], "floating": flo[i]} for i in solids},
    }
