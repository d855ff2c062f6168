"""Surface voxeliser against a plain, independent exact reference (every triangle-box overlap)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from assets_manifest import load_mesh
from datagen.voxelize import voxelize_surface


def _overlap_reference(tri: np.ndarray, centres: np.ndarray, h: float) -> np.ndarray:
    """Separating-axis test of one triangle against many closed cubes, written plainly: all 13
    axes built generically with np.cross (no special-casing), vectorised over the cubes only."""
    v = tri[None, :, :] - centres[:, None, :]  # (M, 3 vertices, 3)
    edges = [tri[1] - tri[0], tri[2] - tri[1], tri[0] - tri[2]]
    axes = [np.eye(3)[i] for i in range(3)] + [np.cross(edges[0], edges[1])]
    axes += [np.cross(np.eye(3)[i], e) for i in range(3) for e in edges]
    ok = np.ones(len(centres), dtype=bool)
    for a in axes:
        if not np.any(a):
            continue
        p = v @ a  # (M, 3)
        r = h * float(np.sum(np.abs(a)))
        ok &= ~((p.min(axis=1) > r) | (p.max(axis=1) < -r))
    return ok


def reference_voxels(vertices: np.ndarray, faces: np.ndarray, R: int = 64) -> set[tuple[int, int, int]]:
    out = set()
    for f in faces:
        tri = (vertices[f] + 0.5) * R
        lo = np.clip(np.floor(tri.min(0)).astype(int) - 1, 0, R - 1)
        hi = np.clip(np.floor(tri.max(0)).astype(int) + 1, 0, R - 1)
        cand = np.array(list(itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi)))))
        hit = cand[_overlap_reference(tri, cand + 0.5, 0.5)]
        out.update(map(tuple, hit.tolist()))
    return out


def _unit(mesh):
    v = mesh.vertices[np.unique(mesh.faces)]
    c = (v.min(0) + v.max(0)) / 2
    s = (1 - 1e-6) / np.ptp(v, axis=0).max()
    return (mesh.vertices - c) * s, mesh.faces


@pytest.mark.parametrize("name", ["table.glb", "not_convex.obj", "alien.glb", "cubevc.glb", "monkey.glb", "fandisk.obj"])
def test_matches_exact_reference_on_real_meshes(shared_assets, name):
    v, f = _unit(load_mesh(shared_assets / name))
    ref = reference_voxels(v, f)
    assert {tuple(map(int, c)) for c in voxelize_surface(v, f)} == ref
    assert {tuple(map(int, c)) for c in voxelize_surface(v, f, method="plain")} == ref


# dense small triangles, mixed sizes, large flat panels (table, fridge, tray), thin cloth
@pytest.mark.parametrize("name", ["bunny.ply", "Mixer.glb", "WickerChair.glb", "SheenCloth.glb", "Duck.glb", "table.glb",
                                  "kitchenFridgeLarge.glb", "1002_tray_bottom.STL", "DenseSphere.glb"])
def test_fast_path_equals_plain_sat_on_real_meshes(shared_assets, name):
    v, f = _unit(load_mesh(shared_assets / name))
    fast = voxelize_surface(v, f)
    assert len(fast) > 0
    np.testing.assert_array_equal(fast, voxelize_surface(v, f, method="plain"))


def _huge_triangle_mesh(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Large triangles of every orientation (spans up to the whole grid), some sticking out of the
    cube, some lying exactly on voxel planes, some slivers and zero-area ones."""
    rng = np.random.default_rng(seed)
    tris = [rng.uniform(-0.6, 0.6, (3, 3)) for _ in range(24)]  # random, often partly outside
    tris += [rng.uniform(-0.5, 0.5, (3, 3)) * [1, 1, 0.02] for _ in range(6)]  # nearly z-flat
    for axis, k in ((0, 17), (1, 40), (2, 5)):  # exactly on the voxel plane k along an axis
        t = rng.uniform(-0.45, 0.45, (3, 3))
        t[:, axis] = k / 64 - 0.5
        tris.append(t)
    a, b = rng.uniform(-0.5, 0.5, (2, 3))
    tris.append(np.stack([a, b, a + 0.25 * (b - a)]))  # zero area (collinear)
    tris.append(np.stack([a, b, b + [1e-9, 0, 0]]))  # sliver
    v = np.concatenate(tris)
    return v, np.arange(len(v)).reshape(-1, 3)


def test_fast_path_equals_plain_sat_and_reference_on_huge_triangles():
    v, f = _huge_triangle_mesh()
    fast = voxelize_surface(v, f)
    assert len(fast) > 5000  # big triangles: many voxels, most of them found by scan conversion
    np.testing.assert_array_equal(fast, voxelize_surface(v, f, method="plain"))
    # the independent reference is a Python loop over boxes: check the tie and degenerate cases
    # and a few random ones against it
    sub = f[np.r_[0:3, 30:len(f)]]
    assert {tuple(map(int, c)) for c in voxelize_surface(v, sub)} == reference_voxels(v, sub)


def test_bad_arguments_are_rejected():
    tri = np.array([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]])
    with pytest.raises(ValueError, match="method"):
        voxelize_surface(tri, np.array([[0, 1, 2]]), method="bbox")
    with pytest.raises(ValueError, match="out of range"):
        voxelize_surface(tri, np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="resolution"):
        voxelize_surface(tri, np.array([[0, 1, 2]]), resolution=300)


def test_edge_cases():
    R = 64
    # a triangle lying exactly on a voxel boundary plane marks the voxels on both sides
    z = 10 / R - 0.5
    tri = np.array([[0.0, 0.0, z], [0.05, 0.0, z], [0.0, 0.05, z]])
    got = voxelize_surface(tri, np.array([[0, 1, 2]]))
    assert set(got[:, 2]) == {9, 10}
    # a tiny triangle strictly inside one voxel marks exactly that voxel
    c = (np.array([20, 30, 40]) + 0.5) / R - 0.5
    tiny = c + np.array([[0, 0, 0], [1e-4, 0, 0], [0, 1e-4, 0]])
    np.testing.assert_array_equal(voxelize_surface(tiny, np.array([[0, 1, 2]])), [[20, 30, 40]])
    # a huge triangle through the cube matches the reference
    big = np.array([[-0.4873, -0.4911, -0.4797], [0.4931, -0.4619, 0.3127], [-0.2063, 0.4889, 0.4957]])  # no exact ties
    assert {tuple(map(int, c)) for c in voxelize_surface(big, np.array([[0, 1, 2]]))} == reference_voxels(big, np.array([[0, 1, 2]]))
    # a degenerate (zero-area) triangle is a segment: it still marks the voxels it passes through
    seg = np.array([[-0.3, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert len(voxelize_surface(seg, np.array([[0, 1, 2]]))) >= math.floor(0.6 * R)
    # geometry outside the cube is ignored; nothing, and no NaN, gets through
    assert len(voxelize_surface(np.array([[2.0, 2, 2], [3, 2, 2], [2, 3, 2]]), np.array([[0, 1, 2]]))) == 0
    assert voxelize_surface(np.zeros((0, 3)), np.zeros((0, 3), int)).shape == (0, 3)
    with pytest.raises(ValueError):
        voxelize_surface(np.array([[np.nan, 0, 0], [0, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]))


def test_output_contract():
    v = np.array([[-0.4, -0.4, -0.4], [0.4, -0.4, -0.4], [0.0, 0.4, 0.4]])
    out = voxelize_surface(v, np.array([[0, 1, 2]]))
    assert out.dtype == np.uint8 and out.shape[1] == 3
    assert len(np.unique(out, axis=0)) == len(out)
    np.testing.assert_array_equal(out, out[np.lexsort(out.T[::-1])])
