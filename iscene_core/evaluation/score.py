"""Score a prediction folder against a bench under one or more protocols.

Per scene: GT meshes from ``B/gt/<key>.glb``, the prediction from ``P/<key>.glb`` moved into the
view frame (``prediction.json`` says grid or view), then the harness metrics every protocol shares
(per-instance voxel IoU, interpenetration, floating), then each protocol's own steps. A scene that
cannot be read fails with its message recorded; a scene a protocol drops is ``skipped`` with the
reason; everything else is scored, and no single scene stops the run.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import numpy as np
import trimesh

from iscene_core.evaluation.bench import Bench, BenchScene
from iscene_core.evaluation.boxes import voxel_iou, voxelize_in_grid
from iscene_core.evaluation.errors import SceneError
from iscene_core.evaluation.layout import read_prediction_info, read_scene_glb
from iscene_core.evaluation.physics_metrics import physics_scores
from iscene_core.evaluation.protocols import Protocol, score_scene

__all__ = ["load_prediction", "harness_metrics", "score_bench", "aggregate"]

log = logging.getLogger("iscene-eval")


def load_prediction(scene: BenchScene, pred_dir: Path, frame: str) -> dict[int, trimesh.Trimesh]:
    """Predicted instance meshes of one scene in the view frame (metres)."""
    meshes = read_scene_glb(Path(pred_dir) / f"{scene.key}.glb")
    if frame == "grid":
        T = scene.grid_to_view
        meshes = {i: trimesh.Trimesh(m.vertices @ T[:3, :3].T + T[:3, 3] if len(m.vertices) else m.vertices, m.faces, process=False)
                  for i, m in meshes.items()}
    return meshes


def harness_metrics(scene: BenchScene, pred: dict[int, trimesh.Trimesh], gt_vox: dict[int, np.ndarray]) -> dict:
    """Per-instance voxel IoU (by id; missing = 0) and physics of prediction and GT."""
    R = scene.resolution
    pred_vox = {i: voxelize_in_grid(m.vertices, m.faces, scene.view_to_grid, R) for i, m in pred.items() if len(m.faces)}
    viou = {i: (voxel_iou(pred_vox[i], gt_vox[i]) if i in pred_vox else 0.0) for i in gt_vox}
    phys = physics_scores(pred_vox, scene.up_view, R) if pred_vox else {"interpenetration": None, "interpenetration_max": None,
                                                                         "floating": None, "per_instance": {}}
    gt_phys = physics_scores(gt_vox, scene.up_view, R)
    return {"voxel_iou": viou, "physics": phys, "gt_physics": gt_phys}


def _failed_row(key: str, message: str) -> dict:
    return {"key": key, "status": "failed", "message": message}


def score_bench(bench: Bench, pred_dir: Path, protocols: list[Protocol], *, points: int | None = None,
                progress: bool = True, debug: bool = False) -> dict[str, list[dict]]:
    """Rows per protocol (one per bench scene, in bench order)."""
    from tqdm import tqdm

    info = read_prediction_info(pred_dir)
    rows: dict[str, list[dict]] = {p.name: [] for p in protocols}
    for scene in tqdm(bench.scenes, desc="score", unit="scene", disable=not progress):
        try:
            gt = read_scene_glb(scene.gt_glb)
            pred = load_prediction(scene, pred_dir, info["frame"])
            harness = harness_metrics(scene, pred, scene.gt_voxels())
        except SceneError as exc:
            for p in protocols:
                rows[p.name].append(_failed_row(scene.key, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one broken scene must not stop the bench
            msg = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
            if debug:
                traceback.print_exc()
            for p in protocols:
                rows[p.name].append(_failed_row(scene.key, msg))
            continue
        gt = {i: gt[i] for i in scene.instance_ids if i in gt}
        for p in protocols:
            try:
                row = score_scene(p, scene.key, gt, pred, camera=scene.camera, view_to_cam=scene.view_to_cam, points=points)
            except Exception as exc:  # noqa: BLE001
                if debug:
                    traceback.print_exc()
                rows[p.name].append(_failed_row(scene.key, f"internal error: {type(exc).__name__}: {str(exc)[:200]}"))
                continue
            for o in row.get("objects", []):
                o["voxel_iou"] = harness["voxel_iou"].get(o["id"], 0.0)
            if row["status"] == "ok":
                row["voxel_iou"] = float(np.mean(list(harness["voxel_iou"].values()))) if harness["voxel_iou"] else None
            row["physics"] = harness["physics"]
            row["gt_physics"] = harness["gt_physics"]
            rows[p.name].append(row)
    return rows


def _mean(vals) -> float | None:
    v = [float(x) for x in vals if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def aggregate(rows: list[dict]) -> dict:
    """Bench-level numbers: scene metrics over scored scenes, object metrics over all GT objects."""
    ok = [r for r in rows if r["status"] == "ok"]
    objs = [o for r in ok for o in r.get("objects", [])]
    out = {
        "n_scenes": len(rows),
        "n_scored": len(ok),
        "n_skipped": sum(r["status"] == "skipped" for r in rows),
        "n_failed": sum(r["status"] == "failed" for r in rows),
        "cd_s": _mean(r.get("cd_s") for r in ok),
        "f_s": _mean(r.get("f_s") for r in ok),
        "cd_o": _mean(o.get("cd") for o in objs),
        "f_o": _mean(o.get("f") for o in objs),
        "iou_b": _mean(o.get("iou_b") for o in objs),
        "voxel_iou": _mean(o.get("voxel_iou") for o in objs),
        "interpenetration": _mean(r["physics"].get("interpenetration") for r in ok if r.get("physics")),
        "floating": _mean(r["physics"].get("floating") for r in ok if r.get("physics")),
        "gt_interpenetration": _mean(r["gt_physics"].get("interpenetration") for r in ok if r.get("gt_physics")),
        "gt_floating": _mean(r["gt_physics"].get("floating") for r in ok if r.get("gt_physics")),
        "n_objects": len(objs),
        "n_missing": sum(len(r.get("missing", [])) for r in ok),
        "n_extra": sum(len(r.get("extra", [])) for r in ok),
    }
    extra_keys = sorted({k for r in ok for k in r if k.startswith("f_s@")})
    for k in extra_keys:
        out[k] = _mean(r.get(k) for r in ok)
    return out
