"""The five scoring protocols, one scene at a time (steps and sources: docs/EVAL.md).

A :class:`Protocol` is data: frame, point counts, alignment at scene and object level, distance
conventions, what IoU-B is computed on and how missing / extra instances count. :func:`score_scene`
runs those steps on GT and predicted meshes already in the bench's view frame (metres).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import trimesh

from iscene_core.evaluation import align as al
from iscene_core.evaluation.boxes import aabb, box_iou
from iscene_core.evaluation.pointmetrics import PointSpec, point_scores

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "scene_frame", "sample_points", "score_scene", "frustum_planes", "sample_points_in_frustum"]


@dataclass(frozen=True)
class Protocol:
    name: str
    frame: str  # unit2: GT scene box centred, longest side 2 | metric: the view frame in metres
    per_instance_points: int | None  # points sampled per instance (None: per scene)
    per_scene_points: int | None
    scene_align: str
    scene_align_kw: dict = field(default_factory=dict)
    object_level: bool = True
    object_align: str = "none"
    object_align_kw: dict = field(default_factory=dict)
    spec: PointSpec = PointSpec()
    iou_b_after_alignment: bool = False
    instance_rule: str = "penalise"  # penalise | drop_on_count_mismatch | union
    frustum_clip: bool = False
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {"name": self.name, "frame": self.frame, "per_instance_points": self.per_instance_points,
                "per_scene_points": self.per_scene_points, "scene_align": self.scene_align,
                "object_level": self.object_level, "object_align": self.object_align,
                "cd": ("squared" if self.spec.cd_squared else "plain") + ", " + ("summed" if self.spec.cd_reduce == "sum" else "halved"),
                "f": ("squared" if self.spec.f_squared else "plain") + (" <" if self.spec.f_strict else " <=") + " tau",
                "taus": list(self.spec.taus), "iou_b": "after scene alignment" if self.iou_b_after_alignment else "un-aligned",
                "instances": self.instance_rule, "frustum_clip": self.frustum_clip,
                "sources": list(self.sources), "notes": list(self.notes)}


_MIDI_SPEC = PointSpec(cd_squared=True, cd_reduce="sum", f_squared=False, f_strict=True, taus=(0.1,))

PROTOCOLS: dict[str, Protocol] = {
    "iscene": Protocol(
        "iscene", "unit2", 10000, None, "robust_icp", {"iters": 50, "tol": 1e-7, "max_points": 20000},
        True, "robust_icp", {"iters": 50, "tol": 1e-7, "max_points": 5000}, _MIDI_SPEC,
        sources=("I-Scene paper: MIDI's metrics after robust ICP (no code released)",),
        notes=("robust ICP = trimmed (3x median) point-to-point ICP after a centroid match; the paper does not state its variant",
               "missing instance: F-O 0, IoU-B 0, voxel IoU 0, left out of CD-O; extra instance: in the scene points only")),
    "midi": Protocol(
        "midi", "unit2", 20480, None, "icp", {"iters": 50, "tol": 1e-5},
        True, "icp", {"iters": 50, "tol": 1e-5}, _MIDI_SPEC,
        sources=("VAST-AI-Research/MIDI-3D midi/systems/system_midi.py compute_metrics", "midi/utils/metrics.py"),
        notes=("scene frame: GT box centred, longest side 2 (MIDI's GT normalisation is not released)",
               "MIDI has no rule for missing/extra instances; iscene's rule is used")),
    "scenegen": Protocol(
        "scenegen", "unit2", 10240, None, "filterreg", {"iters": 200, "tol": 1e-4, "max_points": 800},
        True, "filterreg", {"iters": 200, "tol": 1e-4, "max_points": 500}, _MIDI_SPEC, iou_b_after_alignment=True,
        instance_rule="drop_on_count_mismatch",
        sources=("Mengmouxu/SceneGen evalscene/systems/scene_system.py", "evalscene/metrics/alignment.py", "evalscene/metrics/geom_metrics.py"),
        notes=("FilterReg-like: exact dense Gaussian E-step on <= 800 (scene) / 500 (object) random points per side instead of probreg's permutohedral lattice",
               "a different instance count drops the scene (SceneGen's evaluator fails and skips it); same count: paired in id order")),
    "depr": Protocol(
        "depr", "metric", None, 10000, "scale_rigid", {"restarts": 20, "iters": 30, "max_points": 3000},
        False, spec=PointSpec(cd_squared=True, cd_reduce="sum", f_squared=True, f_strict=False, taus=(0.1, 0.002)),
        instance_rule="union",
        sources=("mlpc-ucsd/DepR scripts/eval_scene.py", "depr/utils/metrics.py", "depr/utils/sample.py", "depr/utils/optim.py"),
        notes=("7-DoF fit: similarity ICP from 20 random yaw restarts (DepR: Adam on the Chamfer loss, 200 steps)",
               "F thresholds apply to squared distances (0.1 squared = 0.316 plain)", "no object level in DepR; CD-O/F-O not reported")),
    "gen3dsr": Protocol(
        "gen3dsr", "metric", None, 1_000_000, "none", {},
        False, spec=PointSpec(cd_squared=False, cd_reduce="half", f_squared=False, f_strict=True, taus=(0.1, 0.01, 0.001)),
        instance_rule="union", frustum_clip=True,
        sources=("AndreeaDogaru/Gen3DSR src/eval_front.py",),
        notes=("prediction (and GT) clipped to the camera frustum by rejection sampling, no background meshes", "no object level in Gen3DSR; CD-O/F-O not reported")),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def scene_frame(protocol: Protocol, gt_meshes: dict[int, trimesh.Trimesh]) -> np.ndarray:
    """4x4 from the view frame (metres) into the protocol's scoring frame, fixed by the GT alone."""
    if protocol.frame == "metric":
        return np.eye(4)
    verts = np.concatenate([m.vertices for m in gt_meshes.values() if len(m.vertices)])
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    s = 2.0 / float(np.max(hi - lo))
    T = np.diag([s, s, s, 1.0])
    T[:3, 3] = -s * 0.5 * (lo + hi)
    return T


def _seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def sample_points(mesh: trimesh.Trimesh, n: int, seed: int) -> np.ndarray:
    """``n`` area-uniform surface points, the same for the same mesh and seed (GT vs itself: identical)."""
    if mesh is None or len(mesh.faces) == 0 or n <= 0:
        return np.zeros((0, 3))
    if float(mesh.area) <= 0:
        return np.asarray(mesh.vertices, np.float64)[np.random.default_rng(seed).integers(0, len(mesh.vertices), n)]
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, np.float64)


def frustum_planes(camera: dict, view_to_cam: np.ndarray) -> np.ndarray:
    """(5, 3) inward normals of the camera frustum's side planes (through the camera centre) and
    near plane, in the view frame; a point ``p`` is inside when ``normals @ p >= offsets``."""
    K = np.asarray(camera["K"], np.float64)
    W, H = float(camera["width"]), float(camera["height"])
    kinv = np.linalg.inv(K)
    rays = [kinv @ np.array([u, v, 1.0]) for u, v in ((0, 0), (W, 0), (W, H), (0, H))]
    centre_ray = kinv @ np.array([W / 2, H / 2, 1.0])
    normals = []
    for k in range(4):
        n = np.cross(rays[k], rays[(k + 1) % 4])
        normals.append(n if n @ centre_ray > 0 else -n)
    normals.append(np.array([0.0, 0.0, 1.0]))
    cam_to_view = np.linalg.inv(view_to_cam)[:3, :3]
    return np.stack([cam_to_view @ n for n in normals])


def sample_points_in_frustum(mesh: trimesh.Trimesh, n: int, seed: int, camera: dict, view_to_cam: np.ndarray,
                             to_view: np.ndarray) -> np.ndarray:
    """``n`` points uniform on the part of ``mesh`` inside the camera frustum (Gen3DSR slices the
    prediction by the frustum planes, then samples). Rejection sampling: the same distribution as
    sampling the sliced mesh; ``to_view`` maps the mesh's frame to the view frame."""
    planes = frustum_planes(camera, view_to_cam)
    offsets = np.array([0.0, 0.0, 0.0, 0.0, 1e-3])
    out, total, k = [], 0, 0
    while total < n and k < 20:
        pts = sample_points(mesh, n, seed + 7919 * k)
        inside = np.all(al.apply(to_view, pts) @ planes.T >= offsets, axis=1)
        if k == 0 and not inside.any():
            return np.zeros((0, 3))
        out.append(pts[inside])
        total += int(inside.sum())
        k += 1
    return np.concatenate(out)[:n] if out else np.zeros((0, 3))


def _per_axis_normalise(p: np.ndarray) -> np.ndarray:
    """MIDI / SceneGen object normalisation: each axis into [-0.95, 0.95] independently."""
    lo, hi = p.min(axis=0), p.max(axis=0)
    rng = np.where(hi - lo == 0, 1.0, hi - lo)
    return 1.9 * (p - lo) / rng - 0.95


def _transform_mesh(m: trimesh.Trimesh, T: np.ndarray) -> trimesh.Trimesh:
    return trimesh.Trimesh(al.apply(T, m.vertices) if len(m.vertices) else np.zeros((0, 3)), np.asarray(m.faces), process=False)


def score_scene(protocol: Protocol, key: str, gt: dict[int, trimesh.Trimesh], pred: dict[int, trimesh.Trimesh], *,
                camera: dict | None = None, view_to_cam: np.ndarray | None = None, points: int | None = None) -> dict:
    """One scene under ``protocol``: a row of scene metrics, object entries and instance bookkeeping.

    ``gt`` / ``pred``: instance id -> mesh in the view frame. ``points`` overrides the protocol's
    point count (per instance or per scene, whichever the protocol uses). Status is ``ok`` or
    ``skipped`` (the protocol itself drops such a scene, reason in ``message``).
    """
    present = {i: m for i, m in pred.items() if m is not None and len(m.faces) > 0}
    missing = sorted(set(gt) - set(present))
    extra = sorted(set(present) - set(gt))
    empty = sorted(i for i, m in pred.items() if i in gt and (m is None or len(m.faces) == 0))
    row: dict = {"key": key, "status": "ok", "message": "", "n_gt": len(gt), "n_pred": len(present),
                 "missing": missing, "extra": extra, "empty": empty}
    F = scene_frame(protocol, gt)
    gt_f = {i: _transform_mesh(m, F) for i, m in gt.items()}
    pred_f = {i: _transform_mesh(m, F) for i, m in present.items()}

    # pairing of predicted and GT instances
    if protocol.instance_rule == "drop_on_count_mismatch":
        if len(present) != len(gt):
            row.update(status="skipped", message=f"{len(present)} predicted instances for {len(gt)} GT instances: "
                                                 "SceneGen's evaluator drops such a scene")
            return row
        pairs = dict(zip(sorted(gt), sorted(present)))
        if missing or extra:
            row["message"] = "instance ids differ; paired in id order as SceneGen pairs by order"
    else:
        pairs = {i: i for i in gt if i in present}

    # scene-level points
    if protocol.per_instance_points is not None:
        n_inst = points or protocol.per_instance_points
        gt_pts = {i: sample_points(m, n_inst, _seed(key, i)) for i, m in gt_f.items()}
        pr_pts = {i: sample_points(m, n_inst, _seed(key, pairs_inv(pairs, i))) for i, m in pred_f.items()}
        gt_scene = np.concatenate([gt_pts[i] for i in sorted(gt_pts)])
        pr_scene = np.concatenate([pr_pts[i] for i in sorted(pr_pts)]) if pr_pts else np.zeros((0, 3))
    else:
        n_scene = points or protocol.per_scene_points
        gt_union = trimesh.util.concatenate(_geometric_order(gt_f))
        pr_list = _geometric_order(pred_f)
        pr_union = trimesh.util.concatenate(pr_list) if pr_list else None
        if protocol.frustum_clip and camera is not None:
            gt_scene = sample_points_in_frustum(gt_union, n_scene, _seed(key, "scene"), camera, view_to_cam, np.linalg.inv(F))
        else:
            gt_scene = sample_points(gt_union, n_scene, _seed(key, "scene"))
        if pr_union is None:
            pr_scene = np.zeros((0, 3))
        elif protocol.frustum_clip and camera is not None:
            pr_scene = sample_points_in_frustum(pr_union, n_scene, _seed(key, "scene"), camera, view_to_cam, np.linalg.inv(F))
        else:
            pr_scene = sample_points(pr_union, n_scene, _seed(key, "scene"))
        gt_pts, pr_pts = {}, {}
    if len(pr_scene) == 0:
        if protocol.instance_rule == "union":
            row.update(status="skipped", message=f"empty prediction: {protocol.name}'s evaluator skips such a scene")
            return row
        row.update(cd_s=None, f_s=0.0)
        T = np.eye(4)
    else:
        T = al.align(protocol.scene_align, pr_scene, gt_scene, **protocol.scene_align_kw)
        sc = point_scores(al.apply(T, pr_scene), gt_scene, protocol.spec)
        row.update(cd_s=sc["cd"], cd_s_pred_to_gt=sc["cd_pred_to_gt"], f_s=sc["f"], precision_s=sc["precision"], recall_s=sc["recall"])
        for k, v in sc.items():
            if "@" in k:
                row[k.replace("f@", "f_s@").replace("precision@", "precision_s@").replace("recall@", "recall_s@")] = v
    row["scene_transform"] = T.tolist()

    # object level
    objects = []
    for g in sorted(gt):
        entry: dict = {"id": g}
        p = pairs.get(g)
        if p is None:
            entry.update(status="missing", cd=None, f=0.0 if protocol.object_level else None, iou_b=0.0)
            objects.append(entry)
            continue
        entry["status"] = "matched" if p == g else f"paired with instance_{p}"
        pm = pred_f[p]
        box_T = T if protocol.iou_b_after_alignment else np.eye(4)
        entry["iou_b"] = box_iou(aabb(al.apply(box_T, pm.vertices)), aabb(gt_f[g].vertices))
        if protocol.object_level:
            a = _per_axis_normalise(pr_pts[p])
            b = _per_axis_normalise(gt_pts[g])
            To = al.align(protocol.object_align, a, b, **protocol.object_align_kw)
            so = point_scores(al.apply(To, a), b, protocol.spec)
            entry.update(cd=so["cd"], f=so["f"])
        else:
            entry.update(cd=None, f=None)
        objects.append(entry)
    row["objects"] = objects
    row["cd_o"] = _mean([o["cd"] for o in objects if o["cd"] is not None])
    row["f_o"] = _mean([o["f"] for o in objects if o["f"] is not None]) if protocol.object_level else None
    row["iou_b"] = _mean([o["iou_b"] for o in objects])
    return row


def _geometric_order(meshes: dict[int, trimesh.Trimesh]) -> list[trimesh.Trimesh]:
    """Meshes in an order fixed by their geometry, not their ids: union protocols ignore ids, so
    the same geometry under other ids must give the same sampled points."""
    def key(m: trimesh.Trimesh):
        return tuple(np.round(np.asarray(m.vertices).mean(axis=0), 9)) + (len(m.faces),)

    return sorted(meshes.values(), key=key)


def pairs_inv(pairs: dict[int, int], pred_id: int) -> int:
    """The GT id a predicted instance is paired with (its own id when unpaired): its sampling seed."""
    for g, p in pairs.items():
        if p == pred_id:
            return g
    return pred_id


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None
