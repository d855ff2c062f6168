"""Contact physics on the full meshes with python-fcl.

BVHs are built once per (asset, size level) and moved by rigid transforms (fcl does not scale
geometry, so sizes are a fixed set of levels per asset; see ``layout.SIZE_LEVELS``). Queries:
``collide`` (first contact only, microseconds) for the drop search and ``distance`` for the
"no touching" and "within 5 mm of its support" rules.

A BVH of a real asset costs ~8 us per triangle to build (1 s for an 84k-triangle mesh), and most
pairs a scene checks are far apart. So each shape's BVH is built only when a query needs it
(``Shapes``), and ``clear_by_bounds`` answers "at least this far apart" first from convex
solids that contain the meshes (GJK, microseconds): solids that far apart prove it for the meshes;
only pairs whose solids come closer go to the exact BVH distance. The solid is a bounding
polytope of ``BOUND_DIRECTIONS`` face normals rather than the exact hull: a dense convex asset's
hull has 15k vertices (0.4 s to build per size); the polytope has a few hundred, and it scales
with the asset, so it is computed once per resting pose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import fcl
import numpy as np
import trimesh
from scipy.spatial import ConvexHull

SUPPORT_GAP_MAX = 0.005  # metres: an instance rests within (0, 5 mm] of its support
CONTACT_BAND = 0.005  # points this close above the support form the contact region
STABILITY_MARGIN = 0.002  # metres the centre of mass must lie inside the contact hull
LOW_BAND = 0.02  # metres: only surface points this close to an instance's lowest can touch its support
BOUND_MARGIN = 1e-4  # metres added to a bounding-solid distance: GJK's distance converges from above
BOUND_DIRECTIONS = 64  # face normals of the bounding polytope (plus the 6 axis directions)


def _fibonacci_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere, plus the 6 axis directions (so the
    polytope is never looser than the axis-aligned box)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5 ** 0.5) * k
    return np.concatenate([np.column_stack([r * np.cos(phi), r * np.sin(phi), z]), np.eye(3), -np.eye(3)])


def bounding_polytope(points: np.ndarray, n_directions: int = BOUND_DIRECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, triangles) of the convex polytope {x : d.x <= max_p d.p} over fixed directions d:
    it contains ``points`` (every half-space does), and scaling the points scales it."""
    from scipy.spatial import HalfspaceIntersection

    p = np.asarray(points, dtype=np.float64)
    dirs = _fibonacci_directions(n_directions)
    offsets = (p @ dirs.T).max(axis=0)
    # padding each half-space a hair keeps a volume (and the mean strictly inside) for flat assets
    pad = 1e-9 + 1e-6 * float(np.max(np.ptp(p, axis=0)))
    verts = HalfspaceIntersection(np.column_stack([dirs, -(offsets + pad)]), p.mean(axis=0)).intersections
    hull = ConvexHull(verts)
    keep = hull.vertices
    index = np.full(len(verts), -1, dtype=np.int64)
    index[keep] = np.arange(len(keep))
    return verts[keep], index[hull.simplices]


class Shapes:
    """Collision shapes of one mesh at one size: the exact BVH and a bounding convex solid, each
    built on first use and kept (a cache entry that is never checked up close never pays for a BVH).

    ``bound``: (vertices, triangles) of a convex polytope containing the mesh (``bounding_polytope``
    of the mesh's vertices when not given).
    """

    def __init__(self, mesh: trimesh.Trimesh, bound: tuple[np.ndarray, np.ndarray] | None = None):
        self.mesh = mesh
        self.bound = bound
        self._bvh: fcl.BVHModel | None = None
        self._convex: fcl.Convex | None = None

    @property
    def bvh(self) -> fcl.BVHModel:
        if self._bvh is None:
            self._bvh = build_bvh(self.mesh)
        return self._bvh

    @property
    def convex(self) -> fcl.Convex:
        if self._convex is None:
            verts, tris = self.bound if self.bound is not None else bounding_polytope(self.mesh.vertices)
            faces = np.column_stack([np.full(len(tris), 3), tris]).ravel()
            # fcl's solid convex shape: distance < 0 when anything overlaps
            self._convex = fcl.Convex(np.ascontiguousarray(verts, dtype=np.float64), len(tris), faces)
        return self._convex


class Posed:
    """A ``Shapes`` at a rigid pose: the fcl objects of its bounding solid and (on first use) its BVH."""

    def __init__(self, shapes: Shapes, rot: np.ndarray, t: np.ndarray):
        self.shapes, self.tf = shapes, fcl.Transform(np.asarray(rot, dtype=np.float64), np.asarray(t, dtype=np.float64))
        self._exact: fcl.CollisionObject | None = None
        self._bound: fcl.CollisionObject | None = None

    @property
    def exact(self) -> fcl.CollisionObject:
        if self._exact is None:
            self._exact = fcl.CollisionObject(self.shapes.bvh, self.tf)
        return self._exact

    @property
    def bound(self) -> fcl.CollisionObject:
        if self._bound is None:
            self._bound = fcl.CollisionObject(self.shapes.convex, self.tf)
        return self._bound


def clear_by_bounds(a: Posed, b: Posed, clearance: float) -> bool:
    """True when the bounding solids alone prove the meshes at least ``clearance`` apart (False:
    look closer)."""
    return distance(a.bound, b.bound) >= clearance + BOUND_MARGIN


@dataclass
class SizedAsset:
    """One asset in one resting pose at one size level: its posed mesh scaled, BVH, surface samples,
    centre of mass."""

    uid: str
    size: float
    mesh: trimesh.Trimesh  # posed frame scaled to ``size`` (z up, min z = 0, centred x/y)
    shapes: Shapes = field(repr=False)
    samples: np.ndarray = field(repr=False)  # (S, 3) surface points incl. vertices
    com: np.ndarray = field(repr=False)  # centre of mass (volume if watertight, else surface)
    pose: int = 0  # index into the asset's stable poses
    hull: np.ndarray | None = field(default=None, repr=False)  # convex hull vertices (rigid-body shape)


def build_bvh(mesh: trimesh.Trimesh) -> fcl.BVHModel:
    model = fcl.BVHModel()
    model.beginModel(len(mesh.vertices), len(mesh.faces))
    model.addSubModel(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int32))
    model.endModel()
    return model


def make_sized_asset(uid: str, canonical: trimesh.Trimesh, size: float, n_samples: int = 3000, seed: int = 0,
                     pose: int = 0, unit_extras: tuple | None = None,
                     unit_bound: tuple[np.ndarray, np.ndarray] | None = None) -> SizedAsset:
    """``canonical``: the asset at unit size in the frame it will rest in (a posed canonical mesh).

    ``unit_extras``: (samples, centre of mass, hull vertices) and ``unit_bound``: the
    ``bounding_polytope`` of the hull, already computed at unit size; they scale with the mesh, so
    a cache can reuse them for every size.
    """
    # a new mesh from scaled arrays: the same vertices as copy() + apply_scale(), without copying
    # and re-hashing the canonical mesh's caches for every size
    mesh = trimesh.Trimesh(np.asarray(canonical.vertices) * size, canonical.faces, process=False)
    if unit_extras is None:
        samples, com = samples_and_com(mesh, n_samples, seed)
        hull = np.asarray(mesh.convex_hull.vertices)
    else:
        samples, com, hull = (np.asarray(x, dtype=np.float64) * size for x in unit_extras)
    verts, tris = bounding_polytope(hull) if unit_bound is None else (unit_bound[0] * size, unit_bound[1])
    return SizedAsset(uid, size, mesh, Shapes(mesh, (verts, tris)), samples, com, pose, hull)


def samples_and_com(mesh: trimesh.Trimesh, n_samples: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples (incl. vertices) and centre of mass (volume if watertight, else surface)."""
    pts, _ = trimesh.sample.sample_surface(mesh, n_samples, seed=seed)
    com = mesh.center_mass if mesh.is_watertight and mesh.volume > 1e-12 else mesh.triangles_center.T @ mesh.area_faces / mesh.area
    return np.vstack([pts, mesh.vertices]), np.asarray(com, dtype=np.float64)


def fcl_object(asset: SizedAsset, rotation, translation: np.ndarray) -> fcl.CollisionObject:
    """The exact (BVH) object; ``rotation``: a yaw angle (radians about +Z) or a 3x3 rotation matrix."""
    return posed(asset, rotation, translation).exact


def posed(asset: SizedAsset, rotation, translation: np.ndarray) -> Posed:
    """``rotation``: a yaw angle (radians about +Z) or a 3x3 rotation matrix."""
    rot = rotz(rotation) if np.ndim(rotation) == 0 else np.asarray(rotation, dtype=np.float64)
    return Posed(asset.shapes, rot, translation)


def rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def collide(a: fcl.CollisionObject, b: fcl.CollisionObject) -> bool:
    return fcl.collide(a, b, fcl.CollisionRequest(), fcl.CollisionResult()) > 0


def distance(a: fcl.CollisionObject, b: fcl.CollisionObject) -> float:
    """Minimum distance (<= 0 when intersecting, as fcl reports it)."""
    return float(fcl.distance(a, b, fcl.DistanceRequest(), fcl.DistanceResult()))


def floor_object(half_extent: float = 1e3) -> fcl.CollisionObject:
    """The floor as a thin box whose top face is z = 0."""
    return fcl.CollisionObject(fcl.Box(2 * half_extent, 2 * half_extent, 1.0), fcl.Transform(np.array([0.0, 0.0, -0.5])))


def is_stable(world_points: np.ndarray, com_world: np.ndarray, support_height_at, lowest_gap_ok: bool = True) -> bool:
    """Centre of mass projects inside the convex hull of the contact region.

    ``world_points``: the instance's surface samples in world coordinates;
    ``support_height_at(xy) -> (N,) heights`` of the supporting surface below each point (-inf where
    nothing supports it), exact (ray cast on the support mesh). Contact points are those within
    ``CONTACT_BAND`` of the smallest vertical gap; a vertical gap is never smaller than the true
    distance, so this region is a subset of the one defined by distances, and with the margin the
    test errs on the side of rejecting.
    """
    low = world_points[world_points[:, 2] <= world_points[:, 2].min() + LOW_BAND]  # only these can touch
    h = support_height_at(low[:, :2])
    gap = low[:, 2] - h
    ok = np.isfinite(h) & (gap >= -1e-6)
    if not ok.any():
        return False
    contact = low[ok & (gap <= gap[ok].min() + CONTACT_BAND)]
    if len(contact) < 3:
        return False
    try:
        hull = ConvexHull(contact[:, :2])
    except Exception:  # collinear contact (an edge): no area, not stable
        return False
    # signed distance of the centre of mass to the hull boundary (negative inside); a margin keeps
    # the verdict robust to how densely the surface was sampled
    inside = float(np.max(hull.equations[:, :2] @ com_world[:2] + hull.equations[:, 2]))
    width = float(np.min(np.ptp(contact[:, :2], axis=0)))
    return inside <= -max(STABILITY_MARGIN, 0.05 * width)
