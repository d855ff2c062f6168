"""Upper surfaces of assets, found by ray casting the mesh from above (not from its bounding box).

A height map over the asset's footprint is computed once per asset in its canonical frame (unit
size) by casting vertical rays down onto the mesh; heights scale linearly with the asset's size. The
layout sampler uses it to find where on a support something can rest (a table top, not the floor
under it) and to give the support height below any point for the stability check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

GRID = 48


@dataclass(frozen=True)
class HeightMap:
    """First-hit heights of downward rays on a GRID x GRID lattice over the canonical footprint."""

    lo: np.ndarray  # (2,) xy of the lattice's first cell centre
    step: np.ndarray  # (2,) cell size
    heights: np.ndarray  # (GRID, GRID), -inf where a ray misses

    def scaled(self, size: float) -> "HeightMap":
        return HeightMap(self.lo * size, self.step * size, self.heights * size)

    def lookup(self, xy_local: np.ndarray) -> np.ndarray:
        """Height below local xy points (nearest cell); -inf outside the footprint or where empty."""
        ij = np.rint((np.asarray(xy_local) - self.lo) / self.step).astype(np.int64)
        inside = np.all((ij >= 0) & (ij < GRID), axis=1)
        out = np.full(len(ij), -np.inf)
        out[inside] = self.heights[ij[inside, 0], ij[inside, 1]]
        return out

    def top_cells(self, rel_height: float = 0.5, flatness: float = 0.02) -> np.ndarray:
        """Local xy of cells on upper, locally flat surface: candidate resting places."""
        h = self.heights
        finite = np.isfinite(h)
        if not finite.any():
            return np.zeros((0, 2))
        hmax, hmin = h[finite].max(), h[finite].min()
        pad = np.pad(np.where(finite, h, -1e9), 1, mode="edge")
        neigh = np.stack([pad[1 + di:1 + di + GRID, 1 + dj:1 + dj + GRID] for di in (-1, 0, 1) for dj in (-1, 0, 1)])
        flat = finite & (np.abs(neigh - h[None]).max(axis=0) <= flatness * max(hmax - hmin, 1e-6) + 1e-4)
        upper = finite & (h >= hmin + rel_height * (hmax - hmin))
        ij = np.argwhere(flat & upper)
        return self.lo + ij * self.step


def height_map(canonical: trimesh.Trimesh) -> HeightMap:
    """Cast GRID^2 vertical rays down onto ``canonical`` (trimesh's ray-triangle intersector)."""
    lo, hi = canonical.bounds[0, :2], canonical.bounds[1, :2]
    step = (hi - lo) / GRID
    centres = lo + (np.stack(np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij"), -1).reshape(-1, 2) + 0.5) * step
    origins = np.column_stack([centres, np.full(len(centres), canonical.bounds[1, 2] + 1.0)])
    directions = np.tile([0.0, 0.0, -1.0], (len(origins), 1))
    locations, ray_idx, _ = canonical.ray.intersects_location(origins, directions, multiple_hits=False)
    heights = np.full(len(origins), -np.inf)
    np.maximum.at(heights, ray_idx, locations[:, 2])
    return HeightMap(lo + 0.5 * step, step, heights.reshape(GRID, GRID))
