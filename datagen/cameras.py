"""View-centric cameras for random scenes, and the visibility estimate every scene source uses.

A camera looks at the centre of the scene from a random elevation and azimuth with a random field
of view. Its distance frames the scene: by default (``fill``) the camera backs off from the closest
distance that keeps every instance's surface inside the frame (with a margin) only as far as needed
for the instances to cover about ``fill`` of the image, so scenes do not shrink to a small patch or a
strip. ``occlusion`` asks for views where instances hide each other (the paper's failure mode:
"heavy": a third of the instances at most 60 % visible, from lower elevations), views where none
does ("none": all >= 90 % visible), or a third of the views heavy ("mixed", the default). Before
anything is rendered, a view is resampled when some instance would be (almost) hidden
behind others or would cover fewer than ``min_instance_pixels`` visible pixels (an exact z-buffer of
the scene's triangles at 128 px, ``datagen.raster.SceneRaster``), instead of the view being
dropped after rendering. Candidate viewpoints are ranked by a frame fill splatted from surface
samples (cheap, and only a ranking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from datagen.raster import SceneRaster
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
    frame_margin: float = 0.02
    min_visible_fraction: float = 0.05
    tries_per_view: int = 40
    fill: float | None = 0.4  # target share of the image the scene covers; None = fit the scene's box
    min_instance_pixels: int = 32  # estimated visible pixels per instance at the output resolution
    candidates: int = 6  # random viewpoints per try; the one with the largest frame fill is kept
    occlusion: str = "mixed"  # none: every instance >= 90 % visible; heavy: a third of them <= 60 %; mixed: heavy in 1/3 of views; any: no constraint


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
    """Smallest camera distance along ``direction`` (unit, from target to eye) framing ``corners``.

    Closed form: the camera's rotation does not depend on its distance d, so a point at camera
    coordinates (X, Y, Z) at d = 0 is at (X, Y, Z + d), and staying inside the frame with the margin
    is a lower bound on Z + d per point and axis. (Bounded to [1.01, 50] x the points' radius.)
    """
    K = np.asarray(K, dtype=np.float64)
    corners = np.asarray(corners, dtype=np.float64)
    radius = float(np.max(np.linalg.norm(corners - target, axis=1)))
    w2c = np.asarray(space.look_at_world_to_cam(target + radius * direction, target), dtype=np.float64)
    p = (corners - target) @ w2c[:3, :3].T  # camera axes, origin at the target
    need = [np.full(len(p), 1e-3 - p[:, 2] + 1e-9)]
    for axis, size, m in ((0, width, margin * width), (1, height, margin * height)):
        f, c = K[axis, axis], K[axis, 2]
        lo, hi = (m - c) / f, (size - m - c) / f  # allowed range of X / (Z + d)
        if lo >= 0 or hi <= 0:
            return None
        x = p[:, axis]
        need.append(np.where(x >= 0, x / hi, x / lo) - p[:, 2])
    d = max(float(np.max(np.concatenate(need))), radius * 1.01)
    return d * (1 + 1e-9) if d <= radius * 50.0 else None


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


RANK_POINTS = 1500  # samples per instance for ranking candidate viewpoints by frame fill


class Splats:
    """Per-instance surface samples of one scene, concatenated once.

    Camera choice projects the same points for every candidate viewpoint; concatenating the
    per-instance arrays (tens of thousands of points with real meshes' vertices) once per scene
    instead of once per candidate is what this saves. The arithmetic of a projection is the same as
    ``space.project_points`` on the concatenated points, so ``fast_frame_fill(exact=True)`` is
    bit-for-bit ``frame_fill`` on the list.
    """

    def __init__(self, points: list[np.ndarray]):
        if len(points) == 0:
            raise ValueError("Splats needs the surface samples of at least one instance")
        self.n = len(points)
        self.points = np.ascontiguousarray(np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in points]))
        # every k-th sample of each instance, at most RANK_POINTS of them: enough to rank candidate
        # viewpoints by frame fill in a FILL_WIDTH-pixel buffer
        starts = np.cumsum([0] + [len(p) for p in points[:-1]])
        self.rank_points = np.ascontiguousarray(np.concatenate(
            [self.points[a:a + len(p)][::max(1, -(-len(p) // RANK_POINTS))] for a, p in zip(starts, points)]))

    def rank_camera_points(self, camera: dict) -> np.ndarray:
        """The ranking subset in camera coordinates."""
        m = np.asarray(camera["world_to_cam"], dtype=np.float64)
        return self.rank_points @ m[:3, :3].T + m[:3, 3]

    def camera_points(self, camera: dict) -> np.ndarray:
        """Points in camera coordinates (``space.transform_points``' arithmetic)."""
        m = np.asarray(camera["world_to_cam"], dtype=np.float64)
        return self.points @ m[:3, :3].T + m[:3, 3]


def _pixels(camera: dict, pc: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, int, int, float]:
    """(in-frame mask, linear pixel index of the in-frame points, W, H, scale) of camera-space points
    splatted into a ``width``-pixel buffer (``space.project_points``' arithmetic)."""
    w, h = int(camera["width"]), int(camera["height"])
    s = width / w
    K = np.asarray(camera["K"], dtype=np.float64).copy()
    K[:2] *= s
    W, H = width, max(1, int(round(h * s)))
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = pc @ K.T
        uv = uvw[:, :2] / uvw[:, 2:3]
    keep = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    pix = np.floor(uv[keep]).astype(np.int64)
    return keep, pix[:, 1] * W + pix[:, 0], W, H, s


def fast_frame_fill(camera: dict, splats: Splats, exact: bool = False) -> float:
    """``frame_fill`` of the scene: on every sample with ``exact`` (the same number as
    ``frame_fill``), else on the ranking subset (``Splats.rank_points``), which is what camera
    choice uses to rank candidate viewpoints and to back off to the target fill."""
    from scipy import ndimage

    pc = splats.camera_points(camera) if exact else splats.rank_camera_points(camera)
    keep, lin, W, H, _ = _pixels(camera, pc, FILL_WIDTH)
    cov = np.zeros(W * H, bool)
    cov[lin] = True
    cov = cov.reshape(H, W)
    cov = ndimage.binary_closing(cov, structure=np.ones((3, 3), bool), border_value=0) | cov
    return float(cov.mean())


FILL_WIDTH = 48  # pixels of the buffer the frame fill is estimated in (coarse: sparse splats fill it)


def frame_fill(camera: dict, points: list[np.ndarray]) -> float:
    """Share of the image covered by the instances (splat union at FILL_WIDTH, gaps closed)."""
    from scipy import ndimage

    w, h = int(camera["width"]), int(camera["height"])
    s = FILL_WIDTH / w
    K = np.asarray(camera["K"], dtype=np.float64).copy()
    K[:2] *= s
    W, H = FILL_WIDTH, max(1, int(round(h * s)))
    uv, z = space.project_points(K, camera["world_to_cam"], np.concatenate(points))
    ok = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    cov = np.zeros((H, W), bool)
    ij = np.floor(uv[ok]).astype(np.int64)
    cov[ij[:, 1], ij[:, 0]] = True
    cov = ndimage.binary_closing(cov, structure=np.ones((3, 3), bool), border_value=0) | cov
    return float(cov.mean())


RASTER_WIDTH = 128  # pixels of the exact visibility check of a chosen view


def raster_visibility(camera: dict, meshes_world: list[trimesh.Trimesh] | SceneRaster, width: int = RASTER_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(visible pixels per instance at the camera's resolution, visible / amodal fraction), from an
    exact z-buffer of the meshes at ``width`` pixels (datagen.raster): splats of large, sparsely
    sampled instances leak, so views are checked this way. ``meshes_world`` may be a prepared
    ``SceneRaster`` (camera choice checks many views of one scene)."""
    scene = meshes_world if isinstance(meshes_world, SceneRaster) else SceneRaster(
        [m.vertices for m in meshes_world], [m.faces for m in meshes_world])
    w, h = int(camera["width"]), int(camera["height"])
    s = min(1.0, width / w)
    K = np.asarray(camera["K"], dtype=np.float64).copy()
    K[:2] *= s
    W, H = max(1, int(round(w * s))), max(1, int(round(h * s)))
    visible, amodal = scene.visibility(K, camera["world_to_cam"], W, H)
    return visible / (s * s), np.divide(visible, amodal, out=np.zeros_like(visible), where=amodal > 0)


OCCLUSION = ("none", "mixed", "heavy")
HEAVY_VISIBLE = 0.6  # "heavy": some instance shows at most this fraction of itself
NONE_VISIBLE = 0.9  # "none": every instance shows at least this fraction


def occlusion_ok(fractions: np.ndarray, mode: str) -> bool:
    """Whether a view's visible fractions match the occlusion mode of that view ("none"/"heavy";
    "any" accepts everything above the minimum visible fraction)."""
    if mode == "none":
        return bool(np.min(fractions) >= NONE_VISIBLE)
    if mode == "heavy":
        return bool(np.sum(fractions <= HEAVY_VISIBLE) >= max(1, len(fractions) // 3))
    return True


def _hull_points(points: list[np.ndarray]) -> np.ndarray:
    from scipy.spatial import ConvexHull

    allp = np.concatenate(points)
    try:
        return allp[ConvexHull(allp).vertices]
    except Exception:  # degenerate (flat) point set: use them all
        return allp


def sample_cameras(
    meshes_world: list[trimesh.Trimesh],
    aabbs: np.ndarray,
    rng: np.random.Generator,
    cfg: CameraConfig = CameraConfig(),
    points: list[np.ndarray] | None = None,
    hull_points: np.ndarray | None = None,
) -> list[dict]:
    """``cfg.views_per_scene`` cameras framing every instance and hiding none (fewer if impossible).

    ``points``: per-instance world surface samples for ranking viewpoints by frame fill (sampled
    from the meshes when not given). ``hull_points``: points whose convex hull contains every
    instance (e.g. the instances' hull vertices; the surface samples' hull when not given), which
    the camera frames.

    Per view, each try draws ``cfg.candidates`` viewpoints, frames them (``_framed_camera``) and
    checks them in order of frame fill (capped at the target; ties in draw order) with the exact
    z-buffer (``raster_visibility``): the first that shows every instance with at least
    ``min_instance_pixels`` and ``min_visible_fraction`` and matches the view's occlusion mode is
    kept.
    """
    points = points if points is not None else [_mesh_points(m) for m in meshes_world]
    splats = Splats(points)
    scene = SceneRaster([m.vertices for m in meshes_world], [m.faces for m in meshes_world])
    if cfg.fill is None:  # the scene's box, as before ``fill`` existed
        lo, hi = aabbs[:, 0].min(axis=0), aabbs[:, 1].max(axis=0)
        frame_pts = np.concatenate([np.where(np.array(b, bool), aabbs[:, 1], aabbs[:, 0]) for b in np.ndindex(2, 2, 2)])
    else:  # the surfaces themselves: a box's empty corners do not push the camera back
        frame_pts = _hull_points([hull_points] if hull_points is not None else points)
        lo, hi = frame_pts.min(axis=0), frame_pts.max(axis=0)
    centre = 0.5 * (lo + hi)
    cams: list[dict] = []
    for _ in range(cfg.views_per_scene):
        # per view: "mixed" draws heavy occlusion for a third of the views, any for the rest
        mode = cfg.occlusion if cfg.occlusion != "mixed" else ("heavy" if rng.uniform() < 1 / 3 else "any")
        elevation = (cfg.elevation_deg[0], min(cfg.elevation_deg[1], 35.0)) if mode == "heavy" else cfg.elevation_deg
        for _ in range(cfg.tries_per_view):
            # a few random viewpoints, best frame fill first: an elongated scene seen along its long
            # side fills a square image better than one seen end-on (and vice versa). Viewpoints that
            # reach the target fill rank equal, in draw order, so the first of them is checked as soon
            # as it is framed; the others are framed (and ranked) only if it fails.
            draws = []
            for _ in range(cfg.candidates if cfg.fill is not None else 1):
                elev = np.radians(rng.uniform(*elevation))
                azim = rng.uniform(0, 2 * np.pi)
                fov = rng.uniform(*cfg.fov_deg)
                draws.append((np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)]),
                              intrinsics(fov, cfg.width, cfg.height)))
            cam, short = None, []
            for direction, K in draws:
                framed = _framed_camera(K, direction, centre, frame_pts, splats, cfg)
                if framed is None:
                    continue
                if cfg.fill is not None and framed[0] < cfg.fill:
                    short.append(framed)
                elif _view_ok(framed[1], scene, cfg, mode):
                    cam = framed[1]
                    break
            if cam is None:
                short.sort(key=lambda c: -c[0])  # stable: ties keep the draw order
                cam = next((c for _, c in short if _view_ok(c, scene, cfg, mode)), None)
            if cam is not None:
                cams.append(cam)
                break
    return cams


def _view_ok(cam: dict, scene: SceneRaster, cfg: CameraConfig, mode: str) -> bool:
    """Every instance shows enough of itself, and the view matches its occlusion mode."""
    vis_px, vis_frac = raster_visibility(cam, scene)
    if np.min(vis_px) < cfg.min_instance_pixels or np.min(vis_frac) < cfg.min_visible_fraction:
        return False
    return occlusion_ok(vis_frac, mode)


def _framed_camera(K, direction, centre, frame_pts, splats: Splats, cfg: CameraConfig) -> tuple[float, dict] | None:
    """(estimated frame fill, camera) along ``direction`` framing ``frame_pts``; with ``cfg.fill``,
    aimed at the centre of their projection (perspective puts the 3-D centre off-centre) and backed
    off to about ``fill``."""
    target = np.asarray(centre, dtype=np.float64)

    def camera(t, dist: float) -> dict:
        return {"K": K.tolist(), "world_to_cam": space.look_at_world_to_cam(t + dist * direction, t).tolist(),
                "width": cfg.width, "height": cfg.height}

    d = fit_distance(K, direction, target, frame_pts, cfg.width, cfg.height, cfg.frame_margin)
    if d is None:
        return None
    if cfg.fill is None:
        return 0.0, camera(target, d)
    for _ in range(2):  # re-aim at the projected box's centre, then fit again
        w2c = space.look_at_world_to_cam(target + d * direction, target)
        uv, _ = space.project_points(K, w2c, frame_pts)
        off = 0.5 * (uv.min(axis=0) + uv.max(axis=0)) - np.array([cfg.width / 2.0, cfg.height / 2.0])
        r = np.linalg.inv(np.asarray(w2c)[:3, :3])  # camera axes (x right, y down) in world
        new = target + d * (off[0] / K[0, 0] * r[:, 0] + off[1] / K[1, 1] * r[:, 1])
        d_new = fit_distance(K, direction, new, frame_pts, cfg.width, cfg.height, cfg.frame_margin)
        if d_new is None:
            break
        target, d = new, d_new
    cam = camera(target, d)
    f = fast_frame_fill(cam, splats)
    if f > cfg.fill * 1.05:  # fill ~ 1 / distance^2: back off to about ``fill``
        cam = camera(target, d * float(np.sqrt(f / cfg.fill)))
    return min(f, cfg.fill), cam
