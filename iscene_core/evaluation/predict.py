"""``iscene-eval predict``: iscene inference over every scene of a bench, into the prediction layout.

Several scenes share one forward pass: their rows are stacked and ``scene_index`` points each
instance row at its own scene row, so Scene Context Attention never mixes scenes and a scene's
result does not depend on what it was batched with (noise is drawn per scene from ``seed + index``,
as ``iscene_core.infer.sample_scene`` draws it). On a CUDA out-of-memory error the batch is halved
and retried. Finished scenes (``<key>.json`` is written last) are kept on a rerun.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from iscene_core.evaluation.bench import load_bench
from iscene_core.evaluation.errors import EvalError
from iscene_core.evaluation.layout import atomic_write_text, write_prediction_info

__all__ = ["predict_bench", "sample_scenes"]

log = logging.getLogger("iscene-eval")


def sample_scenes(flow, decoder, conds: list, sampler: dict, seeds: list[int], sca: bool = True) -> list[np.ndarray]:
    """Jointly sample several scene groups in one batch; per group: decoder logits (N+1, R, R, R).

    Group ``g`` is ``conds[g]`` (row 0 = the scene, rows 1.. = its instances), noise from ``seeds[g]``.
    """
    import torch

    from iscene_core.flow import euler_sample

    device = conds[0].device
    r = flow.resolution
    noise, index, starts = [], [], []
    for c, seed in zip(conds, seeds):
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        noise.append(torch.randn(c.shape[0], flow.in_channels, r, r, r, generator=g))
        starts.append(sum(len(i) for i in index))
        index.append(torch.full((c.shape[0],), starts[-1], dtype=torch.long))
    cond = torch.cat(conds)
    prev = flow.sca_enabled
    flow.sca_enabled = sca
    try:
        with torch.no_grad():
            z = euler_sample(flow, torch.cat(noise).to(device), cond, torch.zeros_like(cond), scene_index=torch.cat(index).to(device), **sampler)["samples"]
            logits = decoder(z.to(next(decoder.parameters()).dtype))[:, 0].float().cpu().numpy()
    finally:
        flow.sca_enabled = prev
    return [logits[s:s + c.shape[0]] for s, c in zip(starts, conds)]


def world_grid_to_view_grid(scene) -> np.ndarray:
    """4x4 map from a bench scene's world-grid coordinates to its view-grid ones (both [-0.5, 0.5]^3):
    world grid -> world (inverse ``grid.world_to_grid``) -> camera (``world_to_cam``) -> view grid
    (``cam_to_grid``), all from the bench's own files."""
    from iscene_core.shards.safejson import load_bounded

    spec_path = scene.root / "scenes" / scene.key / "spec.json"
    cam, spec = scene.camera, load_bounded(spec_path, 16 << 20)
    try:
        w2g = np.asarray(spec["grid"]["world_to_grid"], np.float64)
        w2c = np.asarray(cam["world_to_cam"], np.float64)
        c2g = np.asarray(cam["cam_to_grid"], np.float64)
    except (KeyError, TypeError) as exc:
        raise EvalError(f"{spec_path.parent}: no world grid transform ({exc}); was the bench made from a --space both dataset?") from None
    return c2g @ w2c @ np.linalg.inv(w2g)


def move_voxels(coords: np.ndarray, matrix: np.ndarray, resolution: int) -> np.ndarray:
    """Voxel indices through ``matrix`` (a grid-coordinate map): the voxel holding each moved centre,
    kept inside the cube (uint8). Nearest-voxel resampling, so a shape may gain or lose a voxel at its rim."""
    if np.allclose(matrix, np.eye(4)):
        return coords.astype(np.uint8)
    from iscene_core.space import voxel_centers

    pts = np.c_[voxel_centers(coords, resolution), np.ones(len(coords))] @ matrix.T  # grid coords live in [-0.5, 0.5]^3
    idx = np.floor((pts[:, :3] + 0.5) * resolution).astype(np.int64)
    idx = idx[np.all((idx >= 0) & (idx < resolution), axis=1)]
    return np.unique(idx, axis=0).astype(np.uint8)


def _load_flow_weights(flow, path: Path) -> None:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise EvalError(f"--flow-weights {path}: file not found")
    try:
        flow.load_state_dict(load_file(str(path), device=str(next(flow.parameters()).device)), strict=True)
    except Exception as exc:  # header errors and key/shape mismatches alike
        raise EvalError(f"--flow-weights {path}: does not fit the flow model of --weights ({str(exc).splitlines()[0]})") from None


def _load_models(weights: Path, flow_weights: Path | None, dinov2: Path | None, device, conditioner_weights: Path | None = None):
    import torch

    from iscene_core.conditioning import DinoConditioner
    from iscene_core.infer import InferenceError, load_learned_conditioner
    from iscene_core.trellis import load_pipeline

    try:
        try:
            pipe = load_pipeline(weights, device=device, use_fp16=False if device.type == "cpu" else None)
        except TypeError:  # an older load_pipeline without use_fp16
            pipe = load_pipeline(weights, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise EvalError(f"--weights: {exc}") from None
    flow, decoder = pipe["flow"].eval(), pipe["decoder"].eval()
    if flow_weights is not None:
        _load_flow_weights(flow, flow_weights)
    dino_path = dinov2 if dinov2 is not None else Path(torch.hub.get_dir())
    if conditioner_weights is not None:  # a --conditioner learned run: its own image encoder, no DINOv2
        try:
            cond_model = load_learned_conditioner(Path(conditioner_weights)).to(device)
        except InferenceError as exc:
            raise EvalError(str(exc)) from None
        dino_path = conditioner_weights
    else:
        try:
            cond_model = DinoConditioner.from_pretrained(dino_path).to(device)
        except (FileNotFoundError, ValueError) as exc:
            raise EvalError(f"--dinov2: {exc}") from None
    want = int(flow.blocks[0].cross_attn.to_kv.in_features)
    if cond_model.out_channels != want:
        raise EvalError(f"--dinov2 {dino_path} gives {cond_model.out_channels}-channel tokens but the flow model expects {want}")
    return flow, decoder, cond_model, pipe["sampler"]


def predict_bench(bench_dir: Path, weights: Path, out: Path, *, flow_weights: Path | None = None, dinov2: Path | None = None,
                  batch_scenes: int = 4, steps: int | None = None, cfg: float | None = None, seed: int = 0, sca: bool = True,
                  device: str | None = None, progress: bool = True, conditioner_weights: Path | None = None,
                  instance_view: str = "crop", space: str = "view", image_size: int | None = None) -> dict:
    """Predict every bench scene not yet in ``out``; returns counts and timing.

    ``instance_view`` and ``image_size`` must be what the flow was trained with (``iscene-train
    --instance-view``, the conditioner's crop size by default). ``space="world"`` is for flows
    trained in the canonical world grid (``--space world``): their output is brought into the
    bench's view grid with the scene's ground-truth camera and world-grid transform before it is
    written, so both spaces are scored in one frame (the world model is handed the true camera).
    """
    import torch
    from tqdm import tqdm

    from iscene_core.conditioning import INSTANCE_VIEWS, conditioner_image_size, crop_scene, instance_image
    from iscene_core.infer import GRID_TO_GLTF, InferenceError, load_inputs, sampler_params
    from iscene_core.mesh_export import export_scene, save_voxels

    if instance_view not in INSTANCE_VIEWS:
        raise EvalError(f"--instance-view must be one of {INSTANCE_VIEWS}, got {instance_view!r}")
    if space not in ("view", "world"):
        raise EvalError(f"--space must be view or world, got {space!r}")
    bench = load_bench(bench_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out}: exists and is not a folder")
    if not Path(weights).is_dir():
        raise EvalError(f"--weights {weights}: not a folder")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    index = {s.key: k for k, s in enumerate(bench.scenes)}
    todo = [s for s in bench.scenes if not ((out / f"{s.key}.glb").is_file() and (out / f"{s.key}.json").is_file())]
    kept = len(bench.scenes) - len(todo)
    write_prediction_info(out, "grid", "iscene", weights=str(weights), flow_weights=None if flow_weights is None else str(flow_weights),
                          sca=sca, seed=seed, steps=steps, cfg=cfg, instance_view=instance_view, space=space,
                          conditioner_weights=None if conditioner_weights is None else str(conditioner_weights))
    rep = {"done": 0, "kept": kept, "failed": 0, "failures": [], "seconds": 0.0, "scenes": len(bench.scenes)}
    if not todo:
        return rep
    flow, decoder, cond_model, pipe_sampler = _load_models(Path(weights), flow_weights, dinov2, dev, conditioner_weights)
    size = int(image_size) if image_size else conditioner_image_size(cond_model)
    params = sampler_params(pipe_sampler, steps, cfg)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="predict", unit="scene", disable=not progress)
    batch = max(1, int(batch_scenes))
    pos = 0
    while pos < len(todo):
        group = todo[pos:pos + batch]
        prepared = []
        for s in group:
            try:
                rgb, id_map, ids = load_inputs(s.image_path, s.mask_path)
            except InferenceError as exc:
                rep["failed"] += 1
                rep["failures"].append({"key": s.key, "reason": str(exc)})
                continue
            crops = torch.stack([crop_scene(rgb, size)] + [instance_image(rgb, id_map == i, size, instance_view) for i in ids])
            prepared.append((s, ids, id_map, crops))
        if not prepared:
            pos += len(group)
            bar.update(len(group))
            continue
        try:
            conds = [cond_model.encode(c.to(dev)) for _, _, _, c in prepared]
            logits = sample_scenes(flow, decoder, conds, params, [seed + index[s.key] for s, _, _, _ in prepared], sca=sca)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            torch.cuda.empty_cache()
            batch = max(1, batch // 2)
            log.warning("out of GPU memory: %d scenes per batch from now on", batch)
            continue
        for (s, ids, id_map, _), lg in zip(prepared, logits):
            names = ["scene"] + [f"instance_{i}" for i in ids]
            to_view = np.eye(4) if space == "view" else world_grid_to_view_grid(s)
            faces = export_scene({n: lg[k] for k, n in enumerate(names) if k > 0}, out / f"{s.key}.glb",
                                 node_transform=np.asarray(GRID_TO_GLTF) @ to_view)
            save_voxels(out / f"{s.key}.npz", {n: move_voxels(np.argwhere(lg[k] > 0), to_view, lg.shape[-1]) for k, n in enumerate(names)})
            atomic_write_text(out / f"{s.key}.json", json.dumps({"key": s.key, "instances": ids, "faces": faces,
                                                                   "seed": seed + index[s.key], "sca": sca}, indent=1))
            rep["done"] += 1
        pos += len(group)
        bar.update(len(group))
    bar.close()
    rep["seconds"] = time.perf_counter() - t0
    if rep["failures"]:
        atomic_write_text(out / "failures.json", json.dumps(rep["failures"], indent=1))
    return rep
