"""Up-axis and unit guesses, and the normalisation into the canonical asset frame.

glTF is Y-up by specification; OBJ exports are usually Y-up too; PLY/STL/OFF are usually Z-up
(CAD and scanners). One content rule overrides the format: a very flat asset (thinnest side under a
fifth of the middle one, e.g. a plate, a board) is laid with its thin side up, because a plate
standing on its edge is neither what the file meant nor physically plausible in a random scene.
"""

from __future__ import annotations

import numpy as np

FORMAT_UP = {".glb": "+y", ".gltf": "+y", ".obj": "+y", ".ply": "+z", ".stl": "+z", ".off": "+z"}
FLAT_RATIO = 0.2

# Rotations taking the named file axis to +Z (all proper rotations)
TO_Z_UP = {
    "+z": np.eye(3),
    "+y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),  # (x, y, z) -> (x, -z, y)
    "+x": np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]),  # (x, y, z) -> (-z, y, x)
}


def guess_up_axis(extension: str, extents: np.ndarray) -> str:
    ext = np.asarray(extents, dtype=np.float64)
    order = np.argsort(ext)
    if ext[order[0]] < FLAT_RATIO * ext[order[1]]:
        return "+" + "xyz"[order[0]]
    return FORMAT_UP.get(extension.lower(), "+z")


def guess_unit(max_extent: float) -> str:
    """A guess from size alone, recorded for users; the normalisation removes scale anyway."""
    if max_extent > 500:
        return "mm"
    if max_extent > 20:
        return "cm"
    return "m"


def normalization_matrix(vertices: np.ndarray, up_axis: str) -> tuple[np.ndarray, np.ndarray]:
    """4x4 into the canonical frame (rotate to Z-up, centre x/y, min z = 0, largest side 1).

    Returns (matrix, canonical extents).
    """
    rot = TO_Z_UP[up_axis]
    p = np.asarray(vertices, dtype=np.float64) @ rot.T
    lo, hi = p.min(axis=0), p.max(axis=0)
    scale = 1.0 / float(np.max(hi - lo))
    shift = -np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    m = np.eye(4)
    m[:3, :3] = scale * rot
    m[:3, 3] = scale * shift
    return m, (hi - lo) * scale
