"""View-centric cameras for random scenes, and the visibility estimate every scene source uses.

A camera looks at the centre of the scene's box from a random elevation and azimuth with a random
field of view; its distance is the smallest that keeps every instance's box inside the frame with a
margin. A view where some instance would be (almost) entirely hidden behind others is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from iscene_core import space

VISIBILITY_WIDTH = 96  # pixels of the low-resolution depth buffer used to estimate visibility
SAMPLES_PER_MESH = 20000


@dataclass(frozen=True)
class CameraConfig:
    views_per_scene: int = 4
    width: int = 518
    height: int = 518
    elevation_deg: tuple[float, float] = (5.0, 60.0)
    fov_deg: tuple[float, float] = (35.0, 65.0)
    frame_margin: float = 0.06
    min_visible_fraction: float = 0.05
    tries_per_view: int = 40


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole K (square pixels, principal point at the image centre); ``fov_deg`` is horizontal."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _inside_frame(K, w2c, points, width, height, margin) -> bool:
    uv, z = space.project_points(K, w2c, points)
    if np.any(z <= 1e-3):
        return False
    mx, my = margin * width, margin * height
    return bool(np.all((uv[:, 0] >= mx) & (uv[:, 0] <= width - mx) & (uv[:, 1] >= my) & (uv[:, 1] <= height - my)))


def fit_distance(K, direction, target, corners, width, height, margin) -> float | None:
    """Smallest camera distance along ``direction`` (unit, from target to eye) framing ``corners``."""
    radius = float(np.max(np.linalg.norm(corners - target, axis=1)))
    lo, hi = radius * 1.01, radius * 50.0

    def ok(d):
        return _inside_frame(K, space.look_at_world_to_cam(target + d * direction, target), corners, width, height, margin)

    if not ok(hi):
        return None
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _mesh_points(mesh: trimesh.Trimesh, n: int = SAMPLES_PER_MESH) -> np.ndarray:
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    return np.vstack([pts, mesh.vertices])


def visible_fractions(
    camera: dict,
    meshes_world: list[trimesh.Trimesh],
    occluders: list[trimesh.Trimesh] = (),
    *,
    points: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Per-mesh visible / amodal pixel fraction, estimated by splatting dense surface samples into a
    low-resolution depth buffer. An estimate for rejecting views (the renderer measures the exact
    value for the shard); 0 means hidden or out of frame.
    """
    w, h = int(camera["width"]), int(camera["height"])
    s = VISIBILITY_WIDTH / w
    K = np.asarray(camera["K"], dtype=np.float64).copy()
    K[:2] *= s
    W, H = VISIBILITY_WIDTH, max(1, int(round(h * s)))
    pts = points if points is not None else [_mesh_points(m) for m in meshes_world]
    pts = list(pts) + [_mesh_points(m) for m in occluders]
    ids = np.concatenate([np.full(len(p), i) for i, p in enumerate(pts)])
    uv, z = space.project_points(K, camera["world_to_cam"], np.concatenate(pts))
    keep = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    pix = np.floor(uv[keep]).astype(np.int64)
    lin = pix[:, 1] * W + pix[:, 0]
    zk, idk = z[keep], ids[keep]
    depth = np.full(W * H, np.inf)
    np.minimum.at(depth, lin, zk)
    n = len(meshes_world)
    fractions = np.zeros(n)
    tol = 0.01 * np.median(zk) if len(zk) else 0.0
    for i in range(n):
        mine = idk == i
        amodal = np.unique(lin[mine])
        if len(amodal) == 0:
            continue
        front = lin[mine][zk[mine] <= depth[lin[mine]] + tol]
        fractions[i] = len(np.unique(front)) / len(amodal)
    return fractions


def sample_cameras(
    meshes_world: list[trimesh.Trimesh],
    aabbs: np.ndarray,
    rng: np.random.Generator,
    cfg: CameraConfig = CameraConfig(),
    points: list[np.ndarray] | None = None,
) -> list[dict]:
    """``cfg.views_per_scene`` cameras framing every instance and hiding none (fewer if impossible).

    ``points``: per-instance world surface samples for the visibility estimate (sampled from the
    meshes when not given).
    """
    lo, hi = aabbs[:, 0].min(axis=0), aabbs[:, 1].max(axis=0)
    target = 0.5 * (lo + hi)
    corners = np.concatenate([np.where(np.array(b, bool), aabbs[:, 1], aabbs[:, 0]) for b in np.ndindex(2, 2, 2)])
    points = points if points is not None else [_mesh_points(m) for m in meshes_world]
    cams: list[dict] = []
    for _ in range(cfg.views_per_scene):
        for _ in range(cfg.tries_per_view):
            elev = np.radians(rng.uniform(*cfg.elevation_deg))
            azim = rng.uniform(0, 2 * np.pi)
            fov = rng.uniform(*cfg.fov_deg)
            direction = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
            K = intrinsics(fov, cfg.width, cfg.height)
            d = fit_distance(K, direction, target, corners, cfg.width, cfg.height, cfg.frame_margin)
            if d is None:
                continue
            cam = {"K": K.tolist(), "world_to_cam": space.look_at_world_to_cam(target + d * direction, target).tolist(),
                   "width": cfg.width, "height": cfg.height}
            if np.min(visible_fractions(cam, meshes_world, points=points)) >= cfg.min_visible_fraction:
                cams.append(cam)
                break
    return cams
