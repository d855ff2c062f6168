"""Coordinate conventions of I-Scene, in one place (the written form is docs/VIEW_SPACE.md).

Everything that maps between world, camera, the view-centric grid, the canonical (world) grid and
voxel indices lives here, so that the data engine, the trainer, inference and the independent
verifier cannot disagree on a sign or a half-voxel offset.

Conventions (SHARD_FORMAT.md):
- World: right-handed, +Z up, floor at z = 0.
- Camera: OpenCV (x right, y down, z forward); ``world_to_cam`` 4x4, ``K`` 3x3 in pixels with pixel
  (u, v) centred at (u + 0.5, v + 0.5).
- View grid: axes (camera right, camera forward, camera up) = ``(x_cam, z_cam, -y_cam)``, then a
  uniform scale and a translation into the cube ``[-0.5, 0.5]^3`` that holds every instance.
- World grid: identity rotation, uniform scale and translation into the same cube.
- Voxel index of a grid point ``p``: ``floor((p + 0.5) * R)``; voxel ``(i, j, k)`` covers
  ``[i/R - 0.5, (i+1)/R - 0.5)`` along each axis. Dense arrays are indexed ``[i, j, k]``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "VIEW_FROM_CAM",
    "GRID_RESOLUTION",
    "transform_points",
    "invert_rigid_scale",
    "fit_grid_transform",
    "fit_cam_to_grid",
    "fit_world_to_grid",
    "grid_to_voxel",
    "voxel_centers",
    "coords_to_dense",
    "dense_to_coords",
    "project_points",
    "look_at_world_to_cam",
]

GRID_RESOLUTION = 64

# Rotation taking camera coordinates (OpenCV: x right, y down, z forward) to view-grid axes
# (right, forward, up). Its determinant is +1, so the grid stays right-handed.
VIEW_FROM_CAM = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous transform to (N, 3) points; returns float64 (N, 3)."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ m[:3, :3].T + m[:3, 3]


def invert_rigid_scale(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 made of rotation x uniform scale + translation (exact, no generic inverse)."""
    m = np.asarray(matrix, dtype=np.float64)
    a = m[:3, :3]
    s2 = float(np.mean(np.sum(a * a, axis=0)))
    inv = np.eye(4)
    inv[:3, :3] = a.T / s2
    inv[:3, 3] = -inv[:3, :3] @ m[:3, 3]
    return inv


def fit_grid_transform(points: np.ndarray, rotation: np.ndarray, fill: float = 1.0 - 1e-5) -> np.ndarray:
    """4x4 ``rotation``, then uniform scale and translation, mapping ``points`` into the grid cube.

    The axis-aligned box of the rotated points is centred at the origin and its largest side is
    scaled to ``fill`` (just under 1, so the outermost surface never lands on the open upper
    bound of the last voxel and no clipping is needed).
    """
    rot = np.asarray(rotation, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3) @ rot.T
    if len(p) == 0 or not np.all(np.isfinite(p)):
        raise ValueError("fit_grid_transform needs a non-empty set of finite points")
    lo, hi = p.min(axis=0), p.max(axis=0)
    extent = float(np.max(hi - lo))
    if extent <= 0.0:
        raise ValueError("fit_grid_transform: points have zero extent")
    scale = fill / extent
    centre = 0.5 * (lo + hi)
    out = np.eye(4)
    out[:3, :3] = scale * rot
    out[:3, 3] = -scale * centre
    return out


def fit_cam_to_grid(points_cam: np.ndarray, fill: float = 1.0 - 1e-5) -> np.ndarray:
    """``cam_to_grid`` for the view-centric grid: camera coords -> view axes -> cube."""
    return fit_grid_transform(points_cam, VIEW_FROM_CAM, fill)


def fit_world_to_grid(points_world: np.ndarray, fill: float = 1.0 - 1e-5) -> np.ndarray:
    """``world_to_grid`` for the canonical grid (the ablation without view-centric space)."""
    return fit_grid_transform(points_world, np.eye(3), fill)


def grid_to_voxel(points_grid: np.ndarray, resolution: int = GRID_RESOLUTION) -> np.ndarray:
    """Voxel indices ``floor((p + 0.5) * R)`` clipped to ``[0, R-1]`` as int64 (N, 3)."""
    idx = np.floor((np.asarray(points_grid, dtype=np.float64) + 0.5) * resolution).astype(np.int64)
    return np.clip(idx, 0, resolution - 1)


def voxel_centers(coords: np.ndarray, resolution: int = GRID_RESOLUTION) -> np.ndarray:
    """Grid-space centres of voxel ``coords`` (N, 3) -> float64 (N, 3)."""
    return (np.asarray(coords, dtype=np.float64) + 0.5) / resolution - 0.5


def coords_to_dense(coords: np.ndarray, resolution: int = GRID_RESOLUTION) -> np.ndarray:
    """(M, 3) voxel indices -> bool occupancy ``[R, R, R]`` indexed ``[i, j, k]``."""
    dense = np.zeros((resolution,) * 3, dtype=bool)
    c = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    if len(c):
        if c.min() < 0 or c.max() >= resolution:
            raise ValueError(f"voxel coords outside [0, {resolution})")
        dense[c[:, 0], c[:, 1], c[:, 2]] = True
    return dense


def dense_to_coords(dense: np.ndarray) -> np.ndarray:
    """Bool/0-1 occupancy ``[R, R, R]`` -> sorted (M, 3) uint8 voxel indices."""
    return np.argwhere(np.asarray(dense) > 0).astype(np.uint8)


def project_points(K: np.ndarray, world_to_cam: np.ndarray, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points to continuous pixel coords ``(u, v)`` and camera depth ``z``.

    ``u, v`` are in the convention where pixel (i, j) spans ``[i, i+1) x [j, j+1)``, so the
    integer pixel of a point is ``floor(u), floor(v)``.
    """
    pc = transform_points(world_to_cam, points_world)
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = pc @ np.asarray(K, dtype=np.float64).T
        uv = uvw[:, :2] / uvw[:, 2:3]
    return uv, z


def _cross3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.cross`` of two 3-vectors, written out with np.cross's own operations (so the same bits):
    for single vectors np.cross spends more on argument handling than on arithmetic, and camera
    choice builds hundreds of look-at matrices per scene."""
    a0, a1, a2 = a
    b0, b1, b2 = b
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def look_at_world_to_cam(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV ``world_to_cam`` for a camera at ``eye`` looking at ``target`` with world ``up``."""
    eye = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = _cross3(fwd, np.asarray(up, dtype=np.float64))
    n = np.linalg.norm(right)
    if n < 1e-9:
        raise ValueError("look_at: viewing direction parallel to up")
    right /= n
    down = _cross3(fwd, right)
    rot = np.stack([right, down, fwd])  # rows: camera axes in world coords
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = -rot @ eye
    return out


def look_at_rotations(directions: np.ndarray) -> np.ndarray:
    """``look_at_world_to_cam``'s rotation (up = +Z) for a batch of viewpoints: (C, 3, 3), camera c
    looking along ``-directions[c]`` (unit vectors from the target to the eye). Camera choice frames
    several candidate viewpoints at once with these."""
    fwd = -np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    return np.stack([right, np.cross(fwd, right), fwd], axis=1)
