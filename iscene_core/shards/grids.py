"""The voxel grids of one sample's ``vox.npz``, by frame: the scene's and each instance's coordinates.

Instances are stored as one coordinate array cut by an offsets array (SHARD_FORMAT.md); the view
grid's arrays have no prefix and the world grid's carry ``world_``. Every reader goes through
here so the key names and the slicing live in one place.
"""

from __future__ import annotations

import numpy as np

GRID_KEYS = {"view": ("scene", "inst_offsets", "inst_coords"),
             "world": ("world_scene", "world_inst_offsets", "world_inst_coords")}


def grid_keys(space: str) -> tuple[str, str, str]:
    """(scene, offsets, coords) key names of ``vox.npz`` for ``space`` (view or world)."""
    try:
        return GRID_KEYS[space]
    except KeyError:
        raise ValueError(f"voxel frame must be 'view' or 'world', got {space!r}") from None


def scene_and_instance_coords(vox: dict, space: str = "view") -> tuple[np.ndarray, list[np.ndarray]]:
    """(scene (M, 3) coords, [instance i's (M_i, 3) coords for instance index i = 1..N]) of one sample."""
    scene_k, offs_k, coords_k = grid_keys(space)
    offs, coords = vox[offs_k], vox[coords_k]
    return vox[scene_k], [coords[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]
