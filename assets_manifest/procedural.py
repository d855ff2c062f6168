"""Non-semantic procedural assets: the embedded default that needs no download.

Each asset is a pure function of (seed, index): a random member of one of several families that
together vary shape (boxy, round, star-shaped, hollow), size ratio (flat slabs to tall columns),
concavity (booleans, bowls, arches) and flat support surfaces (slabs, tables, stacked boxes) so that
the layout sampler has things to put other things on. Booleans go through manifold3d (exact and
robust, via trimesh). Every asset gets a random vertex colour so renders are not all grey.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import trimesh

Family = Callable[[np.random.Generator], trimesh.Trimesh]


def _box(rng, lo=0.2, hi=1.0) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=rng.uniform(lo, hi, size=3))


def _union(meshes: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    return trimesh.boolean.union(meshes, engine="manifold")


def stacked_boxes(rng: np.random.Generator) -> trimesh.Trimesh:
    """2-4 boxes stacked with offsets: flat tops at several heights."""
    parts, z = [], 0.0
    for _ in range(rng.integers(2, 5)):
        ext = rng.uniform([0.3, 0.3, 0.1], [1.0, 1.0, 0.5])
        b = trimesh.creation.box(extents=ext)
        b.apply_translation([rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), z + ext[2] / 2 - 0.01])
        parts.append(b)
        z += ext[2] - 0.01
    return _union(parts)


def table_like(rng: np.random.Generator) -> trimesh.Trimesh:
    """A slab on 3-5 legs or a central column: a large flat support surface over empty space."""
    w, d, h = rng.uniform(0.6, 1.6), rng.uniform(0.4, 1.2), rng.uniform(0.3, 1.0)
    t = rng.uniform(0.03, 0.1)
    top = trimesh.creation.box(extents=[w, d, t])
    top.apply_translation([0, 0, h - t / 2])
    parts = [top]
    if rng.random() < 0.3:
        col = trimesh.creation.cylinder(radius=min(w, d) * 0.12, height=h - t, sections=24)
        col.apply_translation([0, 0, (h - t) / 2])
        parts.append(col)
    else:
        n = int(rng.integers(3, 6))
        r = rng.uniform(0.02, 0.06)
        for k in range(n):
            a = 2 * np.pi * k / n + rng.uniform(-0.2, 0.2)
            leg = trimesh.creation.cylinder(radius=r, height=h - t + 0.01, sections=12)
            leg.apply_translation([0.4 * w * np.cos(a), 0.4 * d * np.sin(a), (h - t) / 2])
            parts.append(leg)
    return _union(parts)


def revolved(rng: np.random.Generator) -> trimesh.Trimesh:
    """A random profile revolved about z (vases, pots, spinning-top shapes); flat base."""
    n = int(rng.integers(4, 9))
    zs = np.sort(np.concatenate([[0.0], rng.uniform(0.05, 1.0, n - 2), [rng.uniform(0.3, 1.5)]]))
    radii = rng.uniform(0.1, 0.6, n)
    profile = np.concatenate([[[0.0, 0.0]], np.stack([radii, zs], 1), [[0.0, zs[-1]]]])
    return trimesh.creation.revolve(profile, sections=int(rng.integers(6, 40)))


def extruded_star(rng: np.random.Generator) -> trimesh.Trimesh:
    """A star-shaped polygon (fan-triangulated from its centre) extruded along z."""
    n = int(rng.integers(3, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if rng.random() < 0.5 else np.linspace(0, 2 * np.pi, n, endpoint=False)
    radii = rng.uniform(0.2, 1.0, n)
    ring = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    verts2d = np.vstack([[0.0, 0.0], ring])
    faces = np.array([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    return trimesh.creation.extrude_triangulation(verts2d, faces, height=rng.uniform(0.05, 1.2))


def carved_block(rng: np.random.Generator) -> trimesh.Trimesh:
    """A box with a sphere, cylinder or box cut out: concavities, arches and bowls."""
    block = _box(rng, 0.4, 1.2)
    e = block.extents
    kind = rng.integers(3)
    if kind == 0:
        cutter = trimesh.creation.icosphere(subdivisions=2, radius=rng.uniform(0.3, 0.6) * e.min())
        cutter.apply_translation([0, 0, e[2] / 2])
    elif kind == 1:
        cutter = trimesh.creation.cylinder(radius=rng.uniform(0.2, 0.4) * min(e[0], e[2]), height=e[1] * 1.5, sections=24)
        cutter.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
        cutter.apply_translation([0, 0, -e[2] / 2])
    else:
        cutter = trimesh.creation.box(extents=e * rng.uniform([0.3, 0.3, 0.3], [0.7, 0.7, 0.8]))
        cutter.apply_translation([0, 0, e[2] / 2])
    return trimesh.boolean.difference([block, cutter], engine="manifold")


def primitive(rng: np.random.Generator) -> trimesh.Trimesh:
    """A stretched primitive: capsule, cylinder, cone, ellipsoid or box."""
    kind = int(rng.integers(5))
    if kind == 0:
        m = trimesh.creation.capsule(height=rng.uniform(0.2, 1.5), radius=rng.uniform(0.1, 0.5), count=[16, 16])
    elif kind == 1:
        m = trimesh.creation.cylinder(radius=rng.uniform(0.1, 0.6), height=rng.uniform(0.05, 1.5), sections=int(rng.integers(5, 40)))
    elif kind == 2:
        m = trimesh.creation.cone(radius=rng.uniform(0.2, 0.6), height=rng.uniform(0.2, 1.2), sections=int(rng.integers(4, 32)))
    elif kind == 3:
        m = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
        m.apply_scale(rng.uniform(0.3, 1.5, size=3))
    else:
        m = _box(rng, 0.05, 1.2)
    return m


FAMILIES: dict[str, Family] = {
    "stacked_boxes": stacked_boxes,
    "table_like": table_like,
    "revolved": revolved,
    "extruded_star": extruded_star,
    "carved_block": carved_block,
    "primitive": primitive,
}


def make_asset(seed: int, index: int) -> tuple[trimesh.Trimesh, str]:
    """Asset ``index`` of the procedural set with ``seed``: (mesh, family name). Deterministic."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x1A55E7]))
    names = sorted(FAMILIES)
    family = names[int(rng.integers(len(names)))]
    mesh = FAMILIES[family](rng)
    mesh = trimesh.Trimesh(np.round(mesh.vertices, 7), mesh.faces, process=True)
    mesh.apply_translation([-mesh.bounds[:, 0].mean(), -mesh.bounds[:, 1].mean(), -mesh.bounds[0, 2]])
    colour = np.append(rng.integers(30, 255, size=3), 255).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(colour, (len(mesh.vertices), 1)))
    return mesh, family
