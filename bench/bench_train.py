"""Training throughput on CPU (small config): steps/s and the share of step time spent waiting for data.

    python bench/bench_train.py [--steps 20] [--workers 0 1 2]

Shards are made by iscene-datagen (procedural, low resolution) in a temp folder; the trainer runs
the tiny configuration with DINOv2 features computed in the step. Compared: DataLoader with 0, 1
and 2 workers (same data, same model), in one run. A GPU run of the L configuration is recorded
separately when a GPU is available (see docs/TRAINING.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    import numpy as np

    from datagen.cli import main as datagen_main
    from train.config import TrainConfig
    from train.trainer import train

    tmp = Path(tempfile.mkdtemp())
    os.environ.setdefault("ISCENE_CACHE", str(tmp / "cache"))
    ds = tmp / "ds"
    datagen_main(["--procedural", "--procedural-n", "60", "--n", "8", "--views-per-scene", "2", "--resolution", "128",
                  "--samples", "2", "--no-denoise", "--min-visible-pixels", "4", "--scenes-per-shard", "2",
                  "--out", str(ds), "--no-ray", "--name", "bench"])
    rows = {}
    for w in args.workers:
        out = tmp / f"run_w{w}"
        cfg = TrainConfig(out=str(out), mix=str(ds), steps=args.steps, batch_size=2, image_size=112, max_instances=4,
                          num_workers=w, log_every=5, ckpt_every=10_000, seed=0)
        train(cfg)
        logs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()][1:]  # skip warm-up window
        rows[f"workers{w}"] = {"rows_per_s": float(np.mean([l["rows_per_s"] for l in logs])),
                               "data_wait_fraction": float(np.mean([l["data_wait_fraction"] for l in logs])),
                               "steps_per_s": float(np.mean([l["steps_per_s"] for l in logs]))}
        print(w, rows[f"workers{w}"])
    res = {"config": "tiny (64 ch, 2 blocks, patch 2), batch 2 scenes, <=4 instances, 112 px crops, CPU", "rows": rows,
           "gpu": None}
    print("->", write_result("train_cpu", res))


if __name__ == "__main__":
    main()
