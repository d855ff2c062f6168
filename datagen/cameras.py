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
from functools import partial

import numba
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


def fit_distances(Ks: np.ndarray, rotations: np.ndarray, targets: np.ndarray, points: np.ndarray, width: int,
                  height: int, margin: float) -> np.ndarray:
    """Per camera c, the smallest distance from ``targets[c]`` along its viewing axis that frames
    ``points`` (NaN where none does). Cameras are batched: (C, 3, 3) intrinsics and rotations.

    Closed form: the camera's rotation does not depend on its distance d, so a point at camera
    coordinates (X, Y, Z) at d = 0 is at (X, Y, Z + d), and staying inside the frame with the margin
    is a lower bound on Z + d per point and axis. (Bounded to [1.01, 50] x the points' radius.)
    Every bound is linear in the point, so the hull's vertices decide it: any point set with the
    same convex hull gives the same distance. One compiled pass over cameras x points
    (``_fit_kernel``): the numpy form spent 0.5 ms per call on its temporaries, three calls per try.
    """
    Ks = np.ascontiguousarray(Ks, dtype=np.float64)
    return _fit_kernel(Ks, np.ascontiguousarray(rotations, dtype=np.float64), np.ascontiguousarray(targets, dtype=np.float64),
                       np.ascontiguousarray(points, dtype=np.float64), float(width), float(height), float(margin))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fit_kernel(Ks, R, targets, points, width, height, margin):  # pragma: no cover - compiled
    """``fit_distances`` for each camera (see there)."""
    C, P = targets.shape[0], points.shape[0]
    out = np.empty(C)
    for c in range(C):
        los, his = np.empty(2), np.empty(2)
        ok = True
        for a in range(2):
            size = width if a == 0 else height
            f, cc = Ks[c, a, a], Ks[c, a, 2]
            los[a] = (margin * size - cc) / f  # allowed range of X / (Z + d)
            his[a] = (size - margin * size - cc) / f
            ok = ok and los[a] < 0 and his[a] > 0
        need, r2 = -np.inf, 0.0
        for i in range(P):
            x = points[i, 0] - targets[c, 0]
            y = points[i, 1] - targets[c, 1]
            z = points[i, 2] - targets[c, 2]
            r2 = max(r2, x * x + y * y + z * z)
            X = R[c, 0, 0] * x + R[c, 0, 1] * y + R[c, 0, 2] * z
            Y = R[c, 1, 0] * x + R[c, 1, 1] * y + R[c, 1, 2] * z
            Z = R[c, 2, 0] * x + R[c, 2, 1] * y + R[c, 2, 2] * z
            need = max(need, 1e-3 - Z + 1e-9)
            need = max(need, (X / his[0] if X >= 0 else X / los[0]) - Z)
            need = max(need, (Y / his[1] if Y >= 0 else Y / los[1]) - Z)
        radius = np.sqrt(r2)
        d = max(need, radius * 1.01)
        out[c] = d * (1 + 1e-9) if ok and d <= radius * 50.0 else np.nan
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _projected_centres(Ks, R, eyes, points):  # pragma: no cover - compiled
    """(C, 2): per camera, the centre of the points' projected extent (u and v, pixels)."""
    C, P = eyes.shape[0], points.shape[0]
    out = np.empty((C, 2))
    for c in range(C):
        lo_u, hi_u, lo_v, hi_v = np.inf, -np.inf, np.inf, -np.inf
        for i in range(P):
            x = points[i, 0] - eyes[c, 0]
            y = points[i, 1] - eyes[c, 1]
            z = points[i, 2] - eyes[c, 2]
            Z = R[c, 2, 0] * x + R[c, 2, 1] * y + R[c, 2, 2] * z
            u = Ks[c, 0, 0] * (R[c, 0, 0] * x + R[c, 0, 1] * y + R[c, 0, 2] * z) / Z + Ks[c, 0, 2]
            v = Ks[c, 1, 1] * (R[c, 1, 0] * x + R[c, 1, 1] * y + R[c, 1, 2] * z) / Z + Ks[c, 1, 2]
            lo_u, hi_u, lo_v, hi_v = min(lo_u, u), max(hi_u, u), min(lo_v, v), max(hi_v, v)
        out[c, 0] = 0.5 * (lo_u + hi_u)
        out[c, 1] = 0.5 * (lo_v + hi_v)
    return out


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


def rank_points(points: list[np.ndarray]) -> np.ndarray:
    """Every k-th surface sample of each instance, at most RANK_POINTS of them: enough to rank
    candidate viewpoints by frame fill in a FILL_WIDTH-pixel buffer."""
    if len(points) == 0:
        raise ValueError("rank_points needs the surface samples of at least one instance")
    return np.ascontiguousarray(np.concatenate(
        [np.asarray(p, dtype=np.float64).reshape(-1, 3)[::max(1, -(-len(p) // RANK_POINTS))] for p in points]))


@numba.njit(cache=True, nogil=True)
def _splat_cover(points, eyes, rotations, Ks, s, cover):  # pragma: no cover - compiled
    """Marks ``cover[c]`` (H, W) where camera c sees a point (intrinsics scaled by ``s``)."""
    H, W = cover.shape[1], cover.shape[2]
    for c in range(eyes.shape[0]):
        R = rotations[c]
        for i in range(points.shape[0]):
            x, y, z = points[i, 0] - eyes[c, 0], points[i, 1] - eyes[c, 1], points[i, 2] - eyes[c, 2]
            Z = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z
            if not Z > 1e-6:
                continue
            u = (Ks[c, 0, 0] * (R[0, 0] * x + R[0, 1] * y + R[0, 2] * z) / Z + Ks[c, 0, 2]) * s
            v = (Ks[c, 1, 1] * (R[1, 0] * x + R[1, 1] * y + R[1, 2] * z) / Z + Ks[c, 1, 2]) * s
            if u >= 0 and u < W and v >= 0 and v < H:
                cover[c, int(v), int(u)] = True


def frame_fills(Ks: np.ndarray, rotations: np.ndarray, eyes: np.ndarray, points: np.ndarray, width: int,
                height: int) -> np.ndarray:
    """``frame_fill`` of a batch of cameras (intrinsics at ``width`` x ``height``; rotation and eye
    per camera) on the same points, in one compiled pass: what camera choice ranks candidates by."""
    s = FILL_WIDTH / width
    cover = np.zeros((len(eyes), max(1, int(round(height * s))), FILL_WIDTH), dtype=bool)
    _splat_cover(np.ascontiguousarray(points, dtype=np.float64), np.ascontiguousarray(eyes, dtype=np.float64),
                 np.ascontiguousarray(rotations, dtype=np.float64), np.ascontiguousarray(Ks, dtype=np.float64), float(s), cover)
    return _closed_cover(cover)


@numba.njit(cache=True, nogil=True)
def _closed_cover(cover):  # pragma: no cover - compiled
    """Per camera, the share of pixels in ``cover[c]`` or its 3x3 closing (outside the image
    counts as empty): ``scipy.ndimage.binary_closing(cover[c], ones((3, 3)), border_value=0) |
    cover[c]``, averaged, without scipy's per-call cost (0.23 ms of a 1.3 ms try)."""
    C, H, W = cover.shape
    out = np.zeros(C)
    grown = np.zeros((H, W), dtype=np.bool_)
    for c in range(C):
        for y in range(H):
            for x in range(W):
                hit = False
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < H and 0 <= xx < W and cover[c, yy, xx]:
                            hit = True
                grown[y, x] = hit
        n = 0
        for y in range(H):
            for x in range(W):
                if cover[c, y, x]:
                    n += 1
                    continue
                if y == 0 or x == 0 or y == H - 1 or x == W - 1:
                    continue  # erosion with an empty border keeps no border pixel
                keep = True
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        if not grown[y + dy, x + dx]:
                            keep = False
                n += keep
        out[c] = n / (H * W)
    return out


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
HEAVY_AZIMUTH_SPREAD = np.radians(30.0)  # "heavy" viewpoints: azimuth around a line through two instances


def occlusion_ok(fractions: np.ndarray, mode: str, heavy_slack: float = 0.0) -> bool:
    """Whether a view's visible fractions match the occlusion mode of that view ("none"/"heavy";
    "any" accepts everything above the minimum visible fraction). ``heavy_slack`` raises the
    "heavy" bound (the proxy screen's looser rule)."""
    if mode == "none":
        return bool(np.min(fractions) >= NONE_VISIBLE)
    if mode == "heavy":
        return bool(np.sum(fractions <= HEAVY_VISIBLE + heavy_slack) >= max(1, len(fractions) // 3))
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
    proxies: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[dict]:
    """``cfg.views_per_scene`` cameras framing every instance and hiding none (fewer if impossible).

    ``points``: per-instance world surface samples for ranking viewpoints by frame fill (sampled
    from the meshes when not given). ``hull_points``: points whose convex hull contains every
    instance (e.g. the instances' hull vertices; the surface samples' hull when not given), which
    the camera frames.

    Per view, each try draws ``cfg.candidates`` viewpoints, frames them (``_frame_candidates``) and
    checks them in order of frame fill (capped at the target; ties in draw order) with the exact
    z-buffer (``raster_visibility``): the first that shows every instance with at least
    ``min_instance_pixels`` and ``min_visible_fraction`` and matches the view's occlusion mode is
    kept.

    ``proxies``: per instance, coarse world (vertices, faces) (``datagen.proxy_mesh``). With them,
    every view's candidates are first screened on a ``SCREEN_WIDTH``-pixel z-buffer of
    the proxies (``_screen_ok``) and only those that pass get the exact check, except in the last
    ``SCREEN_FREE_TRIES`` tries of a view, which check every candidate. The verdict on a kept view
    is always the exact one.
    """
    points = points if points is not None else [_mesh_points(m) for m in meshes_world]
    ranking = rank_points(points)
    scene = SceneRaster([m.vertices for m in meshes_world], [m.faces for m in meshes_world])
    if proxies is not None and len(proxies) != len(meshes_world):
        raise ValueError(f"sample_cameras: {len(proxies)} proxies for {len(meshes_world)} instances")
    screen = SceneRaster([v for v, _ in proxies], [f for _, f in proxies]) if proxies is not None else None
    if cfg.fill is None:  # the scene's box, as before ``fill`` existed
        lo, hi = aabbs[:, 0].min(axis=0), aabbs[:, 1].max(axis=0)
        frame_pts = np.concatenate([np.where(np.array(b, bool), aabbs[:, 1], aabbs[:, 0]) for b in np.ndindex(2, 2, 2)])
    else:  # the surfaces themselves: a box's empty corners do not push the camera back
        # the hull decides the framing (``fit_distances``): instances' hull vertices as they are
        # (a scene hull over them cost 3-8 ms a scene, more than the compiled fits it saved)
        frame_pts = np.ascontiguousarray(hull_points, dtype=np.float64) if hull_points is not None else _hull_points(points)
        lo, hi = frame_pts.min(axis=0), frame_pts.max(axis=0)
    centre = 0.5 * (lo + hi)
    centres = 0.5 * (aabbs[:, 0] + aabbs[:, 1])
    cams: list[dict] = []
    for _ in range(cfg.views_per_scene):
        # per view: "mixed" draws heavy occlusion for a third of the views, any for the rest
        mode = cfg.occlusion if cfg.occlusion != "mixed" else ("heavy" if rng.uniform() < 1 / 3 else "any")
        elevation = (cfg.elevation_deg[0], min(cfg.elevation_deg[1], 35.0)) if mode == "heavy" else cfg.elevation_deg
        for attempt in range(cfg.tries_per_view):
            screened = screen is not None and attempt < cfg.tries_per_view - SCREEN_FREE_TRIES

            def ok(c: dict) -> bool:
                return (not screened or _screen_ok(c, screen, cfg, mode)) and _view_ok(c, scene, cfg, mode)

            # a few random viewpoints (framed together), best frame fill first: an elongated scene
            # seen along its long side fills a square image better than one seen end-on (and vice
            # versa). Viewpoints that reach the target fill rank equal, in draw order.
            n = cfg.candidates if cfg.fill is not None else 1
            directions, Ks = _draw_viewpoints(rng, n, elevation, centres if mode == "heavy" else None, cfg)
            cam, short = None, []
            for framed in _frame_candidates(Ks, directions, centre, frame_pts, ranking, cfg):
                if framed is None:
                    continue
                if cfg.fill is not None and framed[0] < cfg.fill:
                    short.append(framed)
                elif ok(framed[1]):
                    cam = framed[1]
                    break
            if cam is None:
                short.sort(key=lambda c: -c[0])  # stable: ties keep the draw order
                cam = next((c for _, c in short if ok(c)), None)
            if cam is not None:
                cams.append(cam)
                break
    return cams


def _draw_viewpoints(rng: np.random.Generator, n: int, elevation: tuple[float, float], pair_centres: np.ndarray | None,
                     cfg: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """(directions from the target to the eye (n, 3), intrinsics (n, 3, 3)) of ``n`` random
    viewpoints. With ``pair_centres`` (instance centres; "heavy" views) each looks along a random
    pair of instances, the nearer one in front, instead of from a uniform azimuth: uniform
    viewpoints rarely line instances up (measured on real-asset scenes: 17 z-buffer checks per
    accepted heavy view with uniform azimuths, 11 with pairs)."""
    directions, Ks = np.zeros((n, 3)), np.zeros((n, 3, 3))
    for k in range(n):
        elev = np.radians(rng.uniform(*elevation))
        azim = rng.uniform(0, 2 * np.pi)
        if pair_centres is not None and len(pair_centres) > 1:
            i, j = rng.choice(len(pair_centres), 2, replace=False)
            behind_to_front = pair_centres[j, :2] - pair_centres[i, :2]
            azim = float(np.arctan2(behind_to_front[1], behind_to_front[0])) + rng.normal(0.0, HEAVY_AZIMUTH_SPREAD)
        fov = rng.uniform(*cfg.fov_deg)
        directions[k] = [np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)]
        Ks[k] = intrinsics(fov, cfg.width, cfg.height)
    return directions, Ks


EXACT = (1.0, 1.0, 0.0)  # no slack: the rules as configured


def _view_ok(cam: dict, scene: SceneRaster, cfg: CameraConfig, mode: str, width: int = RASTER_WIDTH,
             slack: tuple[float, float, float] = EXACT) -> bool:
    """Every instance shows enough of itself, and the view matches its occlusion mode, on a
    ``width``-pixel z-buffer of ``scene``. ``slack``: (factor on the minimum pixels, factor on the
    minimum visible fraction, added to the "heavy" bound)."""
    px_scale, frac_scale, heavy_slack = slack
    vis_px, vis_frac = raster_visibility(cam, scene, width=width)
    if np.min(vis_px) < px_scale * cfg.min_instance_pixels or np.min(vis_frac) < frac_scale * cfg.min_visible_fraction:
        return False
    return occlusion_ok(vis_frac, mode, heavy_slack)


SCREEN_WIDTH = 64  # pixels of the proxy z-buffer that screens candidates
SCREEN_FREE_TRIES = 5  # the last tries of a view check every candidate exactly (no view becomes unreachable)
SCREEN_SLACK = (0.75, 0.6, 0.1)  # screen thresholds: x min pixels, x min visible fraction, + heavy fraction


def _screen_ok(cam: dict, proxies: SceneRaster, cfg: CameraConfig, mode: str) -> bool:
    """Worth the exact check? ``_view_ok``'s rules, loosened by ``SCREEN_SLACK``, on the proxies at
    ``SCREEN_WIDTH`` pixels. Measured on the 1386 heavy-view candidates recorded from 60 default
    8-instance scenes of ../shared/assets (proxies of 32 cells): it keeps 149, 84 % of the 115
    that pass the exact check, 65 % of them passing, at about a fifth of an exact check's cost
    (0.25 ms against 1.1 ms on a 171k-triangle scene)."""
    return _view_ok(cam, proxies, cfg, mode, width=SCREEN_WIDTH, slack=SCREEN_SLACK)


def _frame_candidates(Ks: np.ndarray, directions: np.ndarray, centre: np.ndarray, frame_pts: np.ndarray,
                      ranking: np.ndarray, cfg: CameraConfig) -> list[tuple[float, dict] | None]:
    """Per candidate viewpoint (intrinsics, direction from the target to the eye): (estimated frame
    fill capped at ``cfg.fill``, camera) framing ``frame_pts``, or None where no distance frames
    them. With ``cfg.fill`` the camera is aimed at the centre of their projection (perspective puts
    the 3-D centre off-centre; two re-aims) and backed off to about ``fill``. All candidates are
    computed together: a scene's candidates share the points, and numpy's cost per call, not per
    element, is what a per-candidate loop paid for."""
    R = space.look_at_rotations(directions)
    targets = np.repeat(np.asarray(centre, dtype=np.float64)[None], len(directions), axis=0)
    fit = partial(fit_distances, points=frame_pts, width=cfg.width, height=cfg.height, margin=cfg.frame_margin)
    d = fit(Ks, R, targets)
    fills = np.zeros(len(d))
    if cfg.fill is not None:
        aiming = np.isfinite(d)
        for _ in range(2):  # re-aim at the projected points' centre, then fit again
            uv = _projected_centres(Ks, R, np.ascontiguousarray(targets + d[:, None] * directions), frame_pts)
            off = [uv[:, 0] - cfg.width / 2.0, uv[:, 1] - cfg.height / 2.0]
            # R's rows are the camera's x (right) and y (down) axes in the world
            new = targets + d[:, None] * ((off[0] / Ks[:, 0, 0])[:, None] * R[:, 0] + (off[1] / Ks[:, 1, 1])[:, None] * R[:, 1])
            d_new = fit(Ks, R, np.where(aiming[:, None], new, targets))
            aiming &= np.isfinite(d_new)
            targets, d = np.where(aiming[:, None], new, targets), np.where(aiming, d_new, d)
        fills = frame_fills(Ks, R, targets + d[:, None] * directions, ranking, cfg.width, cfg.height)
        # fill ~ 1 / distance^2: back off to about ``fill``
        d = np.where(fills > cfg.fill * 1.05, d * np.sqrt(fills / cfg.fill), d)
        fills = np.minimum(fills, cfg.fill)
    out: list[tuple[float, dict] | None] = []
    for K, direction, t, dist, f in zip(Ks, directions, targets, d, fills):
        if not np.isfinite(dist):
            out.append(None)
            continue
        out.append((float(f), {"K": K.tolist(), "world_to_cam": space.look_at_world_to_cam(t + dist * direction, t).tolist(),
                               "width": cfg.width, "height": cfg.height}))
    return out
