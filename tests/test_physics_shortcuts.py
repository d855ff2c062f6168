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


def _near_pairs(rng, assets, n: int, spread: float):
    """``n`` random (A, B, posed A, posed B): A at the origin, B near it (x/y normal with std
    ``spread``, 0-0.3 m up), random yaws: often nested (a small thing between a table's legs) or
    interpenetrating."""
    for _ in range(n):
        a, b = rng.choice(len(assets), 2)
        A, B = assets[a], assets[b]
        ra, rb = physics.rotz(rng.uniform(0, 2 * np.pi)), physics.rotz(rng.uniform(0, 2 * np.pi))
        tb = np.append(rng.normal(scale=spread, size=2), rng.uniform(0, 0.3))
        yield A, B, physics.Posed(A.shapes, ra, np.zeros(3)), physics.Posed(B.shapes, rb, tb)


def test_shortcuts_agree_with_the_exact_distance_on_real_mesh_pairs(shared_assets):
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    assets = [physics.make_sized_asset(n, _unit(shared_assets, n), float(rng.uniform(0.2, 0.9))) for n in MESHES]
    clearance, cleared, condemned, pairs = 0.01, 0, 0, 0
    for A, B, pa, pb in _near_pairs(rng, assets, 150, 0.35):
        ra, ta, rb, tb = pa.rot, pa.t, pb.rot, pb.t
        exact = physics.distance(pa.exact, pb.exact)
        pairs += 1
        if physics.clear_by_bounds(pa, pb, clearance):
            cleared += 1
            assert exact >= clearance, (A.uid, B.uid, exact)
        sa, sb = A.samples @ ra.T + ta, B.samples @ rb.T + tb
        if np.isfinite(cKDTree(sb).query(sa, k=1, distance_upper_bound=clearance)[0]).any():
            condemned += 1
            assert exact < clearance, (A.uid, B.uid, exact)
    # both shortcuts decide a real share of the pairs (else they cost without saving anything)
    assert cleared >= 15 and condemned >= 15, (cleared, condemned, pairs)


def _posed_from_source(mesh, rng):
    """(``UnitMesh`` of ``mesh``, its BVH source): the source is ``mesh`` turned by a random
    rotation, scaled and moved, so the unit mesh is a similarity transform of it (as an asset's
    poses are of its canonical mesh)."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    scale, t = float(rng.uniform(0.5, 2.0)), rng.normal(size=3)
    source = physics.MeshBVH((np.asarray(mesh.vertices) - t) @ rot / scale, mesh.faces)  # unit = scale * rot @ source + t
    return physics.UnitMesh(mesh, source=source, source_frame=physics.Frame(rot, t, scale))


@pytest.mark.parametrize("whole_bvh", [True, False], ids=["whole-bvh", "crop-bvh"])
def test_cropped_queries_equal_the_whole_mesh_ones(shared_assets, monkeypatch, whole_bvh):
    """``distance_within`` and ``VerticalSweep`` measure only the triangles within reach (in the
    frame of one side's BVH source with the other scaled into it, that side whole or cropped); the verdicts and
    the distances below the reach must be the whole meshes' own, for sizes that share one unit
    mesh, whose source is another pose of it."""
    monkeypatch.setattr(physics.MeshBVH, "worth_building", lambda self, kept: whole_bvh)
    rng = np.random.default_rng(1)
    units = {n: _unit(shared_assets, n) for n in MESHES}
    shared = {n: _posed_from_source(m, rng) for n, m in units.items()}
    assets = [physics.make_sized_asset(n, units[n], s, unit_mesh=shared[n]) for n in MESHES for s in (0.3, 0.7)]
    reach, below, checked, hits_seen = 0.01, 0, 0, set()
    for A, B, pa, pb in _near_pairs(rng, assets, 120, 0.3):
        rb, tb = pb.rot, pb.t
        exact = physics.distance(pa.exact, pb.exact)
        got = physics.distance_within(pa, pb, reach)
        if exact < reach:
            below += 1
            assert got == pytest.approx(exact, abs=1e-9), (A.uid, B.uid)
        else:
            assert got >= reach, (A.uid, B.uid, exact, got)
        # B moves vertically through A: every tested height's contact verdict is the whole meshes'
        z0, z1 = -0.3, 0.3
        sweep = physics.VerticalSweep(B.shapes, rb, tb, (z0, z1), pa)
        for z in rng.uniform(z0, z1, 6):
            whole = physics.collide(physics.Posed(B.shapes, rb, tb + [0.0, 0.0, z]).exact, pa.exact)
            assert sweep.hits(float(z)) == whole, (A.uid, B.uid, z)
            hits_seen.add(whole)
            checked += 1
    assert below >= 20 and hits_seen == {True, False}, (below, hits_seen)


def test_unit_bvh_budget_drops_the_least_recently_used(shared_assets):
    budget = physics.BVHBudget(max_triangles=1)
    units = [physics.UnitMesh(_unit(shared_assets, n)) for n in ("Duck.glb", "table.glb")]
    for u in units:
        u.source._bvh = physics.bvh_of(u.vertices, u.faces)
        budget.touch(u.source)
    assert not units[0].source.has_bvh and units[1].source.has_bvh and budget.triangles == len(units[1].faces)


def test_whole_bvh_is_built_once_crops_add_up_to_it():
    """Rent or buy: crops of a mesh get their own BVHs until their triangles add up to the whole
    mesh's count; from then on the whole BVH answers (built once, never more than twice the cost
    of the better choice in hindsight). Small crops never buy it."""
    faces = np.zeros((10 * physics.UNIT_BVH_FROM, 3), dtype=np.int64)
    src = physics.MeshBVH(np.zeros((3, 3)), faces)
    small, big = physics.UNIT_BVH_FROM, 4 * physics.UNIT_BVH_FROM + 1
    assert not any(src.worth_building(small) for _ in range(50)) and src.cropped == 0
    assert [src.worth_building(big) for _ in range(3)] == [False, False, True]
    assert src.cropped == 2 * big
    assert physics.MeshBVH(np.zeros((3, 3)), faces).worth_building(len(faces))  # a crop of all of it buys at once


def _resting_pairs(rng, assets, n: int):
    """Posed pairs a few millimetres apart: B dropped onto A (whole-mesh contact found by
    bisection), then lifted 0.5-5 mm, where distances within reach are measured."""
    out = []
    for A, B, pa, pb in _near_pairs(rng, assets, n, 0.15):
        def hits(z):
            return physics.collide(physics.Posed(B.shapes, pb.rot, pb.t + [0.0, 0.0, z]).exact, pa.exact)
        lo, hi = -0.3, 0.3
        if not hits(lo) or hits(hi):
            continue
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if hits(mid) else (lo, mid)
        out.append((A, B, pa, physics.Posed(B.shapes, pb.rot, pb.t + [0.0, 0.0, hi + rng.uniform(0.0005, 0.005)])))
    return out


def test_whole_and_cropped_bvh_give_the_same_bits(shared_assets, monkeypatch):
    """Whether a side's whole BVH was built (it depends on what a worker did before) must not
    change any answer, not even in the last bit: a scene is a function of its seed alone."""
    rng = np.random.default_rng(2)
    units = {n: _unit(shared_assets, n) for n in MESHES}
    shared = {n: _posed_from_source(m, rng) for n, m in units.items()}
    assets = [physics.make_sized_asset(n, units[n], s, unit_mesh=shared[n]) for n in MESHES for s in (0.3, 0.7)]
    pairs = _resting_pairs(rng, assets, 60)
    answers = {}
    for whole in (False, True):
        monkeypatch.setattr(physics.MeshBVH, "worth_building", lambda self, kept, whole=whole: whole)
        out = []
        for A, B, pa, pb in pairs:
            out.append(min(physics.distance_within(pa, pb, 0.01), 0.01))  # past the reach only ">= reach" is promised
            sweep = physics.VerticalSweep(B.shapes, pb.rot, pb.t, (-0.01, 0.0), pa)
            out.extend(sweep.hits(float(z)) for z in np.linspace(-0.01, 0.0, 5))
        answers[whole] = out
    near = [d for d in answers[True][::6] if 0 < d < 0.01]  # distances within reach, bit for bit
    assert len(near) >= 20, near
    assert answers[True] == answers[False]
