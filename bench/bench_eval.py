"""iscene-eval throughput on CPU: scenes scored per second and predict scenes per second.

    python bench/bench_eval.py [--scenes 4] [--protocols iscene,midi,scenegen,depr,gen3dsr] [--steps 2]

1. Makes a small bench of 6-instance random scenes (procedural assets, Blender at 64 px) and a
   prediction that is the GT with every instance moved by a random small rigid motion (so the
   alignments do real work), then times ``score`` per protocol at its default point count.
2. The CD/F core against the obvious alternative: a dense chunked ``torch.cdist`` nearest neighbour
   (MIDI's and SceneGen's F-score code path) on one 6 x 10,000-point scene, same numbers required.
3. ``predict`` with the tiny random TRELLIS configuration of the tests on CPU: one scene per forward
   pass against ``--batch`` scenes per pass (scenes per second).

Results: bench/results/eval_cpu.json. Absolute numbers depend on the (shared) CPU; ratios are
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import write_result  # noqa: E402


def _make_bench(root: Path, scenes: int) -> Path:
    from datagen.cli import main as datagen_main
    from iscene_core.evaluation.cli import main as eval_main

    os.environ["ISCENE_CACHE"] = str(root / "cache")
    os.environ["ISCENE_REGISTRY"] = str(root / "registry.json")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    assert datagen_main(["--procedural", "--procedural-n", "60", "--n", str(scenes + 3), "--views-per-scene", "1", "--resolution", "64",
                         "--samples", "2", "--no-denoise", "--min-visible-pixels", "2", "--no-ray", "--min-instances", "6",
                         "--max-instances", "6", "--out", str(root / "ds"), "--name", "bench6"]) == 0
    assert eval_main(["make-bench", "--from", str(root / "ds"), "--out", str(root / "bench"), "--n", str(scenes), "--no-progress"]) == 0
    return root / "bench"


def _perturbed_prediction(bench: Path, out: Path, seed: int = 0) -> None:
    import trimesh

    from iscene_core.evaluation.bench import load_bench
    from iscene_core.evaluation.layout import read_scene_glb, write_prediction_info, write_scene_glb

    rng = np.random.default_rng(seed)
    for s in load_bench(bench).scenes:
        moved = {}
        for i, m in read_scene_glb(s.gt_glb).items():
            ext = float(np.max(m.extents))
            T = trimesh.transformations.rotation_matrix(np.deg2rad(rng.uniform(-8, 8)), [0, 0, 1], point=m.centroid)
            T[:3, 3] += rng.normal(0, 0.05 * ext, 3)
            moved[i] = m.copy().apply_transform(T)
        write_scene_glb(out / f"{s.key}.glb", moved)
    write_prediction_info(out, "view", "gt-perturbed")


def _time_scoring(bench: Path, pred: Path, names: list[str]) -> dict:
    from iscene_core.evaluation.bench import load_bench
    from iscene_core.evaluation.protocols import get_protocol
    from iscene_core.evaluation.score import aggregate, score_bench

    b = load_bench(bench)
    out = {}
    for name in names:
        p = get_protocol(name)
        t0 = time.perf_counter()
        rows = score_bench(b, pred, [p], progress=False)[name]
        dt = time.perf_counter() - t0
        s = aggregate(rows)
        out[name] = {"scenes": len(b.scenes), "seconds": round(dt, 2), "scenes_per_s": round(len(b.scenes) / dt, 4),
                     "points": p.per_instance_points or p.per_scene_points, "per": "instance" if p.per_instance_points else "scene",
                     "f_s": s["f_s"], "iou_b": s["iou_b"], "n_failed": s["n_failed"]}
        print(name, out[name], flush=True)
    return out


def _cdist_alternative(n_inst: int = 6, n_pts: int = 10000) -> dict:
    """KD-tree point metrics vs dense chunked torch.cdist on the same points; both must agree."""
    import torch

    from iscene_core.evaluation.pointmetrics import PointSpec, point_scores

    rng = np.random.default_rng(0)
    p = rng.normal(size=(n_inst * n_pts, 3)) * 0.4
    q = p + rng.normal(scale=0.02, size=p.shape)
    spec = PointSpec()
    t0 = time.perf_counter()
    ours = point_scores(p, q, spec)
    t_kd = time.perf_counter() - t0

    def nn(a, b, chunk=2048):
        out = torch.empty(len(a), dtype=torch.float64)
        for i in range(0, len(a), chunk):
            out[i:i + chunk] = torch.cdist(a[i:i + chunk], b).min(dim=1).values
        return out

    t0 = time.perf_counter()
    tp, tq = torch.from_numpy(p), torch.from_numpy(q)
    a, b = nn(tp, tq), nn(tq, tp)
    cd = float((a**2).mean() + (b**2).mean())
    prec, rec = float((a < 0.1).double().mean()), float((b < 0.1).double().mean())
    f = 200 * prec * rec / (prec + rec)
    t_dense = time.perf_counter() - t0
    assert abs(cd - ours["cd"]) < 1e-9 and abs(f - ours["f"]) < 1e-9
    return {"points_per_side": len(p), "kdtree_s": round(t_kd, 3), "dense_cdist_s": round(t_dense, 3),
            "speedup": round(t_dense / t_kd, 1), "agree": True}


def _predict_throughput(bench: Path, root: Path, steps: int, batch: int) -> dict:
    from iscene_core.evaluation.predict import predict_bench

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import json as _json

    import torch

    from iscene_core.trellis import SparseStructureDecoder, SparseStructureFlowModel
    from tests.test_conditioning import _tiny_transformers_folder
    from tests.test_infer import DEC_ARGS, FLOW_ARGS, _save

    ckpts = root / "weights" / "ckpts"
    ckpts.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    flow, dec = SparseStructureFlowModel(**FLOW_ARGS), SparseStructureDecoder(**DEC_ARGS)
    with torch.no_grad():
        for _, prm in flow.named_parameters():
            prm.normal_(0, 0.05 if prm.ndim > 1 else 0.02)
        dec.out_layer[-1].bias.fill_(-0.3)
    _save(flow, "ss_flow_img_dit_L_16l8_fp16", FLOW_ARGS, ckpts)
    _save(dec, "ss_dec_conv3d_16l8_fp16", DEC_ARGS, ckpts)
    (root / "weights" / "pipeline.json").write_text(_json.dumps({"name": "TrellisImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16", "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16"},
        "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                     "params": {"steps": steps, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
        "image_cond_model": "dinov2_vitl14_reg"}}))
    _tiny_transformers_folder(root / "dino", channels=32)
    out = {"config": {"flow": FLOW_ARGS, "decoder": DEC_ARGS, "steps": steps, "cfg_strength": 3.0}}
    for b in (1, batch):
        t0 = time.perf_counter()
        rep = predict_bench(bench, root / "weights", root / f"pred_b{b}", dinov2=root / "dino", batch_scenes=b, device="cpu", progress=False)
        dt = time.perf_counter() - t0
        out[f"batch_{b}"] = {"scenes": rep["done"], "seconds_total": round(dt, 2), "seconds_sampling_and_export": round(rep["seconds"], 2),
                             "scenes_per_s": round(rep["done"] / rep["seconds"], 4)}
        print("predict", b, out[f"batch_{b}"], flush=True)
    out["batched_speedup"] = round(out[f"batch_{batch}"]["scenes_per_s"] / out["batch_1"]["scenes_per_s"], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4, help="6-instance scenes in the bench")
    ap.add_argument("--protocols", default="iscene,midi,scenegen,depr,gen3dsr", help="protocols to time (comma list)")
    ap.add_argument("--predict-scenes", type=int, default=2, help="scenes for the predict timing (a sub-bench)")
    ap.add_argument("--steps", type=int, default=2, help="sampler steps for the predict timing")
    ap.add_argument("--batch", type=int, default=2, help="scenes per forward pass in the batched predict run")
    ap.add_argument("--out", default="eval_cpu", help="results name under bench/results/")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench = _make_bench(root, args.scenes)
        pred = root / "pred"
        _perturbed_prediction(bench, pred)
        scoring = _time_scoring(bench, pred, [x for x in args.protocols.split(",") if x])
        alt = _cdist_alternative()
        print("cd/f core", alt, flush=True)
        from iscene_core.evaluation.cli import main as eval_main

        assert eval_main(["make-bench", "--from", str(root / "ds"), "--out", str(root / "bench_p"), "--n", str(args.predict_scenes),
                          "--no-progress"]) == 0
        predict = _predict_throughput(root / "bench_p", root, args.steps, args.batch)
    path = write_result(args.out, {
        "what": "iscene-eval: scenes scored per second per protocol (6-instance scenes, default points, GT with per-instance "
                "rigid perturbations as the prediction); KD-tree CD/F vs dense chunked torch.cdist; predict scenes/s, tiny "
                "random config on CPU, one scene per pass vs batched",
        "device": "CPU only (2 cores shared with other sessions); no GPU was available, so no L-config GPU number",
        "scoring": scoring, "cd_f_core_vs_dense_cdist": alt, "predict": predict})
    print(json.dumps({"written": str(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
