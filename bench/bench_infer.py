"""Inference stages on CPU (small random configuration) and the metrics vs their obvious alternatives.

    python bench/bench_infer.py [--instances 6] [--steps 10]

Per stage seconds for one scene with N instances: crops (518 px Lanczos), DINOv2 (tiny random
transformers model, so only the plumbing is timed), joint sampling + decoding (scene + N instances in one
batch with SCA) against sampling + decoding each row alone (N + 1 batch-of-one runs, plain TRELLIS,
the obvious alternative; SCA's extra keys included in the joint cost), decoding alone, marching cubes + GLB. Metrics: voxel IoU on coordinate arrays
(int64 keys) vs Python sets of tuples; Chamfer with cKDTree vs a dense cdist. Results go to
bench/results/infer_cpu.json. Absolute numbers are CPU- and load-dependent; ratios are measured
in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import write_result  # noqa: E402

FLOW_ARGS = {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 128, "cond_channels": 64, "num_blocks": 2,
             "num_heads": 4, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": False}
DEC_ARGS = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "num_res_blocks_middle": 1, "channels": [32, 16, 8], "use_fp16": False}


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    from scipy.spatial.distance import cdist
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from iscene_core.conditioning import DinoConditioner, crop_instance, crop_scene
    from iscene_core.flow import euler_sample
    from iscene_core.infer import sample_scene
    from iscene_core.mesh_export import export_scene
    from iscene_core.metrics import chamfer_distance, voxel_iou
    from iscene_core.trellis import SparseStructureDecoder, SparseStructureFlowModel

    torch.manual_seed(0)
    flow, dec = SparseStructureFlowModel(**FLOW_ARGS).eval(), SparseStructureDecoder(**DEC_ARGS).eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.05 if p.ndim > 1 else 0.02)
        dec.out_layer[-1].bias.fill_(-0.3)
    dino = DinoConditioner(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=518, num_register_tokens=4)), "transformers")
    n = args.instances
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    ids = np.zeros((480, 640), np.int64)
    for i in range(1, n + 1):
        y, x = rng.integers(0, 380), rng.integers(0, 540)
        ids[y:y + 100, x:x + 100] = i
    present = [i for i in range(1, n + 1) if (ids == i).any()]
    sampler = {"steps": args.steps, "cfg_strength": 5.0, "cfg_interval": (0.5, 1.0), "rescale_t": 3.0}

    res: dict[str, float] = {}
    crops, res["crops_s"] = _time(lambda: torch.stack([crop_scene(rgb)] + [crop_instance(rgb, ids == i) for i in present]))
    cond, res["dinov2_tiny_s"] = _time(lambda: dino.encode(crops))
    (z, logits), res["joint_sampling_sca_decode_s"] = _time(lambda: sample_scene(flow, dec, cond, sampler, seed=0, sca=True))

    def one_by_one():
        for r in range(cond.shape[0]):
            with torch.no_grad():
                dec(euler_sample(flow, torch.randn(1, 8, 16, 16, 16), cond[r:r + 1], None, **sampler)["samples"])

    _, res["rows_alone_plain_decode_s"] = _time(one_by_one)
    with torch.no_grad():
        _, res["decode_s"] = _time(lambda: dec(z))
    with tempfile.TemporaryDirectory() as tmp:
        _, res["meshes_glb_s"] = _time(lambda: export_scene({f"instance_{i}": logits[k + 1] for k, i in enumerate(present)}, Path(tmp) / "s.glb"))
    res["alone_over_joint"] = res["rows_alone_plain_decode_s"] / res["joint_sampling_sca_decode_s"]

    a = np.argwhere(rng.random((64,) * 3) < 0.05).astype(np.uint8)
    b = np.argwhere(rng.random((64,) * 3) < 0.05).astype(np.uint8)
    iou, res["iou_coords_s"] = _time(lambda: voxel_iou(a, b))

    def set_iou():
        sa, sb = set(map(tuple, a.tolist())), set(map(tuple, b.tolist()))
        return len(sa & sb) / len(sa | sb)

    iou_ref, res["iou_python_sets_s"] = _time(set_iou)
    assert abs(iou - iou_ref) < 1e-12
    p, q = rng.random((5000, 3)), rng.random((5000, 3))
    cd, res["chamfer_kdtree_5k_s"] = _time(lambda: chamfer_distance(p, q))

    def dense():
        d = cdist(p, q)
        return 0.5 * (d.min(1).mean() + d.min(0).mean())

    cd_ref, res["chamfer_cdist_5k_s"] = _time(dense)
    assert abs(cd - cd_ref) < 1e-12
    res["iou_speedup"] = res["iou_python_sets_s"] / res["iou_coords_s"]
    res["chamfer_speedup"] = res["chamfer_cdist_5k_s"] / res["chamfer_kdtree_5k_s"]

    print(f"scene + {len(present)} instances, {args.steps} steps, small random config, CPU ({torch.get_num_threads()} threads)")
    print(f"{'stage':<28}{'value':>10}")
    for k, v in res.items():
        print(f"{k:<28}{v:>10.4f}")
    path = write_result("infer_cpu", {"instances": len(present), "steps": args.steps, "flow_args": FLOW_ARGS, "results": res})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
