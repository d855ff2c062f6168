"""Contact physics on the full meshes with python-fcl.

Queries: ``collide`` (first contact only, microseconds) for the drop search and ``distance`` for the
"no touching" and "within 5 mm of its support" rules.

A BVH of a real asset costs ~3-5 us per triangle to build (0.3 s for an 84k-triangle mesh), fcl
cannot scale one (a query is posed in the BVH's frame instead), and most pairs a scene checks are
far apart. So the checks are layered:

- ``clear_by_bounds`` answers "at least this far apart" from convex solids that contain the meshes
  (GJK, microseconds): solids that far apart prove it for the meshes. The solid is a bounding
  polytope of ``BOUND_DIRECTIONS`` face normals rather than the exact hull: a dense convex asset's
  hull has 15k vertices (0.4 s to build per size); the polytope has a few hundred, and it scales
  with the asset, so it is computed once per resting pose.
- Pairs whose solids come closer are measured on the triangles that can matter only
  (``distance_within``, ``VerticalSweep``): a question "closer than r?" is answered exactly by the
  triangles of each mesh whose boxes reach within r of the other mesh's box, so only those get a
  BVH, built for that query; a side that keeps many may be measured against its asset's whole BVH
  (``MeshBVH``, one for all poses and sizes, built when its crops have cost as much). Whole-mesh
  BVHs per (asset, pose, size) cost 2-3 builds of ~40 ms per 8-instance scene even in a long
  run's steady state, and held 2-3 GB per process in their cache.
"""

from __future__ import annotations

from collections import OrderedDict
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
UNIT_BVH_FROM = 2000  # a crop keeping more triangles than this is measured against the unit mesh's BVH


def fibonacci_directions(n: int) -> np.ndarray:
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
    dirs = fibonacci_directions(n_directions)
    offsets = (p @ dirs.T).max(axis=0)
    # padding each half-space a hair keeps a volume (and the mean strictly inside) for flat assets
    pad = 1e-9 + 1e-6 * float(np.max(np.ptp(p, axis=0)))
    verts = HalfspaceIntersection(np.column_stack([dirs, -(offsets + pad)]), p.mean(axis=0)).intersections
    hull = ConvexHull(verts)
    keep = hull.vertices
    index = np.full(len(verts), -1, dtype=np.int64)
    index[keep] = np.arange(len(keep))
    return verts[keep], index[hull.simplices]


class BVHBudget:
    """At most ``max_triangles`` triangles' worth of whole-mesh BVHs kept built; the least recently
    used give theirs up (a catalog of thousands of assets would otherwise hold them all)."""

    def __init__(self, max_triangles: int):
        self.max_triangles = int(max_triangles)
        self._built: OrderedDict[int, MeshBVH] = OrderedDict()
        self.triangles = 0

    def touch(self, mesh: "MeshBVH") -> None:
        key = id(mesh)
        if key in self._built:
            self._built.move_to_end(key)
            return
        self._built[key] = mesh
        self.triangles += len(mesh.faces)
        while self.triangles > self.max_triangles and len(self._built) > 1:
            _, old = self._built.popitem(last=False)
            self.triangles -= len(old.faces)
            old._bvh = None


UNIT_BVHS = BVHBudget(4_000_000)  # ~2 GB of fcl nodes at most, in practice a few hundred MB


class MeshBVH:
    """A mesh's whole BVH, built on first use (kept within ``UNIT_BVHS``), and the triangles spent
    so far on BVHs of its crops instead. One serves every pose and size of an asset: they are
    similarity transforms of its mesh, and a query is posed in this mesh's frame.

    Whether a crop should use it (``worth_building``) is a rent-or-buy choice: a whole BVH costs
    its triangle count once, a crop's BVH its own count every time. Crops are built until they add
    up to the whole mesh, then the whole is: never more than twice the better of the two choices in
    hindsight. (An 84k-triangle flat asset kept 49k triangles per drop, a 115k one 5k.)"""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        self.vertices = np.asarray(vertices, dtype=np.float64)
        self.faces = np.asarray(faces)
        self._bvh: fcl.BVHModel | None = None
        self.cropped = 0  # triangles built into crop BVHs of this mesh so far

    @property
    def has_bvh(self) -> bool:
        return self._bvh is not None

    @property
    def bvh(self) -> fcl.BVHModel:
        if self._bvh is None:
            self._bvh = bvh_of(self.vertices, self.faces)
        UNIT_BVHS.touch(self)
        return self._bvh

    def crop(self, keep: np.ndarray) -> fcl.BVHModel:
        """A BVH of the triangles ``keep`` only, in this mesh's coordinates."""
        used, tris = _compact(self.faces, keep)
        return bvh_of(self.vertices[used], tris)

    def worth_building(self, kept: int) -> bool:
        """Use the whole BVH for a crop of ``kept`` of its triangles (True), or build the crop's
        (False, counted)? Crops of up to ``UNIT_BVH_FROM`` triangles are always built (a few ms)."""
        if self.has_bvh:
            return True
        if kept <= UNIT_BVH_FROM:
            return False
        if self.cropped + kept >= len(self.faces):
            return True
        self.cropped += kept
        return False


class UnitMesh:
    """A mesh that every size level of one asset pose scales (by a positive factor): its
    triangles' boxes (``lows``, ``highs``: (3, F)) for crops, and the ``MeshBVH`` of the mesh it is
    a similarity transform of (``source``, by ``source_frame``: unit = scale * rot @ source + t; by
    default itself). fcl moves BVHs rigidly but cannot scale them, so a query is posed in the
    source's frame with the other mesh scaled instead."""

    def __init__(self, mesh: trimesh.Trimesh, source: MeshBVH | None = None, source_frame: "Frame | None" = None):
        self.vertices = np.asarray(mesh.vertices, dtype=np.float64)
        self.faces = np.asarray(mesh.faces)
        lows, highs = triangle_boxes(mesh)
        # per axis, contiguous: a box test filters axis by axis on contiguous rows (15x faster on
        # 84k triangles than one (F, 3) comparison reduced with np.all)
        self.lows, self.highs = np.ascontiguousarray(lows.T), np.ascontiguousarray(highs.T)
        if source is None:
            source, source_frame = MeshBVH(self.vertices, self.faces), None
        self.source = source
        self.source_frame = WORLD if source_frame is None else source_frame


class Shapes:
    """Collision shapes of one mesh at one size: ``scale`` times a ``UnitMesh`` (shared by the
    sizes of an asset pose) and a bounding convex solid, built on first use and kept.

    ``bound``: (vertices, triangles) of a convex polytope containing the mesh (``bounding_polytope``
    of the mesh's vertices when not given). ``unit``: the mesh at unit scale (``mesh`` itself, scale
    1, when not given); ``mesh`` must equal its vertices times ``scale``.
    """

    def __init__(self, mesh: trimesh.Trimesh, bound: tuple[np.ndarray, np.ndarray] | None = None,
                 unit: UnitMesh | None = None, scale: float = 1.0):
        self.mesh = mesh
        self.bound = bound
        self.unit = UnitMesh(mesh) if unit is None else unit
        self.scale = 1.0 if unit is None else float(scale)
        self._bvh: fcl.BVHModel | None = None
        self._convex: fcl.Convex | None = None

    @property
    def bvh(self) -> fcl.BVHModel:
        """The whole sized mesh's BVH (a reference for tests: the checks use crops and unit BVHs)."""
        if self._bvh is None:
            self._bvh = build_bvh(self.mesh)
        return self._bvh

    def select(self, local_box: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
        """Indices of the triangles (of ``among``, default all) whose boxes overlap ``local_box``
        ((2, 3), mesh frame). Any point of the mesh inside the box lies on one of them. (A box of
        the unit mesh times ``scale`` is the sized triangle's box exactly: multiplying by a positive
        float commutes with min and max.)"""
        box = np.asarray(local_box, dtype=np.float64) / self.scale
        pad = 1e-9 * (1.0 + float(np.abs(box).max()))  # the division rounds: keep borderline triangles
        lo, hi = box[0] - pad, box[1] + pad
        lows, highs = self.unit.lows, self.unit.highs
        if among is None:
            keep = np.flatnonzero((lows[0] <= hi[0]) & (highs[0] >= lo[0]))
        else:
            keep = among[(lows[0, among] <= hi[0]) & (highs[0, among] >= lo[0])]
        for ax in (1, 2):
            keep = keep[(lows[ax, keep] <= hi[ax]) & (highs[ax, keep] >= lo[ax])]
        return keep

    def box_of(self, keep: np.ndarray) -> np.ndarray:
        """(2, 3) box, mesh frame, containing the triangles ``keep`` (non-empty)."""
        return np.stack([self.unit.lows[:, keep].min(axis=1), self.unit.highs[:, keep].max(axis=1)]) * self.scale

    def world_box(self, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(2, 3) world box containing the mesh at (rot, t): the bounding solid's, or the mesh's."""
        points = self.bound[0] if self.bound is not None else np.asarray(self.mesh.vertices)
        v = points @ np.asarray(rot).T + t
        return np.stack([v.min(axis=0), v.max(axis=0)])

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
        self.rot, self.t = np.asarray(rot, dtype=np.float64), np.asarray(t, dtype=np.float64)
        self.shapes, self.tf = shapes, fcl.Transform(self.rot, self.t)
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

    def world_box(self) -> np.ndarray:
        return self.shapes.world_box(self.rot, self.t)

    def select(self, world_box: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
        """Triangles (of ``among``) that can reach into ``world_box``."""
        return self.shapes.select(_box_in_frame(world_box, self.rot, self.t), among)

    def box_of(self, keep: np.ndarray) -> np.ndarray:
        """World box containing the triangles ``keep``."""
        return _box_of_frame(self.shapes.box_of(keep), self.rot, self.t)

    def frame(self) -> "Frame":
        """The frame of its unit mesh's BVH source: world = scale * rot @ source + t."""
        f, scale = self.shapes.unit.source_frame, self.shapes.scale
        return Frame(self.rot @ f.rot, scale * (self.rot @ f.t) + self.t, scale * f.scale)

    def triangles_in(self, keep: np.ndarray, frame: "Frame") -> fcl.BVHModel:
        """A BVH of its triangles ``keep`` (non-empty), their vertices expressed in ``frame``."""
        unit = self.shapes.unit
        used, tris = _compact(unit.faces, keep)
        world = (unit.vertices[used] * self.shapes.scale) @ self.rot.T + self.t
        return bvh_of(frame.from_world(world), tris)


@dataclass(frozen=True)
class Frame:
    """A similarity frame: world = scale * rot @ local + t (the world itself: identity, scale 1)."""

    rot: np.ndarray
    t: np.ndarray
    scale: float = 1.0

    def from_world(self, world: np.ndarray) -> np.ndarray:
        return ((world - self.t) @ self.rot) / self.scale

    def up(self) -> np.ndarray:
        """The world's +z, one metre of it, in this frame."""
        return self.rot[2] / self.scale


WORLD = Frame(np.eye(3), np.zeros(3))


def _meeting(a: Posed, keep_a: np.ndarray, b: Posed, keep_b: np.ndarray) -> tuple[Frame, str, fcl.BVHModel, fcl.BVHModel]:
    """(frame, whose frame it is: "a" or "b", BVH of a, BVH of b), both BVHs in ``frame``, for the
    query on the kept triangles.

    The frame is that of the BVH source (the asset's canonical mesh) of the side keeping more
    triangles, and the other side's kept triangles are moved and scaled into it. The bigger side
    is its whole BVH when that is built or worth building now (``MeshBVH.worth_building``), else a
    BVH of its kept triangles, from the same source coordinates. Either way every triangle that
    can meet has the same coordinates, so the answer is the same to the last bit: a scene does not
    depend on which BVHs a worker happened to have built (checked by
    ``bench/bench_layout_shards.py``: a cold library per shard and one warm library give
    identical scenes)."""
    a_big = len(keep_a) >= len(keep_b)
    big, big_keep, small, small_keep = (a, keep_a, b, keep_b) if a_big else (b, keep_b, a, keep_a)
    frame, source = big.frame(), big.shapes.unit.source
    big_bvh = source.bvh if source.worth_building(len(big_keep)) else source.crop(big_keep)
    small_bvh = small.triangles_in(small_keep, frame)
    return (frame, "a", big_bvh, small_bvh) if a_big else (frame, "b", small_bvh, big_bvh)


def _at(bvh: fcl.BVHModel) -> fcl.CollisionObject:
    return fcl.CollisionObject(bvh, fcl.Transform())


def _corners(box: np.ndarray) -> np.ndarray:
    lo, hi = np.asarray(box, dtype=np.float64)
    return np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T


def _box_in_frame(world_box: np.ndarray, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A box in the rigid frame (rot, t) containing a world box (its 8 corners' box)."""
    local = (_corners(world_box) - t) @ rot  # inverse rotation on row vectors
    return np.stack([local.min(axis=0), local.max(axis=0)])


def _box_of_frame(local_box: np.ndarray, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A world box containing a box given in the rigid frame (rot, t)."""
    world = _corners(local_box) @ np.asarray(rot).T + t
    return np.stack([world.min(axis=0), world.max(axis=0)])


def _grow(box: np.ndarray, by: float) -> np.ndarray:
    return np.asarray(box, dtype=np.float64) + np.array([[-by] * 3, [by] * 3])


CROP_ROUNDS = 3  # crop each mesh to the other's kept triangles this often (each round can only shrink)


def _crop_to_each_other(a: Posed, b: Posed, a_near, b_near) -> tuple[np.ndarray, np.ndarray] | None:
    """(a's kept triangles, b's kept triangles), or None when either side keeps none.

    Round after round, a keeps its triangles inside ``a_near(box of b's kept triangles)`` and b
    its triangles inside ``b_near(box of a's kept triangles)``; both start from the whole meshes."""
    box_b, keep_a, keep_b = b.world_box(), None, None
    for _ in range(CROP_ROUNDS):
        keep_a = a.select(a_near(box_b), keep_a)
        if len(keep_a) == 0:
            return None
        keep_b = b.select(b_near(a.box_of(keep_a)), keep_b)
        if len(keep_b) == 0:
            return None
        box_b = b.box_of(keep_b)
    return keep_a, keep_b


def distance_within(a: Posed, b: Posed, reach: float) -> float:
    """The exact mesh distance when it is below ``reach``; otherwise some value >= ``reach``.

    If the meshes come closer than ``reach``, their closest points lie within ``reach`` of the other
    mesh, so inside the box of any set of its triangles that holds its closest point, grown by
    ``reach``. Cropping each mesh to such a box of the other's kept triangles, round after round,
    never drops the closest pair's triangles, and the cropped distance (never below the whole one)
    equals it. The rounds shrink an object resting inside a big one's box (a cup on a shelf) to the
    few triangles where they meet.
    """
    kept = _crop_to_each_other(a, b, lambda box: _grow(box, reach), lambda box: _grow(box, reach))
    if kept is None:
        return float("inf")
    frame, _, bvh_a, bvh_b = _meeting(a, kept[0], b, kept[1])
    return distance(_at(bvh_a), _at(bvh_b)) * frame.scale


class VerticalSweep:
    """``moving`` at rotation ``rot`` and x/y of ``t``, raised by any z in ``z_range`` (added to
    ``t``), against a fixed ``Posed``: both cropped once to where they can meet over the range (as
    in ``distance_within``, with the moving mesh's boxes stretched over the range), so a
    bisection's dozens of ``hits`` cost one small BVH build (or none). A contact at any height in
    the range lies in both meshes' boxes there, so the crops keep it: ``hits`` is exact."""

    def __init__(self, moving: Shapes, rot: np.ndarray, t: np.ndarray, z_range: tuple[float, float], fixed: Posed):
        rot, t = np.asarray(rot, dtype=np.float64), np.asarray(t, dtype=np.float64)
        z0, z1 = float(z_range[0]), float(z_range[1])
        self.z_range, eps = (z0, z1), 1e-7
        low = Posed(moving, rot, t + [0.0, 0.0, z0])  # the moving mesh at the bottom of the range

        def lowered(box: np.ndarray) -> np.ndarray:
            # a moving point that meets the fixed box at some z lies, at z0, in that box lowered by up to z1 - z0
            return _grow(box, eps) - [[0.0, 0.0, z1 - z0], [0.0, 0.0, 0.0]]

        def swept(box: np.ndarray) -> np.ndarray:  # a world box at z0, and everywhere it goes up to z1
            return _grow(np.stack([box[0], box[1] + [0.0, 0.0, z1 - z0]]), eps)

        self._pair = None
        kept = _crop_to_each_other(low, fixed, lowered, swept)
        if kept is None:
            return
        frame, whose, bvh_moving, bvh_fixed = _meeting(low, kept[0], fixed, kept[1])
        # raising the moving mesh by dz in the world is this offset in the frame; in the moving
        # mesh's own frame the fixed one goes down instead
        self._up, self._moving_frame = frame.up(), whose == "a"
        self._pair = (_at(bvh_moving), _at(bvh_fixed))  # one object each, moved by setTranslation

    def hits(self, z: float) -> bool:
        """Do the meshes touch or intersect with the moving one raised by ``z``?"""
        if not self.z_range[0] - 1e-12 <= z <= self.z_range[1] + 1e-12:
            raise ValueError(f"z {z} outside the sweep's range {self.z_range}")
        if self._pair is None:
            return False
        offset = (z - self.z_range[0]) * self._up
        moving, fixed = self._pair
        if self._moving_frame:
            fixed.setTranslation(-offset)
        else:
            moving.setTranslation(offset)
        return collide(moving, fixed)


def clear_by_bounds(a: Posed, b: Posed, clearance: float) -> bool:
    """True when the bounding solids alone prove the meshes at least ``clearance`` apart (False:
    look closer)."""
    return distance(a.bound, b.bound) >= clearance + BOUND_MARGIN


@dataclass
class SizedAsset:
    """One asset in one resting pose at one size level: its posed mesh scaled, collision shapes,
    surface samples, centre of mass."""

    uid: str
    size: float
    mesh: trimesh.Trimesh  # posed frame scaled to ``size`` (z up, min z = 0, centred x/y)
    shapes: Shapes = field(repr=False)
    samples: np.ndarray = field(repr=False)  # (S, 3) surface points incl. vertices
    com: np.ndarray = field(repr=False)  # centre of mass (volume if watertight, else surface)
    pose: int = 0  # index into the asset's stable poses
    hull: np.ndarray | None = field(default=None, repr=False)  # convex hull vertices (rigid-body shape)
    sample_tree: object = field(default=None, repr=False, compare=False)  # k-d tree of (some) samples, built by the layout on use


def triangle_boxes(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(lows, highs): each triangle's axis-aligned box in the mesh frame, (F, 3) each."""
    tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    return tri.min(axis=1), tri.max(axis=1)


def _compact(faces: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the vertex indices the triangles ``keep`` use, those triangles renumbered into them)."""
    used, tris = np.unique(faces[keep], return_inverse=True)
    return used, tris.reshape(-1, 3)


def build_bvh(mesh: trimesh.Trimesh) -> fcl.BVHModel:
    return bvh_of(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces))


def bvh_of(vertices: np.ndarray, faces: np.ndarray) -> fcl.BVHModel:
    model = fcl.BVHModel()
    model.beginModel(len(vertices), len(faces))
    model.addSubModel(np.ascontiguousarray(vertices, dtype=np.float64), np.ascontiguousarray(faces, dtype=np.int32))
    model.endModel()
    return model


def make_sized_asset(uid: str, canonical: trimesh.Trimesh, size: float, n_samples: int = 3000, seed: int = 0,
                     pose: int = 0, unit_extras: tuple | None = None,
                     unit_bound: tuple[np.ndarray, np.ndarray] | None = None,
                     unit_mesh: UnitMesh | None = None) -> SizedAsset:
    """``canonical``: the asset at unit size in the frame it will rest in (a posed canonical mesh).

    ``unit_extras``: (samples, centre of mass, hull vertices), ``unit_bound``: the
    ``bounding_polytope`` of the hull and ``unit_mesh``: ``UnitMesh(canonical)``, already computed
    at unit size; they scale with the mesh, so a cache can reuse them for every size.
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
    unit = UnitMesh(canonical) if unit_mesh is None else unit_mesh
    return SizedAsset(uid, size, mesh, Shapes(mesh, (verts, tris), unit, float(size)), samples, com, pose, hull)


def samples_and_com(mesh: trimesh.Trimesh, n_samples: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples (incl. vertices, each place once) and centre of mass (volume if
    watertight, else surface).

    A vertex stored several times is one sample: an STL keeps every triangle's corners apart
    (counter.unitsmm.STL: 251k vertices at 42k places), and each sample is a ray of every
    stability check the instance gets (50 ms a check for that asset before)."""
    pts, _ = trimesh.sample.sample_surface(mesh, n_samples, seed=seed)
    com = mesh.center_mass if mesh.is_watertight and mesh.volume > 1e-12 else mesh.triangles_center.T @ mesh.area_faces / mesh.area
    first = np.sort(trimesh.grouping.unique_rows(np.asarray(mesh.vertices))[0])  # one per place, in stored order
    return np.vstack([pts, np.asarray(mesh.vertices)[first]]), np.asarray(com, dtype=np.float64)


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
