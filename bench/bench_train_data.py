"""Training data benchmarks on CPU: resume time at a late step, and cached vs on-the-fly latents.

    python bench/bench_train_data.py [--samples 480] [--resume-batch 200] [--batches 12]

Data: contract-valid shards written directly (tests/train_shards.py; 1-3 instances per view,
``--image`` px views, 64^3 grids), so the numbers measure the pipeline, not the renderer.

1. Resume at batch k (one worker's stream, batch 2): time to the first batch after k when
   (a) seeking to the checkpointed position (per-source shard, sample offset, buffered samples;
   this code) vs (b) replaying: reading and validating the k earlier batches and dropping them
   (what a position-less resume must do, as before). Both must give the same batch (checked).
2. Latents per batch (batch 2 scenes x <= 6 instances = up to 14 grids): (a) on the fly: occupancy
   grids decoded and encoded by the frozen encoder, vs (b) cached: latents read from
   ``iscene-train cache-latents``'s files. Measured with the released encoder's architecture
   (channels 32/128/512, random weights) and with the tiny from-scratch encoder; equality checked.
Results: bench/results/train_data_cpu.json (2-core shared CPU, no GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import write_result  # noqa: E402


def _time_first_batch(make) -> tuple[float, dict]:
    t0 = time.perf_counter()
    batch = next(make())
    return time.perf_counter() - t0, batch


def bench_resume(root: Path, k: int) -> dict:
    import torch

    from train.data import DataConfig, batch_stream

    cfg = DataConfig(mix=str(root), batch_size=2, max_instances=6, image_size=112, shuffle_buffer=16, verify=False)
    stream = batch_stream(cfg, 0, 1)
    pos = None
    for _ in range(k):
        pos = next(stream)["position"]
    ref = next(stream)
    seek_s, a = _time_first_batch(lambda: batch_stream(cfg, 0, 1, state=pos))
    replay_s, b = _time_first_batch(lambda: batch_stream(cfg, 0, 1, start_batch=k))
    same = a["key"] == b["key"] == ref["key"] and torch.equal(a["scene_occ"], b["scene_occ"])
    return {"resume_batch": k, "samples_before": 2 * k, "seek_s": seek_s, "replay_s": replay_s, "speedup": replay_s / seek_s,
            "same_batch": bool(same)}


def bench_latents(root: Path, batches: int, encoder_kind: str, tmp: Path) -> dict:
    import torch

    from iscene_core.shards import resolve
    from iscene_core.trellis import SparseStructureEncoder
    from train.data import DataConfig, batch_stream
    from train.latent_cache import cache_shard
    from train.models import encode_latents, encoder_id
    from train.trainer import batch_to_rows

    torch.manual_seed(0)
    if encoder_kind == "released":
        enc = SparseStructureEncoder(in_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[32, 128, 512])
    else:
        enc = SparseStructureEncoder(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 16, 32])
    enc.eval().requires_grad_(False)
    eid = encoder_id(enc)
    entry = resolve(str(root))
    t0 = time.perf_counter()
    for shard, sha in zip(entry.shards, entry.shard_sha256):
        cache_shard(shard, sha, enc, "view", eid, "cpu")
    cache_s = time.perf_counter() - t0
    base = dict(mix=str(root), batch_size=2, max_instances=6, image_size=112, shuffle_buffer=16, verify=False)
    out = {}
    results = {}
    for mode in ("encode", "cache"):
        cfg = DataConfig(**base, latents=mode, encoder_id=eid if mode == "cache" else None)
        stream = batch_stream(cfg, 0, 1)
        lat, rows_n = [], 0
        t0 = time.perf_counter()
        for _ in range(batches):
            rows = batch_to_rows(next(stream), torch.device("cpu"))
            x0 = rows.grids.float() if rows.are_latents else encode_latents(enc, rows.grids)
            lat.append(x0)
            rows_n += len(x0)
        dt = time.perf_counter() - t0
        results[mode] = lat
        out[mode] = {"s_per_batch": dt / batches, "rows_per_s": rows_n / dt}
    err = max(float((a - b).abs().max()) for a, b in zip(results["encode"], results["cache"]))
    out["speedup"] = out["encode"]["s_per_batch"] / out["cache"]["s_per_batch"]
    out["max_abs_diff_cached_vs_on_the_fly"] = err
    out["cache_build_s"] = cache_s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=480, help="samples in the benchmark dataset")
    ap.add_argument("--image", type=int, default=128, help="side in pixels of the synthetic views")
    ap.add_argument("--resume-batch", type=int, default=200, help="batch index k of the resume measurement")
    ap.add_argument("--batches", type=int, default=6, help="batches timed per latent mode")
    ap.add_argument("--latent-samples", type=int, default=24, help="samples of the (smaller) dataset used for the latent benchmark")
    ap.add_argument("--encoders", nargs="+", default=["tiny", "released"], help="encoder architectures timed: tiny, released")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ["ISCENE_REGISTRY"] = str(tmp / "registry.json")
    from tests.train_shards import make_dataset

    root = make_dataset(tmp / "ds", "benchdata", args.samples, per_shard=8, size=args.image, register=False)
    res = {"data": f"{args.samples} synthetic samples, {args.image} px, 8 per shard", "resume": bench_resume(root, args.resume_batch)}
    print("resume:", res["resume"])
    small = make_dataset(tmp / "lat", "benchlat", args.latent_samples, per_shard=8, size=args.image, register=False)
    res["latents"] = {}
    for k in args.encoders:
        res["latents"][k] = bench_latents(small, args.batches, k, tmp)
        print("latents", k, res["latents"][k], flush=True)
    print("latents:", res["latents"])
    res["gpu"] = None
    print("->", write_result("train_data_cpu", res))


if __name__ == "__main__":
    main()
