"""Metrics against hand-computed cases; marching-cubes export lands in the grid where space.py says."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.ndimage import binary_dilation

from iscene_core.mesh_export import export_scene, logits_to_mesh, save_voxels
from iscene_core.metrics import chamfer_distance, f_score, point_metrics, sample_surface, voxel_iou
from iscene_core.space import coords_to_dense, grid_to_voxel, voxel_centers


def test_voxel_iou_hand_computed_dense_and_coords():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :2] = True  # {(0,0,0), (0,0,1)}
    b[0, 0, 1:3] = True  # {(0,0,1), (0,0,2)} -> 1 shared of 3
    assert voxel_iou(a, b) == pytest.approx(1 / 3)
    assert voxel_iou(np.argwhere(a), np.argwhere(b)) == pytest.approx(1 / 3)
    # duplicates in coordinate lists do not count twice; identical sets give 1, disjoint 0
    ca = np.array([[1, 2, 3], [1, 2, 3], [4, 5, 6]], np.uint8)
    assert voxel_iou(ca, ca[1:]) == 1.0
    assert voxel_iou(ca, np.array([[0, 0, 0]])) == 0.0
    assert voxel_iou(np.zeros((0, 3)), np.zeros((0, 3))) == 1.0
    # large grids: coordinate form equals dense form
    rng = np.random.default_rng(0)
    da, db = rng.random((64,) * 3) < 0.1, rng.random((64,) * 3) < 0.1
    assert voxel_iou(np.argwhere(da), np.argwhere(db)) == pytest.approx(voxel_iou(da, db))
    with pytest.raises(ValueError, match="shapes"):
        voxel_iou(np.zeros((4, 4, 4)), np.zeros((8, 8, 8)))


def test_chamfer_and_fscore_hand_computed():
    p = np.array([[0.0, 0, 0], [1, 0, 0]])
    q = np.array([[0.0, 0, 0], [1, 0.5, 0]])
    # p->q: 0, 0.5 (mean 0.25); q->p: 0, 0.5 (mean 0.25) -> 0.25; squared: (0.125 + 0.125) / 2
    assert chamfer_distance(p, q) == pytest.approx(0.25)
    assert chamfer_distance(p, q, squared=True) == pytest.approx(0.125)
    assert f_score(p, q, 0.1) == pytest.approx(0.5) and f_score(p, q, 0.6) == pytest.approx(1.0)
    # asymmetric case: q has an extra far point -> precision 1, recall 2/3
    q2 = np.vstack([q, [[0, 3.0, 0]]])
    m = point_metrics(p, q2, 0.6)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3)
    assert m["f_score"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert m["chamfer"] == pytest.approx(0.5 * (0.25 + (0 + 0.5 + 3.0) / 3))
    assert chamfer_distance(p, np.zeros((0, 3))) == float("inf") and f_score(p, np.zeros((0, 3)), 1.0) == 0.0


def test_surface_samples_of_a_translated_cube():
    cube = trimesh.creation.box((1, 1, 1))
    a = sample_surface(cube, 20000, seed=0)
    assert np.allclose(a, sample_surface(cube, 20000, seed=0))  # reproducible
    b = sample_surface(cube, 20000, seed=1)
    assert chamfer_distance(a, b) < 0.01 and f_score(a, b, 0.02) > 0.98
    shifted = sample_surface(cube.copy().apply_translation([0, 0, 0.3]), 20000, seed=1)
    # side faces overlap partly; top/bottom samples are 0.3 away from their old plane
    assert 0.05 < chamfer_distance(a, shifted) < 0.3 and f_score(a, shifted, 0.02) < 0.8


def _ball(centre, radius, R=64):
    g = voxel_centers(np.indices((R,) * 3).reshape(3, -1).T, R)
    return (radius - np.linalg.norm(g - np.asarray(centre), axis=1)).reshape((R,) * 3)


def test_marching_cubes_mesh_sits_where_the_voxels_are():
    centre, radius = np.array([0.1, -0.2, 0.05]), 0.2
    logits = _ball(centre, radius)
    mesh = logits_to_mesh(logits)
    assert mesh.is_watertight and mesh.volume > 0  # closed, outward normals
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.03)
    assert np.allclose(mesh.centroid, centre, atol=2e-3)
    # every vertex lies on the sphere to within a voxel, and in a voxel next to an occupied one (26-neighbourhood)
    assert np.abs(np.linalg.norm(mesh.vertices - centre, axis=1) - radius).max() < 1 / 64
    occ = logits > 0
    vox = grid_to_voxel(mesh.vertices)
    near = binary_dilation(occ, np.ones((3, 3, 3), bool))  # a marching cube with an occupied corner
    assert near[vox[:, 0], vox[:, 1], vox[:, 2]].all()
    assert logits_to_mesh(-np.ones((8, 8, 8))) is None
    with pytest.raises(ValueError, match="cubic"):
        logits_to_mesh(np.zeros((4, 4, 5)))


def test_full_border_volume_is_closed_at_the_grid_bound():
    mesh = logits_to_mesh(np.ones((16, 16, 16)))
    assert mesh.is_watertight
    # surface between the outermost voxel centre and the padding: within half a voxel of +-0.5
    assert np.allclose(np.abs(mesh.bounds), 0.5 - 0.5 / 16, atol=1e-3)


def test_glb_has_a_node_per_instance_and_the_transform(tmp_path):
    flip = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    logits = {"instance_1": _ball([0.2, 0, 0], 0.1), "instance_3": _ball([-0.2, 0.1, 0], 0.15), "instance_4": -np.ones((64,) * 3)}
    faces = export_scene(logits, tmp_path / "s.glb", node_transform=flip)
    assert faces["instance_4"] == 0 and faces["instance_1"] > 0 and faces["instance_3"] > 0
    scene = trimesh.load(tmp_path / "s.glb", force="scene")
    nodes = set(scene.graph.nodes) - {scene.graph.base_frame}
    assert nodes == {"instance_1", "instance_3", "instance_4"}
    assert sorted(scene.graph.nodes_geometry) == ["instance_1", "instance_3"]
    for name in ("instance_1", "instance_3", "instance_4"):
        assert np.allclose(scene.graph[name][0], flip)
    geom = scene.geometry[scene.graph["instance_3"][1]]
    assert np.allclose(geom.vertices.mean(0), [-0.2, 0.1, 0], atol=5e-3)  # mesh data stays in grid coords
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_save_voxels_round_trip(tmp_path):
    coords = np.argwhere(_ball([0, 0, 0], 0.1) > 0).astype(np.uint8)
    save_voxels(tmp_path / "v.npz", {"scene": coords, "instance_2": coords[:5]})
    data = np.load(tmp_path / "v.npz")
    assert set(data.files) == {"scene", "instance_2"} and data["scene"].dtype == np.uint8
    assert np.array_equal(coords_to_dense(data["scene"]), coords_to_dense(coords))
    assert not list(tmp_path.glob(".*"))
