"""Contact physics on the full meshes with python-fcl.

BVHs are built once per (asset, size level) and moved by rigid transforms (fcl does not scale
geometry, so sizes are a fixed set of levels per asset; see ``layout.SIZE_LEVELS``). Queries:
``collide`` (first contact only, microseconds) for the drop search and ``distance`` for the
"no touching" and "within 5 mm of its support" rules.
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


@dataclass
class SizedAsset:
    """One asset in one resting pose at one size level: its posed mesh scaled, BVH, surface samples,
    centre of mass."""

    uid: str
    size: float
    mesh: trimesh.Trimesh  # posed frame scaled to ``size`` (z up, min z = 0, centred x/y)
    bvh: fcl.BVHModel = field(repr=False)
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
                     pose: int = 0, unit_extras: tuple | None = None) -> SizedAsset:
    """``canonical``: the asset at unit size in the frame it will rest in (a posed canonical mesh).

    ``unit_extras``: (samples, centre of mass, hull vertices) already computed at unit size; they
    scale with the mesh, so a cache can reuse them for every size.
    """
    mesh = canonical.copy()
    mesh.apply_scale(size)
    if unit_extras is None:
        samples, com = samples_and_com(mesh, n_samples, seed)
        hull = np.asarray(mesh.convex_hull.vertices)
    else:
        samples, com, hull = (np.asarray(x, dtype=np.float64) * size for x in unit_extras)
    return SizedAsset(uid, size, mesh, build_bvh(mesh), samples, com, pose, hull)


def samples_and_com(mesh: trimesh.Trimesh, n_samples: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples (incl. vertices) and centre of mass (volume if watertight, else surface)."""
    pts, _ = trimesh.sample.sample_surface(mesh, n_samples, seed=seed)
    com = mesh.center_mass if mesh.is_watertight and mesh.volume > 1e-12 else mesh.triangles_center.T @ mesh.area_faces / mesh.area
    return np.vstack([pts, mesh.vertices]), np.asarray(com, dtype=np.float64)


def fcl_object(asset: SizedAsset, rotation, translation: np.ndarray) -> fcl.CollisionObject:
    """``rotation``: a yaw angle (radians about +Z) or a 3x3 rotation matrix."""
    rot = rotz(rotation) if np.ndim(rotation) == 0 else np.asarray(rotation, dtype=np.float64)
    return fcl.CollisionObject(asset.bvh, fcl.Transform(rot, np.asarray(translation, dtype=np.float64)))


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
    low = world_points[world_points[:, 2] <= world_points[:, 2].min() + 0.02]  # only these can touch
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
