"""Random non-semantic scenes that are physically valid: the NS data of I-Scene.

A relation grammar builds each scene: the first instance stands on the floor; each next one is put
``left_of`` / ``right_of`` / ``in_front_of`` / ``behind`` an already placed instance (on the floor,
with a random gap) or ``on_top_of`` one (resting on its real upper surface, found by ray casting).
Every rule is checked on the full meshes with python-fcl:

- no two instances intersect or touch (clearance >= ``MIN_CLEARANCE_PAIR``), except an instance and
  its support;
- every instance rests on the floor or on exactly one other instance, at a distance in (0, 5 mm];
- it is stable: its centre of mass projects inside the convex hull of its contact region.

Each instance takes one of its asset's stable resting poses (computed at ingest, sampled by their
probabilities), so an asset that does not stand in its authored orientation still appears, lying
down. The first instance of scene ``i`` is asset ``i mod N`` of a seeded permutation of the catalog,
so a run of at least N scenes tries every asset; an asset that can never be used is recorded in
``AssetLibrary.exclusions`` with the reason. The finished proposal is settled by a rigid-body
simulation (``datagen.settle``), and ``support`` and the relations are recomputed from the result.

Rejection sampling with bounded retries; a scene that cannot be completed raises ``SceneFailure``.
Everything derives from (dataset seed, scene index), so any scene can be regenerated alone. The
output is a scene spec (docs/SCENE_SPEC.md) whose ``object_to_world`` maps the asset's vertices as
``assets_manifest.load_mesh(path)`` returns them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from datagen import physics
from datagen.cameras import RANK_POINTS, CameraConfig, sample_cameras
from datagen.settle import Body, SettleConfig, SettleError, settle_scene
from datagen.errors import SceneFailure
from datagen.ids import scene_id, scene_rng, scene_seed
from datagen.support_surface import HeightMap, height_map

RELATIONS = ("left_of", "right_of", "in_front_of", "behind", "on_top_of")
# sizes (largest side, metres) come from a fixed set of levels: a sized asset (scaled mesh, samples,
# bounding solid) is cached per (asset, pose, level) and reused by every scene in the process.
SIZE_LEVELS = np.round(np.geomspace(0.08, 1.6, 16), 4)
MIN_CLEARANCE_PAIR = 0.01  # non-support pairs stay >= 1 cm apart: never touching, never a 2nd support
MIN_HEIGHT_ON_TOP = physics.SUPPORT_GAP_MAX + physics.CONTACT_BAND  # stacked things clear the floor
DROP_NEAR = (0.005, 0.008)  # metres below / above the estimated resting height searched first (``_drop_onto``)
PROXY_CELLS = 32  # grid cells per side of the coarse meshes camera choice screens views with
SURFACE_POINTS = 4000  # surface samples per instance for the "too close" shortcut of the clearance check


@dataclass(frozen=True)
class LayoutConfig:
    min_instances: int = 2
    max_instances: int = 10
    relation_probs: dict = field(default_factory=lambda: {"left_of": 0.2, "right_of": 0.2, "in_front_of": 0.2, "behind": 0.2, "on_top_of": 0.2})
    floor_size: tuple[float, float] = (0.25, 1.5)  # largest side of floor-standing instances
    top_size_ratio: tuple[float, float] = (0.2, 0.7)  # on-top instance size / support's smaller top side
    floor_gap: tuple[float, float] = (0.02, 0.25)  # horizontal gap for left/right/front/behind (compact: frame fill)
    support_gap: tuple[float, float] = (0.0005, 0.003)  # vertical gap to the support, inside (0, 5 mm]
    tries_per_instance: int = 30
    scene_tries: int = 6
    views_per_scene: int = 4
    width: int = 518
    height: int = 518
    elevation_deg: tuple[float, float] = (5.0, 60.0)
    fov_deg: tuple[float, float] = (35.0, 65.0)
    min_visible_fraction: float = 0.05
    fill: float | None = 0.4  # target share of the frame the scene covers (None: fit the scene's box)
    min_instance_pixels: int = 32  # estimated visible pixels per instance, enforced before rendering
    occlusion: str = "mixed"  # none | mixed | heavy (datagen.cameras)
    asset_weights: dict | None = None  # uid -> weight; None = uniform
    cover_assets: bool = True  # scene i's first instance is asset i mod N of a seeded permutation
    settle: SettleConfig = field(default_factory=SettleConfig)

    def camera_config(self) -> CameraConfig:
        return CameraConfig(self.views_per_scene, self.width, self.height, self.elevation_deg, self.fov_deg,
                            min_visible_fraction=self.min_visible_fraction, fill=self.fill,
                            min_instance_pixels=self.min_instance_pixels, occlusion=self.occlusion)


class AssetLibrary:
    """Lazy caches over manifest records: canonical and posed meshes, height maps, sized fcl assets.

    ``exclusions`` (uid -> reason) lists the assets found unusable (the mesh no longer loads, or no
    resting pose passes the floor stability rule); sampling skips them.

    The caches are bounded for catalogs of any size: sized assets by ``MAX_SIZED`` entries, and
    everything kept per asset (meshes, poses, height maps and their ray intersectors, unit meshes)
    by ``max_assets`` assets, the least recently used dropped whole. A dropped asset is rebuilt
    from its file when drawn again, to the same values: a scene never depends on what was cached.
    """

    MAX_SIZED = 600

    def __init__(self, records: Sequence, refine_poses: bool = True, max_assets: int = 256):
        if max_assets < 1:
            raise ValueError(f"max_assets must be >= 1, got {max_assets}")
        self.max_assets = int(max_assets)
        self._recent: OrderedDict[str, None] = OrderedDict()  # uids with cached data, least recent first
        if not records:
            raise ValueError("AssetLibrary needs at least one asset record")
        self.refine_poses = refine_poses
        self.records = list(records)
        self.by_uid = {r.uid: r for r in self.records}
        self._canonical: dict[str, trimesh.Trimesh] = {}
        self._posed: dict[tuple[str, int], tuple[trimesh.Trimesh, np.ndarray]] = {}
        self._heights: dict[tuple[str, int], HeightMap] = {}
        self._sized: OrderedDict[tuple[str, int, float], physics.SizedAsset] = OrderedDict()  # LRU
        self._bases: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._posed_extras: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._bounds: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # unit-size bounding polytopes
        self._units: dict[tuple[str, int], physics.UnitMesh] = {}  # triangle boxes shared by sizes
        self._mesh_bvhs: dict[str, physics.MeshBVH] = {}  # canonical mesh BVH shared by poses and sizes
        self._simulated: dict[tuple[str, int, int], np.ndarray] = {}  # hull vertices settling simulates
        self._proxies: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # unit-size screening proxies
        self._rays: dict[tuple[str, int], DownRays] = {}  # ray casts down onto unit-size posed meshes
        self._usable: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # uid -> (pose indices, probabilities)
        self.exclusions: dict[str, str] = {}

    def poses(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        """(rotations (K, 3, 3), probabilities) of the asset's resting poses in its canonical frame."""
        from assets_manifest.stable_poses import from_record

        return from_record(self.by_uid[uid].stable_poses)

    def _base(self, uid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(surface samples, centre of mass, convex hull vertices) in the canonical frame, once per
        asset: every pose and size is a similarity transform of them."""
        if uid not in self._bases:
            mesh = self.canonical(uid)
            samples, com = physics.samples_and_com(mesh)
            self._bases[uid] = (samples, com, np.asarray(mesh.convex_hull.vertices))
        return self._bases[uid]

    def posed(self, uid: str, pose: int) -> tuple[trimesh.Trimesh, np.ndarray]:
        """(mesh at unit size in resting pose ``pose``, 4x4 P: canonical -> posed frame).

        The posed frame is canonical again (z up, centred x/y, min z = 0, largest side 1), so sizes
        and height maps mean the same for every pose.
        """
        key = (uid, int(pose))
        self._use(uid)
        if key not in self._posed:
            rot = self.poses(uid)[0][pose]
            samples, com, hull = self._base(uid)
            if self.refine_poses:  # the hull facet's pose, corrected to where the asset really rests
                from datagen.settle import rest_on_floor

                rot = rest_on_floor(hull @ rot.T, rot @ com) @ rot
            v = self.canonical(uid).vertices @ rot.T
            lo, hi = v.min(axis=0), v.max(axis=0)
            scale = 1.0 / float(np.max(hi - lo))
            m = np.eye(4)
            m[:3, :3] = scale * rot
            m[:3, 3] = -scale * np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
            mesh = trimesh.Trimesh(v * scale + m[:3, 3], self.canonical(uid).faces, process=False)
            self._posed[key] = (mesh, m)
            self._posed_extras[key] = tuple(x @ m[:3, :3].T + m[:3, 3] for x in (samples, com, hull))
        return self._posed[key]

    def posed_extras(self, uid: str, pose: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(samples, centre of mass, hull vertices) of ``posed(uid, pose)`` at unit size."""
        self.posed(uid, pose)
        return self._posed_extras[(uid, int(pose))]

    def _exclude(self, uid: str, reason: str) -> None:
        """Record the exclusion and fail the scene that found it, so a generation run's
        failures.jsonl names the asset once per process; later scenes skip it."""
        self.exclusions[uid] = reason
        raise SceneFailure("layout", f"asset {uid} ({self.by_uid[uid].path}) excluded: {reason}")

    def usable_poses(self, uid: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Pose indices that stand stably on the floor, with renormalised probabilities; None when the
        asset is excluded. Finding that an asset cannot be used at all records it in ``exclusions``
        and raises ``SceneFailure`` for the scene that found it (see ``_exclude``)."""
        if uid in self.exclusions:
            return None
        if uid not in self._usable:
            from assets_manifest import AssetError

            try:
                _, probs = self.poses(uid)
                ok = []
                for k in range(len(probs)):
                    samples, com, _ = self.posed_extras(uid, k)
                    if physics.is_stable(samples, com, _floor_heights):
                        ok.append(k)
            except (AssetError, OSError, ValueError) as exc:
                self._exclude(uid, f"cannot load: {exc}")
            if not ok:
                self._exclude(uid, f"none of its {len(probs)} resting poses passes the floor stability rule "
                                   "(centre of mass inside the contact hull with margin)")
            p = probs[ok]
            self._usable[uid] = (np.array(ok), p / p.sum())
        return self._usable[uid]

    def _use(self, uid: str) -> None:
        """Mark ``uid`` as just used; drop the least recently used asset's data past ``max_assets``."""
        self._recent[uid] = None
        self._recent.move_to_end(uid)
        while len(self._recent) > self.max_assets:
            old, _ = self._recent.popitem(last=False)
            self._canonical.pop(old, None)
            self._bases.pop(old, None)
            self._mesh_bvhs.pop(old, None)
            for cache in (self._posed, self._posed_extras, self._heights, self._bounds, self._units, self._simulated, self._sized,
                          self._proxies, self._rays):
                for key in [k for k in cache if k[0] == old]:
                    del cache[key]

    def cached_assets(self) -> int:
        """How many assets have data cached now (at most ``max_assets``)."""
        return len(self._recent)

    def canonical(self, uid: str) -> trimesh.Trimesh:
        self._use(uid)
        if uid not in self._canonical:
            from assets_manifest import load_mesh

            rec = self.by_uid[uid]
            mesh = load_mesh(rec.path)
            used = np.unique(mesh.faces)
            n = np.asarray(rec.normalization)
            verts = mesh.vertices[used] @ n[:3, :3].T + n[:3, 3]
            self._canonical[uid] = trimesh.Trimesh(verts, np.searchsorted(used, mesh.faces), process=False)
        return self._canonical[uid]

    def heights(self, uid: str, pose: int = 0) -> HeightMap:
        key = (uid, int(pose))
        self._use(uid)
        if key not in self._heights:
            self._heights[key] = height_map(self.posed(uid, pose)[0])
        return self._heights[key]

    def sized(self, uid: str, size: float, pose: int = 0) -> physics.SizedAsset:
        key = (uid, int(pose), float(size))
        self._use(uid)
        if key in self._sized:
            self._sized.move_to_end(key)
        else:
            samples, com, hull = self.posed_extras(uid, pose)
            unit, m = self.posed(uid, pose)
            if (uid, int(pose)) not in self._bounds:
                self._bounds[(uid, int(pose))] = physics.bounding_polytope(hull)
                # every pose's unit mesh is a similarity transform of the canonical one: one BVH
                # of that serves them all (and every size)
                scale = float(np.linalg.norm(m[:3, 0]))
                self._units[(uid, int(pose))] = physics.UnitMesh(
                    unit, source=self._mesh_bvh(uid), source_frame=physics.Frame(m[:3, :3] / scale, m[:3, 3], scale))
            self._sized[key] = physics.make_sized_asset(uid, unit, float(size), pose=int(pose),
                                                        unit_extras=(samples, com, hull), unit_bound=self._bounds[(uid, int(pose))],
                                                        unit_mesh=self._units[(uid, int(pose))])
            if len(self._sized) > self.MAX_SIZED:  # scaled meshes and samples: bound the memory of long runs
                self._sized.popitem(last=False)
        return self._sized[key]

    def _mesh_bvh(self, uid: str) -> physics.MeshBVH:
        """The canonical mesh's ``MeshBVH`` (built on first use), shared by the asset's poses."""
        if uid not in self._mesh_bvhs:
            mesh = self.canonical(uid)
            self._mesh_bvhs[uid] = physics.MeshBVH(mesh.vertices, mesh.faces)
        return self._mesh_bvhs[uid]

    def down_rays(self, uid: str, pose: int) -> "DownRays":
        """``DownRays`` of the unit-size posed mesh (support heights of every size of it)."""
        key = (uid, int(pose))
        self._use(uid)
        if key not in self._rays:
            self._rays[key] = DownRays(self.posed(uid, pose)[0])
        return self._rays[key]

    def proxy(self, uid: str, pose: int) -> tuple[np.ndarray, np.ndarray]:
        """(vertices, faces) of ``posed(uid, pose)``'s coarse proxy at unit size
        (``datagen.proxy_mesh.cluster_simplify``, ``PROXY_CELLS`` cells): camera choice screens
        candidates on it. Scaling the unit proxy by a size gives the sized mesh's proxy."""
        key = (uid, int(pose))
        self._use(uid)
        if key not in self._proxies:
            from datagen.proxy_mesh import cluster_simplify

            unit = self.posed(uid, pose)[0]
            self._proxies[key] = cluster_simplify(unit.vertices, unit.faces, PROXY_CELLS)
        return self._proxies[key]

    def simulation_hull(self, asset: physics.SizedAsset, max_vertices: int) -> np.ndarray:
        """``settle.simulation_hull`` of the sized asset's hull (its selection computed once per pose)."""
        from datagen.settle import simulation_hull_index

        key = (asset.uid, asset.pose, int(max_vertices))
        if key not in self._simulated:
            self._simulated[key] = simulation_hull_index(self.posed_extras(asset.uid, asset.pose)[2], max_vertices)
        return asset.hull[self._simulated[key]]

    def coverage_uid(self, dataset_seed: int, index: int) -> str:
        """The asset scene ``index`` starts with: every asset once per N consecutive scenes."""
        uids = sorted(self.by_uid)
        perm = np.random.default_rng([int(dataset_seed), 0xC0FE]).permutation(len(uids))
        return uids[int(perm[index % len(uids)])]


@dataclass
class Placed:
    record: object
    asset: physics.SizedAsset
    rot: np.ndarray  # (3, 3) world rotation of the posed frame (a yaw until settling tips it)
    t: np.ndarray
    support: int  # 0 = floor, else 1-based index
    shapes: physics.Posed = field(repr=False)  # bounding solid and exact mesh at its pose (cropped per query)
    aabb: np.ndarray = field(repr=False)  # (2, 3)
    _sparse: np.ndarray | None = field(default=None, init=False, repr=False)
    _world_samples: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def world_samples(self) -> np.ndarray:
        """Its surface samples (vertices included) in the world, computed once."""
        if self._world_samples is None:
            self._world_samples = self.world(self.asset.samples)
        return self._world_samples

    def sparse_world_samples(self, at_most: int) -> np.ndarray:
        """Every k-th surface sample in the world, at most ``at_most`` of them (only those are moved)."""
        if self._world_samples is not None:
            return self._world_samples[::max(1, -(-len(self._world_samples) // at_most))]
        return self.world(self.asset.samples[::max(1, -(-len(self.asset.samples) // at_most))])

    @property
    def surface_points(self) -> np.ndarray:
        """(at most SURFACE_POINTS of) its surface samples in the world, computed once."""
        if self._sparse is None:
            self._sparse = self.sparse_world_samples(SURFACE_POINTS)
        return self._sparse

    def has_samples_near(self, world_points: np.ndarray, reach: float) -> bool:
        """Is any of ``world_points`` within ``reach`` of one of its ``surface_points``?

        Asked in its own frame (rigid: the same distances), on a k-d tree of the sized asset's
        samples built once per sized asset and kept with it: a tree per placed instance cost
        0.4 ms for each of ~9 placements tried per scene."""
        pts = np.asarray(world_points)
        # its samples lie in its box: only points within ``reach`` of the box can be near one
        pts = pts[np.all((pts >= self.aabb[0] - reach) & (pts <= self.aabb[1] + reach), axis=1)]
        if len(pts) == 0:
            return False
        asset = self.asset
        if asset.sample_tree is None:
            asset.sample_tree = cKDTree(asset.samples[::max(1, -(-len(asset.samples) // SURFACE_POINTS))])
        local = (pts - self.t) @ self.rot  # inverse rotation (row vectors)
        return bool(np.isfinite(asset.sample_tree.query(local, k=1, distance_upper_bound=reach)[0]).any())

    def world(self, local: np.ndarray) -> np.ndarray:
        return local @ self.rot.T + self.t

    def local_xy(self, world_xy: np.ndarray) -> np.ndarray:
        return (world_xy - self.t[:2]) @ self.rot[:2, :2]  # inverse rotation (row vectors)


def _box_points(asset: physics.SizedAsset) -> np.ndarray:
    """Points with the mesh's bounding box in any rotation: its convex hull's vertices (every
    extreme of the mesh along an axis is one), a few hundred instead of up to 100k vertices."""
    return asset.mesh.vertices if asset.hull is None else asset.hull


def _place(record, asset: physics.SizedAsset, rotation, t: np.ndarray, support: int) -> Placed:
    """``rotation``: a yaw (radians) or a 3x3 matrix."""
    rot = physics.rotz(rotation) if np.ndim(rotation) == 0 else np.asarray(rotation, dtype=np.float64)
    v = _box_points(asset) @ rot.T + t
    return Placed(record, asset, rot, np.asarray(t, float), support, physics.posed(asset, rot, t),
                  np.stack([v.min(axis=0), v.max(axis=0)]))


def _clear_of_others(new: Placed, placed: list[Placed], skip: int | None) -> bool:
    """>= MIN_CLEARANCE_PAIR from all but ``skip``: broad phase on boxes; bounding solids that far
    apart clear a pair; two surface samples closer than that condemn it (points on both surfaces
    bound the distance from above); only the rest pay for the exact fcl distance, on the triangles
    within reach of each other. The verdict is the exact distance's either way."""
    for k, other in enumerate(placed, start=1):
        if k == skip:
            continue
        if np.any(new.aabb[0] > other.aabb[1] + MIN_CLEARANCE_PAIR) or np.any(other.aabb[0] > new.aabb[1] + MIN_CLEARANCE_PAIR):
            continue
        if physics.clear_by_bounds(new.shapes, other.shapes, MIN_CLEARANCE_PAIR):
            continue
        if other.has_samples_near(new.surface_points, MIN_CLEARANCE_PAIR):
            return False
        if physics.distance_within(new.shapes, other.shapes, MIN_CLEARANCE_PAIR) < MIN_CLEARANCE_PAIR:
            return False
    return True


def _floor_heights(xy: np.ndarray) -> np.ndarray:
    return np.zeros(len(xy))


def _support_heights(anchor: Placed, lib: AssetLibrary):
    """(estimate, exact, height map): heights of the anchor's upper surface below world xy points.

    The estimate reads the ray-cast height map (fast, for choosing a spot and a first drop height);
    the exact one casts a ray down onto the anchor's mesh for each point (for the stability rule).
    """
    size = anchor.asset.size
    hm = lib.heights(anchor.record.uid, anchor.asset.pose).scaled(size)
    # rays are cast on the unit-size posed mesh (the sized one is it times ``size``): its ray
    # intersector (an embree scene) is built once per asset and pose, not once per size level
    rays = lib.down_rays(anchor.record.uid, anchor.asset.pose)

    def estimate(world_xy: np.ndarray) -> np.ndarray:
        return hm.lookup(anchor.local_xy(world_xy)) + anchor.t[2]

    def exact(world_xy: np.ndarray) -> np.ndarray:
        local = anchor.local_xy(world_xy) / size
        return rays.first_heights_below(local) * size + anchor.t[2]

    return estimate, exact, hm


class DownRays:
    """Rays cast straight down onto one mesh (its frame): ``first_heights_below``.

    Holds the embree intersector, the face normals and first vertices as plain arrays: reading
    them from the trimesh object verifies its cache by hashing the vertex array on every access,
    which took 3 ms of a 30 ms scene layout (442 stability checks per 100 scenes)."""

    def __init__(self, mesh: trimesh.Trimesh):
        self.intersector = mesh.ray
        self.normals = np.asarray(mesh.face_normals)
        self.v0 = np.asarray(mesh.vertices)[np.asarray(mesh.faces)[:, 0]]
        self.top = float(mesh.bounds[1, 2])

    def first_heights_below(self, xy: np.ndarray) -> np.ndarray:
        """(N,) height of the highest surface below each point ``xy`` ((N, 2)), -inf where none:
        the first hit of a ray cast straight down from above the mesh.

        Embree finds the triangle; its height at the point comes from the triangle's plane. This
        is what ``intersects_location(..., multiple_hits=False)`` answers, with its rule that a
        triangle seen edge-on (|normal z| <= 1e-5) gives no hit, at a third of its cost: trimesh's
        general ray-plane step took two thirds of the time of the stability checks."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        origins = np.column_stack([xy, np.full(len(xy), self.top + 1.0)])
        tri = np.asarray(self.intersector.intersects_first(origins, np.tile([0.0, 0.0, -1.0], (len(xy), 1))))
        h = np.full(len(xy), -np.inf)
        hit = np.flatnonzero(tri >= 0)
        if len(hit):
            n, v0 = self.normals[tri[hit]], self.v0[tri[hit]]
            ok = np.abs(n[:, 2]) > 1e-5
            hit, n, v0 = hit[ok], n[ok], v0[ok]
            # the plane n . (p - v0) = 0 at (x, y)
            h[hit] = v0[:, 2] + (n[:, 0] * (v0[:, 0] - xy[hit, 0]) + n[:, 1] * (v0[:, 1] - xy[hit, 1])) / n[:, 2]
        return h


def _stable(p: Placed, heights_at, lift: bool = False) -> bool:
    """``physics.is_stable`` on the instance's surface samples. Only samples within its lowest
    ``physics.LOW_BAND`` can touch; while its rotation is a yaw (placement: it keeps z) they are
    found in the local frame, so only they are moved to the world, not all of them.

    ``lift``: judge it moved up or down until its samples just clear the support (no gap below
    zero). The verdict reads the points within a band of the smallest gap, which a vertical move
    does not change once no point is below the support: so an estimated height gives the verdict of
    the exact one, before the exact drop pays for BVHs.
    """
    if p._world_samples is None and np.array_equal(p.rot[2], [0.0, 0.0, 1.0]):
        z = p.asset.samples[:, 2]
        low = p.world(p.asset.samples[z <= z.min() + physics.LOW_BAND])
    else:
        w = p.world_samples
        low = w[w[:, 2] <= w[:, 2].min() + physics.LOW_BAND]
    com = p.world(p.asset.com[None])[0]
    if lift:
        gap = low[:, 2] - heights_at(low[:, :2])
        gap = gap[np.isfinite(gap)]
        if len(gap) == 0:
            return False
        shift = np.array([0.0, 0.0, -float(gap.min())])
        low, com = low + shift, com + shift
    return physics.is_stable(low, com, heights_at)  # it selects the same low band again: a no-op here


def _pick_size(rng, levels: np.ndarray, lo: float, hi: float) -> float | None:
    ok = levels[(levels >= lo) & (levels <= hi)]
    return float(rng.choice(ok)) if len(ok) else None


class SceneSampler:
    """Places instances for one scene; one instance per call of ``add``."""

    def __init__(self, lib: AssetLibrary, cfg: LayoutConfig, rng: np.random.Generator, first_uid: str | None = None):
        self.lib, self.cfg, self.rng = lib, cfg, rng
        self.first_uid = first_uid
        self.placed: list[Placed] = []
        self.relations: list[dict] = []
        uids = [r.uid for r in lib.records]
        w = np.array([(cfg.asset_weights or {}).get(u, 1.0) for u in uids], dtype=np.float64)
        self.uids, self.w = uids, w

    def _record(self, uid: str | None = None):
        """A usable asset (``uid`` if given and usable) and one of its resting poses."""
        for _ in range(4 * len(self.uids)):
            if uid is None:
                w = self.w * np.array([u not in self.lib.exclusions for u in self.uids])
                if w.sum() <= 0:
                    raise SceneFailure("layout", "every asset of the catalog is excluded: " + "; ".join(
                        f"{u}: {r}" for u, r in sorted(self.lib.exclusions.items())))
                pick = self.uids[int(self.rng.choice(len(self.uids), p=w / w.sum()))]
            else:
                pick = uid
            usable = self.lib.usable_poses(pick)
            if usable is not None:
                ks, p = usable
                return self.lib.by_uid[pick], int(ks[int(self.rng.choice(len(ks), p=p))])
            if uid is not None:
                return None, None
        raise SceneFailure("layout", "no usable asset found")

    def place_first(self) -> bool:
        for attempt in range(self.cfg.tries_per_instance):
            # the scene's designated asset for the first half of the tries, then any asset
            designated = self.first_uid if attempt < self.cfg.tries_per_instance // 2 else None
            rec, pose = self._record(designated)
            if rec is None:
                rec, pose = self._record()
            size = _pick_size(self.rng, SIZE_LEVELS, *self.cfg.floor_size)
            asset = self.lib.sized(rec.uid, size, pose)
            z = self.rng.uniform(*self.cfg.support_gap)
            p = _place(rec, asset, self.rng.uniform(0, 2 * np.pi), np.array([0.0, 0.0, z]), 0)
            if _stable(p, _floor_heights):
                self.placed.append(p)
                return True
        return False

    def _beside(self, rel: str, anchor_idx: int) -> Placed | None:
        anchor = self.placed[anchor_idx - 1]
        rec, pose = self._record()
        size = _pick_size(self.rng, SIZE_LEVELS, *self.cfg.floor_size)
        asset = self.lib.sized(rec.uid, size, pose)
        yaw = self.rng.uniform(0, 2 * np.pi)
        v = _box_points(asset) @ physics.rotz(yaw).T
        vlo, vhi = v.min(axis=0), v.max(axis=0)
        gap = self.rng.uniform(*self.cfg.floor_gap)
        a_lo, a_hi = anchor.aabb
        axis = 0 if rel in ("left_of", "right_of") else 1
        other = 1 - axis
        t = np.zeros(3)
        if rel in ("left_of", "in_front_of"):  # entirely at smaller x / y
            t[axis] = a_lo[axis] - gap - vhi[axis]
        else:
            t[axis] = a_hi[axis] + gap - vlo[axis]
        # overlap the anchor's span on the other axis, so "left of" looks like left of, not diagonal
        t[other] = self.rng.uniform(a_lo[other] - vlo[other] - 0.5 * (vhi[other] - vlo[other]),
                                    a_hi[other] - vhi[other] + 0.5 * (vhi[other] - vlo[other]))
        t[2] = self.rng.uniform(*self.cfg.support_gap)
        p = _place(rec, asset, yaw, t, 0)
        if not _clear_of_others(p, self.placed, None) or not _stable(p, _floor_heights):
            return None
        return p

    def _on_top(self, anchor_idx: int) -> Placed | None:
        anchor = self.placed[anchor_idx - 1]
        heights_at, exact_heights, hm = _support_heights(anchor, self.lib)
        cells = hm.top_cells()
        if len(cells) == 0:
            return None
        top_side = float(min(np.ptp(cells[:, 0]), np.ptp(cells[:, 1])) + hm.step.min())
        rec, pose = self._record()
        size = _pick_size(self.rng, SIZE_LEVELS, self.cfg.top_size_ratio[0] * top_side, self.cfg.top_size_ratio[1] * top_side)
        if size is None:
            return None
        asset = self.lib.sized(rec.uid, size, pose)
        yaw = self.rng.uniform(0, 2 * np.pi)
        rot = physics.rotz(yaw)
        spot = anchor.world(np.append(cells[int(self.rng.integers(len(cells)))], 0.0)[None])[0, :2]
        t = np.zeros(3)
        t[:2] = spot - (rot @ asset.com)[:2]
        # ray-cast estimate of the resting height: highest support point under the object's points
        local = asset.samples @ rot.T
        h = heights_at(local[:, :2] + t[:2])
        under = np.isfinite(h)
        if under.sum() < 3:
            return None
        z0 = float(np.max(h[under] - local[under, 2]))
        t[2] = z0
        if not _stable(_place(rec, asset, yaw, t, anchor_idx), exact_heights, lift=True):
            return None  # would not stand there (12 of 49 proposals on 40 scenes): skip the exact drop
        z = self._drop_onto(asset, yaw, t[:2], anchor, z0)
        if z is None or z < MIN_HEIGHT_ON_TOP:
            return None
        t[2] = z
        p = _place(rec, asset, yaw, t, anchor_idx)
        d = physics.distance_within(p.shapes, anchor.shapes, physics.SUPPORT_GAP_MAX + 1e-6)
        if not (0.0 < d <= physics.SUPPORT_GAP_MAX):
            return None
        if not _clear_of_others(p, self.placed, anchor_idx) or not _stable(p, exact_heights):
            return None
        return p

    def _drop_onto(self, asset, yaw, xy, anchor: Placed, z_est: float) -> float | None:
        """Exact contact height with fcl: bisect between a colliding and a free height (the meshes
        cropped once to where they can meet over the heights searched).

        The height-map estimate is within a few millimetres of the contact for nearly every drop
        (all 111 drops of 90 real-asset scenes found their contact in the band), so the search
        first brackets the contact in ``DROP_NEAR`` around it: a sweep over 13 mm crops a
        small object to its lowest millimetres, where one over the whole 12 cm search kept every
        triangle of it (and built its whole BVH: the tail of layout time). Outside it, the wide
        search runs as before."""
        rot, start = physics.rotz(yaw), np.array([xy[0], xy[1], 0.0])
        below, above = DROP_NEAR
        z = None
        near = physics.VerticalSweep(asset.shapes, rot, start, (z_est - below, z_est + above), anchor.shapes)
        if near.hits(z_est - below):
            z = self._bisect_contact(near.hits, z_est - below, z_est, z_est + above)
        if z is None:
            top = z_est + 0.1  # the highest ``hi`` that is tested
            sweep = physics.VerticalSweep(asset.shapes, rot, start, (z_est - 0.02, top), anchor.shapes)
            lo = z_est - 0.02
            if not sweep.hits(lo):  # falls through the surface estimate: nothing solid below
                lo = z_est - 0.2
                sweep = physics.VerticalSweep(asset.shapes, rot, start, (lo, top), anchor.shapes)
                if not sweep.hits(lo):
                    return None
            z = self._bisect_contact(sweep.hits, lo, z_est, top)
        return None if z is None else z + float(self.rng.uniform(*self.cfg.support_gap))

    @staticmethod
    def _bisect_contact(hits, lo: float, z_est: float, top: float) -> float | None:
        """The lowest free height found by bisection above ``lo`` (which collides), after stepping
        up from ``z_est + 2 mm`` in doubling steps to a free height; None when none is free up to
        ``top``."""
        hi, step = z_est + 0.002, 0.002
        while hits(hi):
            hi += step
            step *= 2
            if hi > top:
                return None
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if hits(mid) else (lo, mid)
        return hi

    def add(self) -> bool:
        rels = list(self.cfg.relation_probs)
        probs = np.array([self.cfg.relation_probs[r] for r in rels], dtype=np.float64)
        for _ in range(self.cfg.tries_per_instance):
            rel = rels[int(self.rng.choice(len(rels), p=probs / probs.sum()))]
            anchor_idx = int(self.rng.integers(1, len(self.placed) + 1))
            p = self._on_top(anchor_idx) if rel == "on_top_of" else self._beside(rel, anchor_idx)
            if p is not None:
                self.placed.append(p)
                self.relations.append({"subject": len(self.placed), "relation": rel, "object": anchor_idx})
                return True
        return False


def object_to_world(p: Placed, lib: AssetLibrary) -> np.ndarray:
    """T(t) . R . S(size) . P(pose) . normalization: file vertices -> world."""
    m = np.eye(4)
    m[:3, :3] = p.rot * p.asset.size
    m[:3, 3] = p.t
    pose = lib.posed(p.record.uid, p.asset.pose)[1]
    return m @ pose @ np.asarray(p.record.normalization, dtype=np.float64)


def _world_proxy(p: Placed, lib: AssetLibrary) -> tuple[np.ndarray, np.ndarray]:
    """The instance's screening proxy (``AssetLibrary.proxy``) at its size and place."""
    vertices, faces = lib.proxy(p.record.uid, p.asset.pose)
    return p.world(vertices * p.asset.size), faces


def _relation_holds(rel: str, a: np.ndarray, b: np.ndarray) -> bool:
    """Beside relations on world boxes (SHARD_FORMAT.md: +X right, +Y behind)."""
    return {"left_of": a[1, 0] < b[0, 0], "right_of": a[0, 0] > b[1, 0],
            "in_front_of": a[1, 1] < b[0, 1], "behind": a[0, 1] > b[1, 1]}[rel]


def settle_placed(lib: AssetLibrary, placed: list[Placed], relations: list[dict], cfg: SettleConfig) -> tuple[list[Placed], list[dict], dict]:
    """Settle the proposal with PyBullet; (settled instances, relations that still hold, summary).

    ``support`` is what each instance rests on after settling; ``on_top_of`` follows it, and a
    beside relation is kept only where it still holds on the settled boxes.
    """
    bodies = [Body((p.record.uid, p.asset.pose, p.asset.size), p.asset.mesh, p.asset.com, p.asset.shapes,
                   p.rot, p.t, p.support, p.asset.size, lib.simulation_hull(p.asset, cfg.hull_vertices)) for p in placed]
    res = settle_scene(bodies, cfg)
    out = [_place(p.record, p.asset, r, t, sup) for p, r, t, sup in zip(placed, res.rot, res.t, res.support)]
    rels = []
    for rel in relations:
        a, b = out[rel["subject"] - 1], out[rel["object"] - 1]
        if rel["relation"] == "on_top_of":
            if a.support == rel["object"]:
                rels.append(rel)
        elif _relation_holds(rel["relation"], a.aabb, b.aabb):
            rels.append(rel)
    summary = {"engine": "pybullet", "max_translation_m": float(max(res.translation)),
               "max_rotation_deg": float(max(res.rotation_deg)), "steps": int(sum(res.steps))}
    return out, rels, summary


def sample_scene(lib: AssetLibrary, cfg: LayoutConfig, dataset_seed: int, index: int) -> dict:
    """One random scene spec for (dataset seed, index); raises ``SceneFailure`` after bounded retries."""
    rng = scene_rng(dataset_seed, index, "layout")
    first_uid = lib.coverage_uid(dataset_seed, index) if cfg.cover_assets and not cfg.asset_weights else None
    reasons = []
    for attempt in range(cfg.scene_tries):
        n = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
        s = SceneSampler(lib, cfg, rng, first_uid)
        if not s.place_first():
            reasons.append("no stable first instance")
            continue
        while len(s.placed) < n and s.add():
            pass
        if len(s.placed) < n:
            reasons.append(f"placed {len(s.placed)} of {n} instances")
            continue
        physics_info = None
        if cfg.settle.enabled:
            try:
                s.placed, s.relations, physics_info = settle_placed(lib, s.placed, s.relations, cfg.settle)
            except SettleError as exc:
                reasons.append(f"settling: {exc}")
                continue
        meshes = [trimesh.Trimesh(p.world(p.asset.mesh.vertices), p.asset.mesh.faces, process=False) for p in s.placed]
        aabbs = np.stack([p.aabb for p in s.placed])
        # the ranking of viewpoints reads every k-th sample (cameras.rank_points): move only those
        cameras = sample_cameras(meshes, aabbs, rng, cfg.camera_config(), points=[p.sparse_world_samples(RANK_POINTS) for p in s.placed],
                                 hull_points=np.concatenate([p.world(p.asset.hull) for p in s.placed]),
                                 proxies=[_world_proxy(p, lib) for p in s.placed])
        if len(cameras) < cfg.views_per_scene:
            reasons.append(f"found {len(cameras)} of {cfg.views_per_scene} views with every instance visible")
            continue
        return {
            "format": "iscene-scene/1",
            "scene_id": scene_id(index),
            "seed": scene_seed(dataset_seed, index),
            "source": "random",
            "instances": [
                {"index": k, "uid": p.record.uid, "asset_source": p.record.source, "path": p.record.path,
                 "sha256": p.record.sha256, "size": p.asset.size, "object_to_world": object_to_world(p, lib).tolist(),
                 "world_aabb": p.aabb.tolist(), "support": p.support, "pose": p.asset.pose}
                for k, p in enumerate(s.placed, start=1)
            ],
            "relations": s.relations,
            "cameras": cameras,
            "background": [],
            "floor": True,
            "physics": physics_info,  # null when settling is off
        }
    raise SceneFailure("layout", f"scene {scene_id(index)}: no valid scene in {cfg.scene_tries} tries ({'; '.join(reasons)})")


_LIBRARIES: OrderedDict[str, AssetLibrary] = OrderedDict()  # this process's, by catalog fingerprint
LIBRARIES_PER_PROCESS = 2


def catalog_fingerprint(records: Sequence) -> str:
    """sha256 over what a library derives from each record (uid, file, normalisation, poses)."""
    import hashlib
    import json

    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.uid, r.path, r.sha256, r.normalization, r.stable_poses], sort_keys=True, default=str).encode())
    return h.hexdigest()


def shared_library(records: Sequence, fingerprint: str | None = None) -> AssetLibrary:
    """This process's ``AssetLibrary`` for ``records`` (made on first use, then reused).

    Each Ray task gets its own unpickled copy of the scene source, so a library held by the source
    started cold for every shard: 16 scenes paid for loading, posing and ray-casting their assets
    again. Tasks that run in one worker process now share one library per catalog (at most
    ``LIBRARIES_PER_PROCESS``, least recently used dropped), keyed by a fingerprint of every
    record (``catalog_fingerprint``; pass it when known), so an edited catalog never reuses stale
    caches.
    """
    key = fingerprint or catalog_fingerprint(records)
    if key not in _LIBRARIES:
        _LIBRARIES[key] = AssetLibrary(records)
        while len(_LIBRARIES) > LIBRARIES_PER_PROCESS:
            _LIBRARIES.popitem(last=False)
    _LIBRARIES.move_to_end(key)
    return _LIBRARIES[key]


class RandomSceneSource:
    """The random engine as a scene source for the runner: ``spec(index)``.

    Holds only plain data (records, config, seed) when pickled to workers; each process uses its
    shared asset library for those records (``shared_library``), built lazily.
    """

    source_name = "random"

    def __init__(self, records_or_manifest, config: LayoutConfig = LayoutConfig(), dataset_seed: int = 0):
        if isinstance(records_or_manifest, (str, Path)):
            from assets_manifest import load_manifest

            records_or_manifest = load_manifest(records_or_manifest)
        self.records = list(records_or_manifest)
        self.config = config
        self.dataset_seed = int(dataset_seed)
        self._lib: AssetLibrary | None = None
        self.fingerprint = catalog_fingerprint(self.records)  # computed once, travels with the pickle

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lib"] = None
        return state

    @property
    def library(self) -> AssetLibrary:
        if self._lib is None:
            self._lib = shared_library(self.records, self.fingerprint)
        return self._lib

    def spec(self, index: int) -> dict:
        return sample_scene(self.library, self.config, self.dataset_seed, index)

    def with_config(self, **changes) -> "RandomSceneSource":
        return RandomSceneSource(self.records, replace(self.config, **changes), self.dataset_seed)
