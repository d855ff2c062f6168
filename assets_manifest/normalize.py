"""Up-axis and unit guesses, and the normalisation into the canonical asset frame.

glTF is Y-up by specification; OBJ exports are usually Y-up too; PLY/STL/OFF are usually Z-up
(CAD and scanners). One content rule overrides the format: a very flat asset (thinnest side under a
fifth of the middle one, e.g. a plate, a board) is laid with its thin side up, because a plate
standing on its edge is neither what the file meant nor physically plausible in a random scene.

For formats whose up axis is only a habit (PLY, STL, OFF, OBJ: the Stanford bunny PLY is Y-up), the
asset's resting poses decide: when the format's usual up axis is (almost) never up in a resting pose
while the other candidate is, the other one is taken. glTF is Y-up by specification and kept.
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


SPEC_UP = (".glb", ".gltf")  # up axis fixed by the format's specification
MIN_UP_PROBABILITY = 0.02  # below this the usual up axis is "never up at rest"
MIN_OTHER_PROBABILITY = 0.05  # the alternative must be a real resting pose


def guess_up_axis(extension: str, extents: np.ndarray, up_probability=None) -> str:
    """'+x' / '+y' / '+z': the file axis that points up.

    ``up_probability(axis) -> float``: optional probability that ``axis`` (file frame) is up when
    the asset rests on a plane (``stable_poses.up_probability``); used for formats without a
    specified up axis.
    """
    ext = np.asarray(extents, dtype=np.float64)
    order = np.argsort(ext)
    if ext[order[0]] < FLAT_RATIO * ext[order[1]]:
        return "+" + "xyz"[order[0]]
    default = FORMAT_UP.get(extension.lower(), "+z")
    if up_probability is None or extension.lower() in SPEC_UP:
        return default
    other = "+y" if default == "+z" else "+z"
    axis = {"+y": np.array([0.0, 1.0, 0.0]), "+z": np.array([0.0, 0.0, 1.0])}
    if up_probability(axis[default]) < MIN_UP_PROBABILITY and up_probability(axis[other]) >= MIN_OTHER_PROBABILITY:
        return other
    return default


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
