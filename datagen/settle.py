"""Settle a laid-out scene with a rigid-body simulation (PyBullet) before it is rendered.

The layout sampler proposes positions that pass geometric rules; a proposal can still rest on one
vertex, or hover with one end a few millimetres up. Here each instance is dropped under gravity in
PyBullet (Bullet, as Kubric uses; docs/PHYSICS.md says why) until it is at rest, then snapped onto
the exact surface of what it rests on, and the scene is rejected when anything moved beyond a
tolerance (it fell, rolled or tipped over: the relations the sampler chose no longer describe it),
came to rest on two things, or ended closer than the clearance to something it does not rest on.

How (docs/PHYSICS.md has the reasoning):

- Instances settle one at a time in placement order, which is support order (an instance's support
  is always placed before it). The moving instance is a dynamic body whose collision shape is the
  convex hull of its full mesh (exact for what touches a plane or a flat top: a hull's lowest points
  are mesh vertices); what it rests on is static: the floor plane, or the support's full triangle
  mesh at its already settled pose (Bullet's concave triangle-mesh shape, static bodies only).
  Everything else is left out of the simulation; the layout keeps it >= 1 cm away, and that is
  checked again on the full meshes after settling.
- Bullet keeps a collision margin of about a millimetre, so the simulated rest height is off by
  that much; after the body stops, it is moved vertically until its full mesh just touches its
  support (fcl bisection) and lifted by ``rest_gap``: nothing penetrates, and the contact is as tight
  as a render can show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import trimesh

from datagen import physics


PYBULLET_MAX_VERTICES = 131072  # per collision shape (measured with pybullet 3.2.7: 131072 builds, 140000 fails)
PYBULLET_MAX_INDICES = 524288  # per collision shape (170k triangles build, 180k fail)


class SettleError(Exception):
    """The scene does not survive settling; the message says which instance and why."""


@dataclass(frozen=True)
class SettleConfig:
    enabled: bool = True
    timestep: float = 1.0 / 240.0
    max_steps: int = 480  # 2 s of simulated time
    rest_steps: int = 12  # consecutive steps below both speed thresholds = at rest
    rest_linear: float = 2e-3  # m/s
    rest_angular: float = 2e-2  # rad/s
    max_translation: float = 0.02  # m: the centre of mass may move at most min(this, rel * size)
    max_translation_rel: float = 0.08
    max_rotation_deg: float = 12.0
    friction: float = 0.8
    rolling_friction: float = 0.01  # x the instance's size (m)
    rest_gap: float = 0.0005  # m left between an instance and its support after snapping
    max_snap: float = 0.004  # m: a larger correction means the hull misrepresents the mesh there
    min_clearance: float = 0.01  # m from every instance it does not rest on (layout's rule)
    hull_vertices: int = 1024  # at most this many hull vertices simulated (see ``simulation_hull``)


@dataclass
class Body:
    """One instance to settle: its mesh in its own frame and its proposed pose in the world."""

    key: tuple  # shapes are cached per key: (uid, pose, size)
    mesh: trimesh.Trimesh  # local frame (world = rot @ v + t)
    com: np.ndarray  # centre of mass, local frame
    shapes: physics.Shapes = field(repr=False)  # exact mesh (cropped per query) and bounding solid
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))
    support: int = 0  # 0 = floor, else the 1-based index of an earlier body
    size: float = 1.0
    # the hull vertices to simulate, local frame (a ``simulation_hull``: the layout's cache makes it
    # once per asset pose); None: the mesh's convex hull, thinned here
    hull: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Settled:
    rot: list[np.ndarray]
    t: list[np.ndarray]
    support: list[int]  # what each instance rests on after settling (0 = floor)
    translation: list[float]  # centre-of-mass displacement, m
    rotation_deg: list[float]
    snap: list[float]  # vertical correction after the simulation, m
    steps: list[int]


class _World:
    """One PyBullet client per process, with collision shapes cached by key.

    Shapes are never freed individually in PyBullet; the cache is dropped (resetSimulation) when it
    grows past ``MAX_SHAPES``.
    """

    MAX_SHAPES = 400

    def __init__(self):
        import pybullet as pb

        self.pb = pb
        self.cid = pb.connect(pb.DIRECT)
        self._reset()

    def _reset(self) -> None:
        pb = self.pb
        pb.resetSimulation(physicsClientId=self.cid)
        self.shapes: dict = {}
        plane = pb.createCollisionShape(pb.GEOM_PLANE, physicsClientId=self.cid)
        self.floor = pb.createMultiBody(0.0, plane, physicsClientId=self.cid)

    def configure(self, cfg: SettleConfig) -> None:
        pb = self.pb
        if len(self.shapes) > self.MAX_SHAPES:
            self._reset()
        pb.setGravity(0.0, 0.0, -9.81, physicsClientId=self.cid)
        pb.setTimeStep(cfg.timestep, physicsClientId=self.cid)
        pb.changeDynamics(self.floor, -1, lateralFriction=cfg.friction, restitution=0.0, physicsClientId=self.cid)
        if cfg.hull_vertices != getattr(self, "hull_vertices", cfg.hull_vertices):
            self._reset()  # cached hull shapes were made with another limit
        self.hull_vertices = cfg.hull_vertices

    def _mesh_shape(self, what: str, vertices: np.ndarray, **kwargs) -> int:
        """createCollisionShape, with PyBullet's failures (an empty or degenerate vertex list makes it
        look for a mesh *file* named './') turned into a SettleError: that scene is redrawn and the
        reason recorded, instead of the exception killing the run."""
        if len(vertices) < 4:
            raise SettleError(f"{what}: {len(vertices)} vertices, too few for a collision shape")
        try:
            return self.pb.createCollisionShape(self.pb.GEOM_MESH, vertices=vertices.tolist(), physicsClientId=self.cid, **kwargs)
        except (self.pb.error, SystemError) as exc:  # past its index limit PyBullet raises a bare SystemError
            raise SettleError(f"{what}: PyBullet could not build its collision shape ({exc})") from None

    def hull_shape(self, body: Body) -> int:
        key = ("hull", body.key)
        if key not in self.shapes:
            hull = body.hull if body.hull is not None else simulation_hull(body.mesh.convex_hull.vertices, self.hull_vertices)
            self.shapes[key] = self._mesh_shape(f"asset {body.key} (hull)", np.asarray(hull, dtype=np.float64) - body.com)
        return self.shapes[key]

    def mesh_shape(self, body: Body) -> int:
        """The body's triangles as a static concave shape (a support), each vertex place once.

        PyBullet takes at most ``PYBULLET_MAX_VERTICES`` vertices and ``PYBULLET_MAX_INDICES``
        indices per shape and fails past them with a bare "createCollisionShape failed". An STL
        stores every triangle's corners apart (counter.unitsmm.STL: 251k vertices at 42k places),
        so before welding it could never be a support: 8 of 119 settled scenes on ../shared/assets
        failed on it."""
        key = ("tri", body.key)
        if key not in self.shapes:
            what = f"asset {body.key} (triangles)"
            first, inverse = trimesh.grouping.unique_rows(np.asarray(body.mesh.vertices))
            vertices, faces = np.asarray(body.mesh.vertices)[first], inverse[np.asarray(body.mesh.faces)]
            if len(vertices) > PYBULLET_MAX_VERTICES or faces.size > PYBULLET_MAX_INDICES:
                raise SettleError(f"{what}: {len(vertices)} vertices and {len(faces)} triangles, above PyBullet's limit for one "
                                  f"shape ({PYBULLET_MAX_VERTICES} vertices, {PYBULLET_MAX_INDICES // 3} triangles): it cannot "
                                  "be a support when settling")
            self.shapes[key] = self._mesh_shape(what, vertices - body.com, indices=faces.ravel().tolist(),
                                                flags=self.pb.GEOM_FORCE_CONCAVE_TRIMESH)
        return self.shapes[key]

    def add(self, shape: int, mass: float, rot: np.ndarray, com_world: np.ndarray, cfg: SettleConfig, size: float = 1.0) -> int:
        """A body whose frame is its centre of mass (the shapes are built around it).

        Bullet conserves the energy of an object rocking on a curved underside (a duck, a bowl) for
        seconds; a rolling friction of ``rolling_friction * size`` lets it come to rest as a real one does.
        """
        pb = self.pb
        quat = _quat(rot)
        bid = pb.createMultiBody(mass, shape, basePosition=com_world.tolist(), baseOrientation=quat, physicsClientId=self.cid)
        pb.changeDynamics(bid, -1, lateralFriction=cfg.friction, restitution=0.0, rollingFriction=cfg.rolling_friction * size,
                          spinningFriction=cfg.rolling_friction * size, linearDamping=0.04, angularDamping=0.1,
                          physicsClientId=self.cid)
        return bid

    def remove(self, bid: int) -> None:
        self.pb.removeBody(bid, physicsClientId=self.cid)


_WORLD: _World | None = None


def _world() -> _World:
    global _WORLD
    if _WORLD is None:
        _WORLD = _World()
    return _WORLD


def simulation_hull(hull_vertices: np.ndarray, max_vertices: int) -> np.ndarray:
    """The hull vertices Bullet simulates: all of them up to ``max_vertices``; else every vertex in
    the lowest ``SIMULATED_BASE`` of the hull's height (what it can rest on: it may tip at most
    ``max_rotation_deg``) and, above it, the most extreme vertex along each of ``max_vertices``
    directions spread over the sphere.

    Bullet's convex hull shape scans every vertex for each support point, so a dense convex scan
    (a 15k-vertex hull) made one instance's settling take 0.3-4.5 s, half the settling time of a
    40-scene run. Thinning the base too let a body rest on a facet the full mesh does not have
    (the independent at-rest check caught it), so the base is kept whole.
    """
    hull = np.asarray(hull_vertices, dtype=np.float64)
    return hull[simulation_hull_index(hull, max_vertices)]


SIMULATED_BASE = 0.15  # share of the hull's height (in its resting frame, z up) kept whole


def simulation_hull_index(hull_vertices: np.ndarray, max_vertices: int) -> np.ndarray:
    """Indices of ``simulation_hull``'s vertices (``hull_vertices`` in a frame with z up); they
    hold for the hull at any scale, so a cache computes them once per asset pose (the scan costs
    ~10 ms on a 15k-vertex hull)."""
    hull = np.asarray(hull_vertices, dtype=np.float64)
    if len(hull) <= max_vertices:
        return np.arange(len(hull))
    z = hull[:, 2]
    base = np.flatnonzero(z <= z.min() + SIMULATED_BASE * (z.max() - z.min()))
    dirs = physics.fibonacci_directions(max_vertices)
    return np.union1d(base, (hull @ dirs.T).argmax(axis=0))


def _quat(rot: np.ndarray) -> list[float]:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rot).as_quat().tolist()  # x, y, z, w: PyBullet's order


def _rot(quat) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat(quat).as_matrix()


def _simulate(world: _World, body: Body, support: Body | None, cfg: SettleConfig, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop ``body`` onto its (static) support; returns its resting (rot, t) and the steps taken."""
    pb = world.pb
    static = None
    if support is not None:
        static = world.add(world.mesh_shape(support), 0.0, support.rot, support.rot @ support.com + support.t, cfg)
    com0 = body.rot @ body.com + body.t
    dyn = world.add(world.hull_shape(body), 1.0, body.rot, com0, cfg, body.size)
    limit = min(cfg.max_translation, cfg.max_translation_rel * body.size)
    try:
        calm, steps = 0, 0
        for steps in range(1, cfg.max_steps + 1):
            pb.stepSimulation(physicsClientId=world.cid)
            v, w = pb.getBaseVelocity(dyn, physicsClientId=world.cid)
            if math.hypot(*v) < cfg.rest_linear and math.hypot(*w) < cfg.rest_angular:
                calm += 1
                if calm >= cfg.rest_steps:
                    break
            else:
                calm = 0
            if steps % 16 == 0:  # stop early once it has clearly left its place
                pos, _ = pb.getBasePositionAndOrientation(dyn, physicsClientId=world.cid)
                if np.linalg.norm(np.asarray(pos) - com0) > 2 * limit:
                    raise SettleError(f"instance {index} slid or fell ({np.linalg.norm(np.asarray(pos) - com0) * 100:.1f} cm)")
        else:
            raise SettleError(f"instance {index} still moving after {cfg.max_steps * cfg.timestep:.1f} s")
        pos, quat = pb.getBasePositionAndOrientation(dyn, physicsClientId=world.cid)
    finally:
        world.remove(dyn)
        if static is not None:
            world.remove(static)
    rot = _rot(quat)
    return rot, np.asarray(pos) - rot @ body.com, steps


def rest_on_floor(hull_vertices: np.ndarray, com: np.ndarray, cfg: SettleConfig = SettleConfig(), max_steps: int = 1200) -> np.ndarray:
    """Rotation at which a body with this convex hull and centre of mass comes to rest on a floor.

    Resting poses from ``trimesh.poses.compute_stable_poses`` are facets of a simplified hull, a
    few degrees off the real equilibrium; an asset dropped in such a pose rocks into its true rest
    and may move beyond the settling tolerance. Dropping it once here (per asset and pose, cached by
    the layout) gives poses that scene settling barely changes. Returns the identity when the drop
    does not come to rest.
    """
    world = _world()
    world.configure(cfg)
    hull = simulation_hull(hull_vertices, cfg.hull_vertices)
    com = np.asarray(com, dtype=np.float64)
    size = float(np.max(np.ptp(hull, axis=0)))
    shape = world.pb.createCollisionShape(world.pb.GEOM_MESH, vertices=(hull - com).tolist(), physicsClientId=world.cid)
    start = com + np.array([0.0, 0.0, 1e-3 * size - hull[:, 2].min()])
    dyn = world.add(shape, 1.0, np.eye(3), start, cfg, size)
    try:
        calm = 0
        for _ in range(max_steps):
            world.pb.stepSimulation(physicsClientId=world.cid)
            v, w = world.pb.getBaseVelocity(dyn, physicsClientId=world.cid)
            calm = calm + 1 if math.hypot(*v) < cfg.rest_linear * size and math.hypot(*w) < cfg.rest_angular else 0
            if calm >= cfg.rest_steps:
                _, quat = world.pb.getBasePositionAndOrientation(dyn, physicsClientId=world.cid)
                return _rot(quat)
    finally:
        world.remove(dyn)
    return np.eye(3)


def _contact_shift(body: Body, rot: np.ndarray, t: np.ndarray, support: physics.Posed | None, lowest: float,
                   span: float) -> float | None:
    """Vertical shift in [-span, span] that brings the body at (rot, t) just into contact with its
    support (fcl bisection on the meshes cropped to where they can meet). ``lowest``: the lowest
    world z of its mesh there."""
    if support is None:  # the floor: exact
        return -lowest
    hits = physics.VerticalSweep(body.shapes, rot, t, (-span, span), support).hits
    lo, hi = -span, span
    if not hits(lo) or hits(hi):
        return None
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if hits(mid) else (lo, mid)
    return hi


def settle_scene(bodies: list[Body], cfg: SettleConfig = SettleConfig()) -> Settled:
    """Settle ``bodies`` (in support order) or raise ``SettleError``."""
    world = _world()
    world.configure(cfg)
    out = Settled([], [], [], [], [], [], [])
    objs: list[physics.Posed] = []
    settled: list[Body] = []
    for i, body in enumerate(bodies, start=1):
        support = settled[body.support - 1] if body.support else None
        rot, t, steps = _simulate(world, body, support, cfg, i)
        com0, com1 = body.rot @ body.com + body.t, rot @ body.com + t
        angle = float(np.degrees(np.arccos(np.clip((np.trace(rot @ body.rot.T) - 1) / 2, -1, 1))))
        heights = body.mesh.vertices @ rot[2]  # world z of its vertices, less t[2]: only z is needed
        dz = _contact_shift(body, rot, t, objs[body.support - 1] if body.support else None,
                            float((heights + t[2]).min()), cfg.max_snap)
        if dz is None:
            raise SettleError(f"instance {i}: its mesh is more than {cfg.max_snap * 1000:.0f} mm from where its hull came to rest")
        t = t + np.array([0.0, 0.0, dz + cfg.rest_gap])
        moved = float(np.linalg.norm(com1 + [0.0, 0.0, dz] - com0))
        limit = min(cfg.max_translation, cfg.max_translation_rel * body.size)
        if moved > limit:
            raise SettleError(f"instance {i} moved {moved * 1000:.1f} mm while settling (tolerance {limit * 1000:.1f} mm)")
        if angle > cfg.max_rotation_deg:
            raise SettleError(f"instance {i} tipped {angle:.1f} deg while settling (tolerance {cfg.max_rotation_deg:.0f} deg)")
        obj = physics.Posed(body.shapes, rot, t)
        # what it rests on now, measured on the full meshes: exactly one thing within 5 mm (pairs
        # whose bounding solids are farther apart than both limits are neither touching nor too close)
        low = float((heights + t[2]).min())
        touching = [0] if low <= physics.SUPPORT_GAP_MAX else []
        far = max(physics.SUPPORT_GAP_MAX, cfg.min_clearance)
        for j, other in enumerate(objs, start=1):
            if j != body.support and physics.clear_by_bounds(obj, other, far):
                continue
            d = physics.distance_within(obj, other, far + 1e-6)  # exact up to both limits
            if d <= physics.SUPPORT_GAP_MAX:
                touching.append(j)
            elif d < cfg.min_clearance and j != body.support:
                raise SettleError(f"instance {i} ends {d * 1000:.1f} mm from instance {j} (clearance {cfg.min_clearance * 1000:.0f} mm)")
        if touching != [body.support]:
            raise SettleError(f"instance {i} rests on {touching or 'nothing'} after settling, not on {body.support}")
        objs.append(obj)
        settled.append(Body(body.key, body.mesh, body.com, body.shapes, rot, t, body.support, body.size, body.hull))
        out.rot.append(rot)
        out.t.append(t)
        out.support.append(touching[0])
        out.translation.append(moved)
        out.rotation_deg.append(angle)
        out.snap.append(float(dz))
        out.steps.append(steps)
    return out
