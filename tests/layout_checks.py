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
