"""Cameras inside a 3D-FRONT room, looking at its furniture.

The eye is sampled over the room's floor (away from walls and outside every furniture box) at
standing height; the look-at target is the centre of the furniture boxes; the field of view is the
smallest one (within limits) that frames every box corner with a margin, so each instance lies in
the frame, as in the random engine. Views where an instance is hidden are rejected with the random
engine's own visibility estimate (``datagen.cameras.visible_fractions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from iscene_core import space


@dataclass(frozen=True)
class RoomCameraConfig:
    width: int = 518
    height: int = 518
    eye_height: tuple[float, float] = (1.2, 2.2)
    wall_clearance: float = 0.3
    furniture_clearance: float = 0.15
    fov_deg: tuple[float, float] = (40.0, 100.0)
    frame_margin: float = 0.05  # fraction of the image kept free on each side
    min_visible_fraction: float = 0.05
    tries: int = 64


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole K with square pixels; ``fov_deg`` is the horizontal field of view."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _box_corners(aabbs: np.ndarray) -> np.ndarray:
    lo, hi = aabbs[:, 0], aabbs[:, 1]
    corners = [np.where(np.array(bits, dtype=bool), hi, lo) for bits in np.ndindex(2, 2, 2)]
    return np.concatenate(corners, axis=0)


def _fitting_fov(w2c: np.ndarray, corners: np.ndarray, cfg: RoomCameraConfig) -> float | None:
    """Smallest horizontal FOV framing ``corners`` with the margin, or None if none within limits."""
    pc = space.transform_points(w2c, corners)
    if np.any(pc[:, 2] < 0.1):
        return None
    aspect = cfg.height / cfg.width
    tan_x = np.max(np.abs(pc[:, 0] / pc[:, 2]))
    tan_y = np.max(np.abs(pc[:, 1] / pc[:, 2])) / aspect  # vertical extent in horizontal units
    need = max(tan_x, tan_y) / (1.0 - 2.0 * cfg.frame_margin)
    fov = float(np.degrees(2.0 * np.arctan(need)))
    if fov > cfg.fov_deg[1]:
        return None
    return max(fov, cfg.fov_deg[0])


def sample_room_cameras(
    floor_xy: tuple[np.ndarray, np.ndarray],
    aabbs: np.ndarray,
    meshes_world: list[trimesh.Trimesh],
    n_views: int,
    rng: np.random.Generator,
    cfg: RoomCameraConfig,
) -> list[dict]:
    """Up to ``n_views`` cameras (``K``, ``world_to_cam``, ``width``, ``height``) framing all boxes."""
    from datagen.cameras import visible_fractions

    lo, hi = np.asarray(floor_xy[0], float) + cfg.wall_clearance, np.asarray(floor_xy[1], float) - cfg.wall_clearance
    if np.any(hi <= lo):
        lo, hi = np.asarray(floor_xy[0], float), np.asarray(floor_xy[1], float)
    corners = _box_corners(aabbs)
    target = 0.5 * (aabbs[:, 0].min(axis=0) + aabbs[:, 1].max(axis=0))
    cams: list[dict] = []
    for _ in range(cfg.tries):
        if len(cams) >= n_views:
            break
        eye = np.array([*rng.uniform(lo, hi), rng.uniform(*cfg.eye_height)])
        inside = np.all((eye >= aabbs[:, 0] - cfg.furniture_clearance) & (eye <= aabbs[:, 1] + cfg.furniture_clearance), axis=1)
        if inside.any() or np.linalg.norm((eye - target)[:2]) < 0.5:
            continue
        w2c = space.look_at_world_to_cam(eye, target)
        fov = _fitting_fov(w2c, corners, cfg)
        if fov is None:
            continue
        cam = {"K": intrinsics(fov, cfg.width, cfg.height).tolist(), "world_to_cam": w2c.tolist(), "width": cfg.width, "height": cfg.height}
        if np.min(visible_fractions(cam, meshes_world)) < cfg.min_visible_fraction:
            continue
        cams.append(cam)
    return cams
