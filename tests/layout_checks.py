"""Independent checks of a scene spec's physics, rebuilt from the spec with trimesh + fcl alone.

Deliberately not sharing code with datagen.layout: contact regions come from exact point-to-mesh
distances (trimesh.proximity), not from the sampler's ray-cast height maps.
"""

from __future__ import annotations

import fcl
import numpy as np
import trimesh
from scipy.spatial import ConvexHull, Delaunay

from iscene_core import space

GAP_MAX = 0.005
BAND = 0.005


def world_meshes(spec: dict) -> list[trimesh.Trimesh]:
    from assets_manifest import load_mesh

    out = []
    for inst in spec["instances"]:
        m = load_mesh(inst["path"])
        out.append(trimesh.Trimesh(space.transform_points(inst["object_to_world"], m.vertices), m.faces, process=False))
    return out


def _fcl(mesh: trimesh.Trimesh) -> fcl.CollisionObject:
    bvh = fcl.BVHModel()
    bvh.beginModel(len(mesh.vertices), len(mesh.faces))
    bvh.addSubModel(mesh.vertices, mesh.faces.astype(np.int32))
    bvh.endModel()
    return fcl.CollisionObject(bvh, fcl.Transform())


def _com(mesh: trimesh.Trimesh) -> np.ndarray:
    if mesh.is_watertight and mesh.volume > 1e-12:
        return mesh.center_mass
    return mesh.triangles_center.T @ mesh.area_faces / mesh.area


def check_scene(spec: dict, meshes: list[trimesh.Trimesh] | None = None) -> list[str]:
    """All rule violations of a random-engine scene (empty list = valid)."""
    meshes = meshes or world_meshes(spec)
    insts = spec["instances"]
    objs = [_fcl(m) for m in meshes]
    errors = []
    n = len(insts)
    dist = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(i + 1, n):
            d = fcl.distance(objs[i], objs[j], fcl.DistanceRequest(), fcl.DistanceResult())
            dist[i, j] = dist[j, i] = d
    for i, inst in enumerate(insts):
        m = meshes[i]
        np.testing.assert_allclose(inst["world_aabb"], m.bounds, atol=1e-6)
        sup = inst["support"]
        for j in range(n):
            if j == i or sup == j + 1 or insts[j]["support"] == i + 1:
                continue
            if dist[i, j] <= 0:
                errors.append(f"instances {i + 1} and {j + 1} intersect or touch (d={dist[i, j]:.2e})")
            if dist[i, j] <= GAP_MAX:
                errors.append(f"instance {i + 1} within 5 mm of non-support {j + 1}: rests on two things")
        pts, _ = trimesh.sample.sample_surface(m, 4000, seed=1)
        pts = np.vstack([pts, m.vertices])
        if sup == 0:
            gap = m.bounds[0, 2]
            if not 0 < gap <= GAP_MAX:
                errors.append(f"instance {i + 1} floor gap {gap:.4f} not in (0, 5 mm]")
            contact = pts[pts[:, 2] <= gap + BAND]
        else:
            if not 0 < dist[i, sup - 1] <= GAP_MAX:
                errors.append(f"instance {i + 1} distance to support {sup} is {dist[i, sup - 1]:.4f}, not in (0, 5 mm]")
            if m.bounds[0, 2] <= GAP_MAX:
                errors.append(f"instance {i + 1} on {sup} also touches the floor")
            _, d_sup, _ = trimesh.proximity.closest_point(meshes[sup - 1], pts)
            contact = pts[d_sup <= d_sup.min() + BAND]
        com = _com(m)
        try:
            hull = ConvexHull(contact[:, :2])
            stable = Delaunay(contact[hull.vertices, :2]).find_simplex(com[:2]) >= 0
        except Exception:
            stable = False
        if not stable:
            errors.append(f"instance {i + 1} unstable: centre of mass outside its contact region")
    boxes = {inst["index"]: np.asarray(inst["world_aabb"]) for inst in insts}
    for rel in spec["relations"]:
        a, b, r = boxes[rel["subject"]], boxes[rel["object"]], rel["relation"]
        ok = {"left_of": a[1, 0] < b[0, 0], "right_of": a[0, 0] > b[1, 0], "in_front_of": a[1, 1] < b[0, 1],
              "behind": a[0, 1] > b[1, 1], "on_top_of": insts[rel["subject"] - 1]["support"] == rel["object"]}[r]
        if not ok:
            errors.append(f"relation {rel} does not hold")
    for c, cam in enumerate(spec["cameras"]):
        for i, m in enumerate(meshes):
            uv, z = space.project_points(cam["K"], cam["world_to_cam"], m.vertices)
            inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cam["width"]) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam["height"])
            if not inside.all():
                errors.append(f"camera {c}: instance {i + 1} leaves the frame")
    return errors


REST_GAP_MAX = 0.001  # an instance at rest touches its support: lowest gap at most 1 mm
REST_BAND = 0.001  # points within 1 mm above the lowest gap form the contact region
MIN_CONTACT_AREA = 1e-7  # m^2 of contact hull: three non-collinear points (or a face), not an edge


def _contact_region(m: trimesh.Trimesh, support: trimesh.Trimesh | None, n: int = 6000) -> tuple[np.ndarray, float]:
    """(contact points, lowest gap): surface samples within REST_BAND of the closest approach to
    the support (the floor z = 0 when ``support`` is None), by exact point-to-mesh distance."""
    pts, _ = trimesh.sample.sample_surface(m, n, seed=3)
    pts = np.vstack([pts, m.vertices])
    if support is None:
        d = pts[:, 2]
    else:
        near = pts[pts[:, 2] <= pts[:, 2].min() + 0.25 * np.ptp(pts[:, 2]) + 0.01]  # only a lower part can touch
        _, d, _ = trimesh.proximity.closest_point(support, near)
        pts = near
    return pts[d <= d.min() + REST_BAND], float(d.min())


def check_at_rest(spec: dict, meshes: list[trimesh.Trimesh] | None = None) -> list[str]:
    """Physical rest of a settled scene, from the spec and the asset files alone.

    Every instance: nothing penetrates (no two meshes intersect, nothing below the floor); it
    touches what ``support`` names (lowest gap <= 1 mm); its contact region (points within 1 mm of
    that) spans an area (>= 3 non-collinear points or a face), and its centre of mass projects
    inside the region's convex hull.
    """
    meshes = meshes or world_meshes(spec)
    objs = [_fcl(m) for m in meshes]
    errors = []
    for i in range(len(meshes)):
        if meshes[i].bounds[0, 2] < -1e-6:
            errors.append(f"instance {i + 1} penetrates the floor by {-meshes[i].bounds[0, 2] * 1000:.2f} mm")
        for j in range(i + 1, len(meshes)):
            if fcl.collide(objs[i], objs[j], fcl.CollisionRequest(), fcl.CollisionResult()):
                errors.append(f"instances {i + 1} and {j + 1} penetrate each other")
    for i, inst in enumerate(spec["instances"]):
        sup = inst["support"]
        contact, gap = _contact_region(meshes[i], meshes[sup - 1] if sup else None)
        if gap > REST_GAP_MAX:
            errors.append(f"instance {i + 1} hovers {gap * 1000:.2f} mm above its support {sup}")
            continue
        com = _com(meshes[i])
        try:
            hull = ConvexHull(contact[:, :2])
            area = float(hull.volume)  # 2-D hull: volume is the area
            inside = Delaunay(contact[hull.vertices, :2]).find_simplex(com[:2]) >= 0
        except Exception:  # fewer than 3 points, or all collinear
            area, inside = 0.0, False
        if area < MIN_CONTACT_AREA:
            errors.append(f"instance {i + 1} touches its support on a point or an edge only (contact area {area:.1e} m^2)")
        elif not inside:
            errors.append(f"instance {i + 1} not at rest: centre of mass outside its contact region")
    return errors
