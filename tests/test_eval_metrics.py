"""iscene-eval scoring core without a bench: distances, boxes, alignment, physics (pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from iscene_core.evaluation import align as al
from iscene_core.evaluation.boxes import aabb, box_iou
from iscene_core.evaluation.physics_metrics import physics_scores
from iscene_core.evaluation.pointmetrics import PointSpec, point_scores
from iscene_core.evaluation.protocols import PROTOCOLS, score_scene


def _brute(p, q, spec: PointSpec) -> dict:
    """Independent reference: full distance matrix, no KD-tree."""
    d = np.sqrt(((p[:, None, :] - q[None, :, :]) ** 2).sum(-1))
    a, b = d.min(axis=1), d.min(axis=0)
    ca, cb = (a**2, b**2) if spec.cd_squared else (a, b)
    cd = ca.mean() + cb.mean()
    if spec.cd_reduce == "half":
        cd /= 2
    fa, fb = (a**2, b**2) if spec.f_squared else (a, b)
    out = {"cd": cd}
    for k, tau in enumerate(spec.taus):
        prec = np.mean(fa < tau) if spec.f_strict else np.mean(fa <= tau)
        rec = np.mean(fb < tau) if spec.f_strict else np.mean(fb <= tau)
        f = 0.0 if prec + rec == 0 else 200 * prec * rec / (prec + rec)
        out["f" if k == 0 else f"f@{tau:g}"] = f
    return out


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_cd_and_f_agree_with_brute_force(name):
    spec = PROTOCOLS[name].spec
    rng = np.random.default_rng(1)
    for trial in range(5):
        p = rng.normal(size=(int(rng.integers(50, 400)), 3)) * 0.3
        q = rng.normal(size=(int(rng.integers(50, 400)), 3)) * 0.3 + 0.05 * trial
        got, ref = point_scores(p, q, spec), _brute(p, q, spec)
        assert got["cd"] == pytest.approx(ref["cd"], rel=1e-12, abs=1e-15)
        for k in ref:
            if k.startswith("f"):
                assert got[k] == pytest.approx(ref[k], abs=1e-9), (k, trial)
    # the variants really differ: squared vs plain, summed vs halved
    assert point_scores(p, q, PointSpec(cd_squared=False, cd_reduce="half"))["cd"] != point_scores(p, q, PointSpec())["cd"]


def test_box_iou_translation_and_scale_analytic():
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([2.0, 1.0, 1.0])
    assert box_iou((lo, hi), (lo, hi)) == 1.0
    t = 0.5  # shift along x by a quarter of the length: overlap 1.5 of 2
    assert box_iou((lo, hi), (lo + [t, 0, 0], hi + [t, 0, 0])) == pytest.approx(1.5 / 2.5)
    # uniform scale s about the min corner: IoU = 1 / s^3
    s = 1.3
    assert box_iou((lo, hi), (lo, lo + s * (hi - lo))) == pytest.approx(1 / s**3)
    assert box_iou((lo, hi), (lo + 5, hi + 5)) == 0.0


def _random_rotation(rng, max_deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return trimesh.transformations.rotation_matrix(np.deg2rad(rng.uniform(-max_deg, max_deg)), axis)


@pytest.mark.parametrize("method", ["icp", "robust_icp"])
def test_icp_recovers_rigid_transform(method):
    rng = np.random.default_rng(0)
    mesh = trimesh.creation.box([1.0, 0.6, 0.3])
    mesh = trimesh.util.concatenate([mesh, trimesh.creation.icosphere(radius=0.2).apply_translation([0.8, 0.2, 0.1])])
    pts, _ = trimesh.sample.sample_surface(mesh, 4000, seed=1)
    T = _random_rotation(rng, 12)
    T[:3, 3] = rng.uniform(-0.05, 0.05, 3)
    moved = al.apply(T, pts)
    est = al.align(method, moved, pts, iters=200, tol=1e-12)
    assert np.abs(est @ T - np.eye(4)).max() < 1e-3


def test_scale_rigid_recovers_similarity():
    rng = np.random.default_rng(2)
    mesh = trimesh.creation.box([1.0, 0.5, 0.25])
    pts, _ = trimesh.sample.sample_surface(mesh, 3000, seed=3)
    T = trimesh.transformations.rotation_matrix(0.4, [0, 0, 1])
    T[:3, :3] *= 1.7
    T[:3, 3] = [0.3, -0.2, 0.1]
    src = al.apply(T, pts)
    est = al.align("scale_rigid", src, pts, restarts=8)
    assert np.abs(al.apply(est, src) - pts).max() < 2e-2


def test_filterreg_improves_and_guard_keeps_identity():
    rng = np.random.default_rng(4)
    pts = rng.uniform(-1, 1, size=(1500, 3)) * [1.0, 0.5, 0.3]
    shifted = pts + [0.2, -0.1, 0.05]
    est = al.align("filterreg", shifted, pts)
    assert np.abs(al.apply(est, shifted) - pts).mean() < 0.05
    for m in al.METHODS:
        assert np.allclose(al.align(m, pts, pts), np.eye(4), atol=1e-9), m


def _cube_coords(lo, hi):
    g = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    return g


def test_interpenetration_share_is_exact():
    a = _cube_coords((10, 10, 0), (20, 20, 10))  # 1000 voxels
    b = _cube_coords((15, 10, 0), (25, 20, 10))  # overlaps a in 5*10*10 = 500 voxels
    ph = physics_scores({1: a, 2: b}, np.array([0, 0, 1.0]), 64)
    assert ph["per_instance"]["1"]["interpenetration"] == pytest.approx(0.5)
    assert ph["interpenetration"] == pytest.approx(0.5)
    far = _cube_coords((40, 40, 0), (45, 45, 5))
    assert physics_scores({1: a, 2: far}, np.array([0, 0, 1.0]), 64)["interpenetration"] == 0.0


def test_floating_detects_unsupported_instance_only():
    up = np.array([0, 0, 1.0])
    table = _cube_coords((10, 10, 0), (30, 30, 10))
    on_table = _cube_coords((12, 12, 10), (16, 16, 14))  # directly on top: supported
    hovering = _cube_coords((20, 20, 14), (24, 24, 18))  # 4 voxels above the table top
    beside = _cube_coords((40, 40, 0), (44, 44, 4))  # on the floor
    ph = physics_scores({1: table, 2: on_table, 3: hovering, 4: beside}, up, 64)
    flags = {k: v["floating"] for k, v in ph["per_instance"].items()}
    assert flags == {"1": False, "2": False, "3": True, "4": False}
    assert ph["floating"] == pytest.approx(0.25)


def _scene():
    a = trimesh.creation.box([0.6, 0.6, 0.6]).apply_translation([0, 3, 0])
    b = trimesh.creation.box([0.4, 0.4, 0.8]).apply_translation([1, 3.5, 0.1])
    c = trimesh.creation.icosphere(radius=0.3).apply_translation([-1, 3.2, 0])
    return {1: a, 2: b, 3: c}


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_missing_and_extra_instances_follow_the_protocol(name):
    gt = _scene()
    pred = {1: gt[1].copy(), 3: gt[3].copy(), 7: trimesh.creation.box([0.2, 0.2, 0.2]).apply_translation([0, 2.5, 0])}
    row = score_scene(PROTOCOLS[name], "s", gt, pred, points=500)
    assert row["missing"] == [2] and row["extra"] == [7]
    if name == "scenegen":  # same count (3 vs 3): paired in id order, as SceneGen pairs by order
        assert row["status"] == "ok" and "id order" in row["message"]
        fewer = score_scene(PROTOCOLS[name], "s", gt, {1: gt[1].copy()}, points=500)
        assert fewer["status"] == "skipped" and "drops" in fewer["message"]
        return
    assert row["status"] == "ok"
    missing = [o for o in row["objects"] if o["id"] == 2][0]
    assert missing["status"] == "missing" and missing["iou_b"] == 0.0
    if PROTOCOLS[name].object_level:
        assert missing["f"] == 0.0 and missing["cd"] is None
        assert row["f_o"] == pytest.approx(200.0 / 3)  # two perfect objects, one missing
    else:
        assert row["f_o"] is None and row["cd_s"] > 0
    # an empty prediction never crashes
    empty = score_scene(PROTOCOLS[name], "s", gt, {}, points=200)
    assert empty["status"] in ("ok", "skipped")
    if empty["status"] == "ok":
        assert empty["f_s"] == 0.0 and empty["iou_b"] == 0.0


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_gt_against_itself_is_perfect_on_meshes(name):
    gt = _scene()
    row = score_scene(PROTOCOLS[name], "s", gt, {i: m.copy() for i, m in gt.items()}, points=2000,
                      camera={"K": [[100, 0, 64], [0, 100, 64], [0, 0, 1]], "width": 128, "height": 128},
                      view_to_cam=np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))
    assert row["status"] == "ok"
    assert row["cd_s"] == pytest.approx(0.0, abs=1e-20) and row["f_s"] == 100.0 and row["iou_b"] == pytest.approx(1.0)
