"""Settling: real-mesh scenes end physically at rest, checked independently of the settler.

The checker (tests/layout_checks.check_at_rest) rebuilds the scene from the spec and the asset files
with trimesh + fcl only: exact point-to-mesh distances, no PyBullet, no layout code.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import trimesh

from assets_manifest import build_catalog, load_manifest
from datagen import physics
from datagen.errors import SceneFailure
from datagen.layout import LayoutConfig, RandomSceneSource
from datagen.settle import Body, SettleConfig, SettleError, settle_scene
from tests.layout_checks import check_at_rest, check_scene, world_meshes

SMALL = dict(views_per_scene=1, width=96, height=96)


@pytest.fixture(scope="module")
def shared_records(shared_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("settle_catalog")
    # the checker's exact point-to-mesh distances are slow on the 115k-face cloth; everything else
    return [r for r in load_manifest(build_catalog("dir", out, inputs=shared_assets, progress=False)) if r.faces <= 50000]


def _box_body(rot: np.ndarray, lift: float, size: float = 0.2) -> Body:
    mesh = trimesh.creation.box((size, size, size))
    mesh.apply_translation([0, 0, size / 2])
    return Body(("box", size), mesh, np.array([0.0, 0.0, size / 2]), physics.Shapes(mesh), rot,
                np.array([0.0, 0.0, lift]), 0, size)


@pytest.mark.slow
def test_settled_real_mesh_scenes_are_at_rest(shared_records):
    src = RandomSceneSource(shared_records, LayoutConfig(min_instances=3, max_instances=6, **SMALL), 11)
    checked = stacked = 0
    for i in range(6):
        try:
            spec = src.spec(i)
        except SceneFailure as exc:  # allowed, never half-valid
            assert "no valid scene" in exc.reason
            continue
        meshes = world_meshes(spec)
        assert check_at_rest(spec, meshes) == [], spec["scene_id"]
        assert check_scene(spec, meshes) == [], spec["scene_id"]
        assert spec["physics"]["engine"] == "pybullet"
        on_top = {(r["subject"], r["object"]) for r in spec["relations"] if r["relation"] == "on_top_of"}
        assert on_top == {(k["index"], k["support"]) for k in spec["instances"] if k["support"]}
        checked += 1
        stacked += sum(k["support"] != 0 for k in spec["instances"])
    assert checked >= 4


def test_checker_catches_hovering_tilted_and_penetrating_instances(shared_records):
    """The independent checker is not vacuous: small perturbations of a settled scene fail it."""
    src = RandomSceneSource(shared_records, LayoutConfig(min_instances=2, max_instances=2, relation_probs={"left_of": 1.0}, **SMALL), 3)
    spec = src.spec(0)
    assert check_at_rest(spec) == []

    def moved(k: int, m: np.ndarray) -> dict:
        s = copy.deepcopy(spec)
        s["instances"][k]["object_to_world"] = (m @ np.asarray(s["instances"][k]["object_to_world"])).tolist()
        return s

    up = np.eye(4)
    up[2, 3] = 0.003
    assert any("hovers" in e for e in check_at_rest(moved(0, up)))
    down = np.eye(4)
    down[2, 3] = -0.004
    assert any("penetrates the floor" in e for e in check_at_rest(moved(1, down)))
    # tilt instance 1 by 8 degrees about a horizontal axis through its lowest point: one side lifts
    m0 = world_meshes(spec)[0]
    pivot = m0.vertices[np.argmin(m0.vertices[:, 2])]
    c, s_ = np.cos(np.radians(8)), np.sin(np.radians(8))
    tilt = np.eye(4)
    tilt[:3, :3] = [[c, 0, s_], [0, 1, 0], [-s_, 0, c]]
    tilt[:3, 3] = pivot - tilt[:3, :3] @ pivot
    assert check_at_rest(moved(0, tilt)) != []


def test_settling_corrects_small_errors_and_rejects_tipping():
    cfg = SettleConfig()
    # 3 mm in the air and tilted 2 degrees: it drops flat onto the floor, within tolerance
    c, s = np.cos(np.radians(2)), np.sin(np.radians(2))
    res = settle_scene([_box_body(np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), 0.003)], cfg)
    low = (_box_body(np.eye(3), 0).mesh.vertices @ res.rot[0].T + res.t[0])[:, 2]
    assert res.support == [0] and res.rotation_deg[0] < 2.5
    assert 0 < low.min() <= cfg.rest_gap + 1e-6 and np.ptp(np.sort(low)[:4]) < 1e-4  # flat on its face
    # balanced on an edge at 30 degrees: it falls over, far beyond the tolerance
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    with pytest.raises(SettleError, match="instance 1"):
        settle_scene([_box_body(np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), 0.03)], cfg)


def test_stacked_box_rests_on_its_support():
    lower, upper = _box_body(np.eye(3), 0.001, 0.4), _box_body(np.eye(3), 0.403, 0.1)
    upper.support = 1
    res = settle_scene([lower, upper])
    assert res.support == [0, 1]
    top = (upper.mesh.vertices @ res.rot[1].T + res.t[1])[:, 2].min()
    table = (lower.mesh.vertices @ res.rot[0].T + res.t[0])[:, 2].max()
    assert 0 < top - table <= SettleConfig().rest_gap + 1e-4


def test_a_shape_pybullet_cannot_build_is_a_settle_error_not_a_crash():
    """An empty hull made PyBullet look for a mesh file named './' and raise pybullet.error, which
    killed a layout run on real assets; it must cost that scene only (SettleError is recorded)."""
    import numpy as np

    from datagen.settle import SettleConfig, SettleError, _world

    world = _world()
    world.configure(SettleConfig())
    with pytest.raises(SettleError, match="too few"):
        world._mesh_shape("asset empty", np.zeros((0, 3)))


def _slab_body(unwelded: bool, subdivisions: int, size: float = 0.4) -> Body:
    """A 0.4 m slab (a box subdivided into many triangles); ``unwelded``: every triangle keeps its
    own three vertices, as an STL stores them."""
    mesh = trimesh.creation.box((size, size, size / 4))
    for _ in range(subdivisions):
        mesh = mesh.subdivide()
    if unwelded:
        mesh = trimesh.Trimesh(mesh.triangles.reshape(-1, 3), np.arange(3 * len(mesh.faces)).reshape(-1, 3), process=False)
    mesh.apply_translation([0, 0, size / 8])
    return Body(("slab", unwelded, subdivisions), mesh, np.array([0.0, 0.0, size / 8]), physics.Shapes(mesh), np.eye(3),
                np.array([0.0, 0.0, 0.001]), 0, size)


def test_a_support_stored_as_separate_triangle_corners_settles():
    """An STL support (every triangle's corners stored apart: 147k vertices here, 24.6k places) is
    past PyBullet's 131072 vertices per shape unless its vertices are welded: before, it could
    never carry anything (8 of 119 settled real-asset scenes failed on counter.unitsmm.STL)."""
    lower = _slab_body(unwelded=True, subdivisions=6)
    assert len(lower.mesh.vertices) > 131072
    upper = _box_body(np.eye(3), 0.1 + 0.002, 0.1)
    upper.support = 1
    res = settle_scene([lower, upper])
    assert res.support == [0, 1]


def test_a_support_past_pybullets_limits_is_named_in_the_settle_error():
    """Past PyBullet's limits after welding (here 196k triangles), the scene fails with a reason
    naming the limit, not a bare "createCollisionShape failed" or a SystemError."""
    lower = _slab_body(unwelded=False, subdivisions=7)
    upper = _box_body(np.eye(3), 0.1 + 0.002, 0.1)
    upper.support = 1
    with pytest.raises(SettleError, match="above PyBullet's limit"):
        settle_scene([lower, upper])
