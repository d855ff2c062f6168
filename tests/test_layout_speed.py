"""The faster camera-choice pieces compute the same numbers as the straightforward ones they replace
(issue 14): the scene z-buffer against per-mesh rasters, the frame fill on a per-scene point set,
the written-out look-at, and seeded camera choice that does not depend on anything but its inputs."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from datagen import cameras as C
from iscene_core import space


def _scene(seed: int = 0, n: int = 5) -> tuple[list[trimesh.Trimesh], list[np.ndarray]]:
    """A few boxes and spheres on the floor, close enough to hide each other from low cameras."""
    rng = np.random.default_rng(seed)
    meshes = []
    for i in range(n):
        m = trimesh.creation.box(rng.uniform(0.1, 0.5, 3)) if i % 2 == 0 else trimesh.creation.icosphere(2, rng.uniform(0.05, 0.25))
        m.apply_translation([0.6 * i - 0.3 * n, rng.uniform(-0.3, 0.3), -m.bounds[0, 2]])  # apart: none hides inside another
        meshes.append(m)
    return meshes, [C._mesh_points(m, 3000) for m in meshes]


def _random_camera(rng: np.random.Generator, width: int = 256) -> dict:
    elev, azim = np.radians(rng.uniform(5, 60)), rng.uniform(0, 2 * np.pi)
    d = rng.uniform(1.5, 4.0)
    eye = d * np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    return {"K": C.intrinsics(rng.uniform(35, 65), width, width).tolist(),
            "world_to_cam": space.look_at_world_to_cam(eye, np.array([0.0, 0.0, 0.2])).tolist(),
            "width": width, "height": width}


def test_scene_zbuffer_equals_per_mesh_rasters_and_frame_fill_is_bit_identical():
    from datagen.raster import SceneRaster, rasterize

    meshes, points = _scene()
    ranking = C.rank_points(points)
    scene = SceneRaster([m.vertices for m in meshes], [m.faces for m in meshes])
    rng = np.random.default_rng(1)
    occluded = 0
    for _ in range(25):
        cam = _random_camera(rng, width=128)
        # the straightforward check: each mesh alone, then the nearest one per pixel (ties: lower index)
        K, w2c = np.asarray(cam["K"]), np.asarray(cam["world_to_cam"])
        depth, ids, amodal = np.full((128, 128), np.inf), np.full((128, 128), -1), []
        for i, m in enumerate(meshes):
            mask, d = rasterize(K, w2c, m.vertices, m.faces, 128, 128, with_depth=True)
            amodal.append(mask.sum())
            ids[d < depth], depth = i, np.minimum(depth, d)
        visible = np.bincount(ids[ids >= 0], minlength=len(meshes))
        px, frac = C.raster_visibility(cam, scene)
        assert np.array_equal(px, visible) and np.array_equal(frac, visible / np.maximum(amodal, 1))
        assert np.array_equal(C.raster_visibility(cam, meshes)[0], px)
        fill = C.frame_fill(cam, points)
        R = np.asarray(cam["world_to_cam"])[:3, :3]
        eye = -R.T @ np.asarray(cam["world_to_cam"])[:3, 3]
        batched = C.frame_fills(K[None], R[None], eye[None], np.concatenate(points), 128, 128)[0]
        assert abs(batched - fill) < 0.02  # the same splat, other rounding of the projection
        assert abs(C.frame_fills(K[None], R[None], eye[None], ranking, 128, 128)[0] - fill) < 0.1  # the subset
        occluded += bool(frac.min() < 0.9)
    assert occluded >= 3  # the cameras exercised the depth test, not only free views


def test_ranking_subset_is_bounded_per_instance_and_keeps_small_instances_whole():
    big = np.random.default_rng(0).normal(size=(10 * C.RANK_POINTS, 3))
    small = np.zeros((40, 3))
    r = C.rank_points([big, small])
    assert len(r) <= C.RANK_POINTS + 40
    assert np.sum(np.all(r == 0, axis=1)) == 40
    with pytest.raises(ValueError):
        C.rank_points([])


def _inside(cam: dict, pts: np.ndarray, margin: float) -> np.ndarray:
    uv, z = space.project_points(np.asarray(cam["K"]), np.asarray(cam["world_to_cam"]), pts)
    w, h = cam["width"], cam["height"]
    return (z > 1e-3) & (uv[:, 0] >= margin * w - 1e-6) & (uv[:, 0] <= w - margin * w + 1e-6) \
        & (uv[:, 1] >= margin * h - 1e-6) & (uv[:, 1] <= h - margin * h + 1e-6)


def test_batched_framing_frames_every_point_at_the_smallest_distance_and_estimates_the_fill():
    meshes, points = _scene(4)
    frame_pts = C._hull_points(points)
    cfg = C.CameraConfig(width=160, height=120, fill=0.4)
    rng = np.random.default_rng(3)
    n = 40
    elev, azim = np.radians(rng.uniform(5, 60, n)), rng.uniform(0, 2 * np.pi, n)
    dirs = np.column_stack([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    Ks = np.stack([C.intrinsics(f, cfg.width, cfg.height) for f in rng.uniform(35, 65, n)])
    centre = 0.5 * (frame_pts.min(axis=0) + frame_pts.max(axis=0))
    # the closed-form distance is the smallest that frames every point: 0.5 % closer loses one
    R = space.look_at_rotations(dirs)
    d = C.fit_distances(Ks, R, np.repeat(centre[None], n, 0), frame_pts, cfg.width, cfg.height, cfg.frame_margin)
    for K, direction, dist in zip(Ks, dirs, d):
        cam = lambda t: {"K": K, "world_to_cam": space.look_at_world_to_cam(centre + t * direction, centre),
                         "width": cfg.width, "height": cfg.height}
        assert _inside(cam(dist), frame_pts, cfg.frame_margin).all()
        radius = np.max(np.linalg.norm(frame_pts - centre, axis=1))
        assert dist <= radius * 1.0101 or not _inside(cam(0.995 * dist), frame_pts, cfg.frame_margin).all()
    framed = C._frame_candidates(Ks, dirs, centre, frame_pts, C.rank_points(points), cfg)
    assert all(f is not None for f in framed)
    for fill, cam in framed:
        assert _inside(cam, frame_pts, cfg.frame_margin).all()  # re-aimed and backed off: still framed
        true = C.frame_fill(cam, points)
        assert fill <= cfg.fill and abs(min(true, cfg.fill) - fill) < 0.1, (fill, true)


def _look_at_with_np_cross(eye, target, up=(0.0, 0.0, 1.0)):
    fwd = np.asarray(target, dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    rot = np.stack([right, np.cross(fwd, right), fwd])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, -rot @ eye
    return out


def test_written_out_look_at_is_bit_identical():
    rng = np.random.default_rng(2)
    for _ in range(2000):
        eye, target, up = rng.normal(size=3) * rng.uniform(0.1, 10), rng.normal(size=3), rng.normal(size=3)
        assert np.array_equal(space.look_at_world_to_cam(eye, target), _look_at_with_np_cross(eye, target))
        assert np.array_equal(space.look_at_world_to_cam(eye, target, up), _look_at_with_np_cross(eye, target, up))
    with pytest.raises(ValueError):
        space.look_at_world_to_cam(np.array([0.0, 0.0, 2.0]), np.zeros(3))
    # the batched rotations are the single look-at's, viewpoint by viewpoint
    dirs = rng.normal(size=(50, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    target = rng.normal(size=3)
    single = np.stack([space.look_at_world_to_cam(target + 3.0 * d, target)[:3, :3] for d in dirs])
    np.testing.assert_allclose(space.look_at_rotations(dirs), single, atol=1e-12)


def test_camera_choice_is_a_function_of_its_inputs_and_obeys_its_rules():
    meshes, points = _scene(3)
    aabbs = np.stack([m.bounds for m in meshes])
    cfg = C.CameraConfig(views_per_scene=3, width=128, height=128, occlusion="any")
    a = C.sample_cameras(meshes, aabbs, np.random.default_rng(5), cfg, points=points)
    b = C.sample_cameras(meshes, aabbs, np.random.default_rng(5), cfg, points=[p.copy() for p in points])
    assert a == b and len(a) == 3
    for cam in a:
        px, frac = C.raster_visibility(cam, meshes)
        assert px.min() >= cfg.min_instance_pixels and frac.min() >= cfg.min_visible_fraction


def _fit_distances_numpy(Ks, rotations, targets, points, width, height, margin):
    """The vectorised closed form ``fit_distances`` had before it was compiled: the reference."""
    rel = np.asarray(points, dtype=np.float64)[None] - targets[:, None]
    radius = np.sqrt(np.max(np.sum(rel * rel, axis=2), axis=1))
    p = rel @ rotations.transpose(0, 2, 1)
    need = np.max(1e-3 - p[..., 2] + 1e-9, axis=1)
    ok = np.ones(len(targets), dtype=bool)
    for axis, size, m in ((0, width, margin * width), (1, height, margin * height)):
        f, c = Ks[:, axis, axis], Ks[:, axis, 2]
        lo, hi = (m - c) / f, (size - m - c) / f
        ok &= (lo < 0) & (hi > 0)
        x = p[..., axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.maximum(need, np.max(np.where(x >= 0, x / hi[:, None], x / lo[:, None]) - p[..., 2], axis=1))
    d = np.maximum(need, radius * 1.01)
    return np.where(ok & (d <= radius * 50.0), d * (1 + 1e-9), np.nan)


def test_compiled_framing_equals_the_numpy_forms():
    """``fit_distances`` (compiled) against its former numpy closed form, and the compiled frame-fill
    closing against scipy's ``binary_closing``, on random cameras and point sets, including
    cameras whose intrinsics cannot frame anything (NaN) and points given as non-hull clouds."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for trial in range(20):
        n, P = 7, int(rng.integers(4, 3000))
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        R = space.look_at_rotations(dirs)
        Ks = np.stack([C.intrinsics(rng.uniform(20, 90), 200, 150) for _ in range(n)])
        Ks[0, 0, 2] = -5.0  # principal point outside the image: no distance frames anything
        pts = rng.normal(size=(P, 3)) * rng.uniform(0.1, 3.0, 3)
        targets = pts.mean(axis=0) + rng.normal(size=(n, 3)) * 0.1
        got = C.fit_distances(Ks, R, targets, pts, 200, 150, 0.03)
        want = _fit_distances_numpy(Ks, R, targets, pts, 200, 150, 0.03)
        assert np.isnan(got[0]) and np.array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-12)
        cover = rng.random((5, 36, int(rng.integers(20, 50)))) < rng.uniform(0.05, 0.95)
        scipy_fill = (ndimage.binary_closing(cover, structure=np.ones((1, 3, 3), bool), border_value=0) | cover).mean(axis=(1, 2))
        assert np.array_equal(C._closed_cover(cover), scipy_fill)


def test_proxy_screened_camera_choice_keeps_only_exactly_checked_views(shared_assets):
    """Proxies keep the silhouette (coverage IoU at the screen's resolution) at a fraction of the
    triangles, and camera choice with a screen still returns only views that pass the exact check."""
    from datagen.proxy_mesh import cluster_simplify
    from datagen.raster import rasterize

    mesh = trimesh.load(shared_assets / "bunny.ply", force="mesh")
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(0.5 / mesh.extents.max())
    v, f = cluster_simplify(mesh.vertices, mesh.faces, 32)
    assert len(f) * 2 < len(mesh.faces)  # 16k -> 5.5k triangles
    rng = np.random.default_rng(3)
    for _ in range(10):
        cam = _random_camera(rng, width=64)
        K, w2c = np.asarray(cam["K"]), np.asarray(cam["world_to_cam"])
        a, b = rasterize(K, w2c, mesh.vertices, mesh.faces, 64, 64), rasterize(K, w2c, v, f, 64, 64)
        assert (a & b).sum() / (a | b).sum() > 0.85
    with pytest.raises(ValueError):
        cluster_simplify(mesh.vertices, mesh.faces, 0)

    meshes, points = _scene(4, n=6)
    aabbs = np.stack([m.bounds for m in meshes])
    proxies = [cluster_simplify(m.vertices, m.faces, 8) for m in meshes]
    for mode in ("heavy", "any"):
        cfg = C.CameraConfig(views_per_scene=3, width=128, height=128, occlusion=mode)
        cams = C.sample_cameras(meshes, aabbs, np.random.default_rng(5), cfg, points=points, proxies=proxies)
        assert len(cams) == 3
        for cam in cams:
            px, frac = C.raster_visibility(cam, meshes)
            assert px.min() >= cfg.min_instance_pixels and frac.min() >= cfg.min_visible_fraction
            assert C.occlusion_ok(frac, mode)
    with pytest.raises(ValueError, match="proxies"):
        C.sample_cameras(meshes, aabbs, np.random.default_rng(5), cfg, points=points, proxies=proxies[:2])
