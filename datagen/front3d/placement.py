"""3D-FRONT placement -> the engine's z-up world.

3D-FRONT is y-up in metres and places a child by scale, then rotation (quaternion stored
[x, y, z, w]), then translation. The engine's world is z-up, so every transform is followed by the
fixed rotation that takes y-up to z-up: (x, y, z) -> (x, -z, y), a +90 degree turn about x.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# (x, y, z)_front -> (x, -z, y)_world ; det = +1 so handedness is kept
Y_UP_TO_Z_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def child_to_front(pos, rot_xyzw, scale) -> np.ndarray:
    """4x4 in 3D-FRONT's frame: T(pos) @ R(quat) @ S(scale)."""
    quat = np.asarray(rot_xyzw, dtype=np.float64)
    norm = np.linalg.norm(quat)
    if not np.isfinite(norm) or norm < 1e-8:
        raise ValueError(f"invalid rotation quaternion {list(rot_xyzw)}")
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(quat / norm).as_matrix() @ np.diag(np.asarray(scale, dtype=np.float64))
    m[:3, 3] = np.asarray(pos, dtype=np.float64)
    return m


def child_to_world(pos, rot_xyzw, scale) -> np.ndarray:
    """4x4 taking a model's own (y-up) vertices to the engine's z-up world."""
    return Y_UP_TO_Z_UP @ child_to_front(pos, rot_xyzw, scale)


def front_points_to_world(points: np.ndarray) -> np.ndarray:
    """(N, 3) 3D-FRONT-frame points -> z-up world."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ Y_UP_TO_Z_UP[:3, :3].T
