"""The shortcuts in front of the exact fcl distance never change a verdict: bounding solids contain
their meshes (so "the solids are far apart" proves the meshes are), and two surface samples closer
than the clearance prove the meshes are too close. Real meshes, random poses, exact distance as the
judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import Delaunay

from datagen import physics

MESHES = ["table.glb", "chairDesk.glb", "DenseSphere.glb", "Duck.glb", "bunny.ply", "testplate.glb"]


def _unit(shared_assets: Path, name: str):
    from assets_manifest import load_mesh

    m = load_mesh(shared_assets / name)
    v = np.asarray(m.vertices, dtype=np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    m.vertices = (v - [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]) / float(np.max(hi - lo))
    return m


@pytest.mark.parametrize("name", MESHES)
def test_bounding_polytope_contains_the_mesh_and_scales_with_it(shared_assets, name):
    m = _unit(shared_assets, name)
    verts, tris = physics.bounding_polytope(m.convex_hull.vertices)
    assert (Delaunay(verts).find_simplex(m.vertices) >= 0).all()
    assert len(verts) < 400 and tris.max() < len(verts)
    v2, _ = physics.bounding_polytope(2.5 * m.convex_hull.vertices)
    assert np.allclose(np.sort(v2, axis=0), np.sort(2.5 * verts, axis=0), atol=1e-6)


def test_shortcuts_agree_with_the_exact_distance_on_real_mesh_pairs(shared_assets):
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    assets = [physics.make_sized_asset(n, _unit(shared_assets, n), float(rng.uniform(0.2, 0.9))) for n in MESHES]
    clearance, cleared, condemned, pairs = 0.01, 0, 0, 0
    for _ in range(150):
        a, b = rng.choice(len(assets), 2)
        A, B = assets[a], assets[b]
        ra, rb = physics.rotz(rng.uniform(0, 2 * np.pi)), physics.rotz(rng.uniform(0, 2 * np.pi))
        # near each other, often nested (a small thing between a table's legs) or interpenetrating
        ta = np.zeros(3)
        tb = np.append(rng.normal(scale=0.35, size=2), rng.uniform(0, 0.3))
        pa, pb = physics.Posed(A.shapes, ra, ta), physics.Posed(B.shapes, rb, tb)
        exact = physics.distance(pa.exact, pb.exact)
        pairs += 1
        if physics.clear_by_bounds(pa, pb, clearance):
            cleared += 1
            assert exact >= clearance, (MESHES[a], MESHES[b], exact)
        sa, sb = A.samples @ ra.T + ta, B.samples @ rb.T + tb
        if np.isfinite(cKDTree(sb).query(sa, k=1, distance_upper_bound=clearance)[0]).any():
            condemned += 1
            assert exact < clearance, (MESHES[a], MESHES[b], exact)
    # both shortcuts decide a real share of the pairs (else they cost without saving anything)
    assert cleared >= 15 and condemned >= 15, (cleared, condemned, pairs)
