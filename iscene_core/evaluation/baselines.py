"""Reference predictions a trained model must beat: ``iscene-eval baseline --kind mean-box``.

    iscene-eval baseline --kind mean-box --from data/rand15k --bench benches/ood-rand --out preds/mean-box

Why: a score means little without the floor it stands on. IoU-B in particular rewards a model
that has only learnt where objects *usually* are. The mean-box baseline places every instance of
every bench scene at the training set's mean instance box in the view grid (the average of the
instances' min and max corners over the training data), so a model that beats it has learnt to
read placement from the image. It is written as an ordinary prediction folder (frame ``grid``:
box meshes plus the box's voxels), so ``iscene-eval score`` treats it as it treats a model.

The other floor, an untrained model, needs no code here: it is ``iscene-eval predict`` with the
flow at its seeded initialisation (``iscene-sweep`` makes those weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from iscene_core.evaluation.bench import load_bench
from iscene_core.evaluation.errors import EvalError
from iscene_core.evaluation.layout import atomic_write_text, write_prediction_info, write_scene_glb

__all__ = ["mean_instance_box", "write_box_prediction"]

log = logging.getLogger("iscene-eval")


def mean_instance_box(dataset: str | Path, limit: int | None = None, space: str = "view") -> dict:
    """Mean (min corner, max corner) of every instance's occupied voxels in ``dataset``'s grids.

    Corners are in voxel units of the 64^3 grid (a voxel ``v`` spans ``[v, v + 1)``). Damaged
    samples are logged and skipped, as every reader of the shard contract does.
    """
    from iscene_core.shards import DatasetError, iter_valid_samples, scene_and_instance_coords

    lo, hi, res = [], [], None

    def problem(where: str, why: str) -> None:
        log.warning("%s: %s (skipped)", where, why)

    try:
        for s in iter_valid_samples(dataset, problem, limit=limit, spaces=(space,)):
            res = res or int(s["meta"].get("grid", {}).get("resolution", 64))
            for c in scene_and_instance_coords(s["vox"], space)[1]:
                if len(c):
                    lo.append(c.min(0))
                    hi.append(c.max(0) + 1)
    except DatasetError as exc:
        raise EvalError(f"--from {dataset}: {exc}") from None
    if not lo:
        raise EvalError(f"--from {dataset}: no instance voxels to average (empty or unreadable dataset)")
    return {"min": np.mean(lo, 0).tolist(), "max": np.mean(hi, 0).tolist(), "instances": len(lo), "resolution": res or 64}


def _box_voxels(box_min: np.ndarray, box_max: np.ndarray, resolution: int) -> np.ndarray:
    """Voxels whose centres lie inside the box, (M, 3) uint8."""
    lo = np.clip(np.ceil(box_min - 0.5), 0, resolution - 1).astype(int)
    hi = np.clip(np.floor(box_max - 0.5), 0, resolution - 1).astype(int)
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
    if any(len(a) == 0 for a in axes):
        return np.zeros((0, 3), np.uint8)
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.uint8)


def write_box_prediction(bench_dir: str | Path, out: str | Path, box: dict, system: str = "mean-box") -> dict:
    """Every instance of every bench scene as the box ``box`` (grid corners): a prediction folder."""
    import trimesh

    from iscene_core.mesh_export import save_voxels

    bench = load_bench(Path(bench_dir))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    bmin, bmax = np.asarray(box["min"], float), np.asarray(box["max"], float)
    if not np.all(bmax > bmin):
        raise EvalError(f"box {box}: max must exceed min on every axis")
    write_prediction_info(out, "grid", system, box={"min": bmin.tolist(), "max": bmax.tolist()})
    for s in bench.scenes:
        lo, hi = bmin / s.resolution - 0.5, bmax / s.resolution - 0.5  # voxel corners -> grid coords in [-0.5, 0.5]
        mesh = trimesh.creation.box(extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2))
        voxels = _box_voxels(bmin, bmax, s.resolution)
        write_scene_glb(out / f"{s.key}.glb", {i: mesh.copy() for i in s.instance_ids})
        save_voxels(out / f"{s.key}.npz", {"scene": voxels, **{f"instance_{i}": voxels for i in s.instance_ids}})
        atomic_write_text(out / f"{s.key}.json", json.dumps({"key": s.key, "instances": s.instance_ids, "system": system}))
    return {"scenes": len(bench.scenes), "box": {"min": bmin.tolist(), "max": bmax.tolist()}}
