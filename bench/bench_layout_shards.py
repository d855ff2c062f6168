"""Layout cost per scene as a generation run pays it: shard after shard, each shard a Ray task that
unpickles its own copy of the scene source.

    python bench/bench_layout_shards.py [--shards 6] [--scenes-per-shard 16]

"per task": every shard starts with an empty asset library (what each Ray task got before
``datagen.layout.shared_library``: the source's library did not survive pickling). "per process":
the shards share this process's library, as consecutive Ray tasks in one worker process now do.
Both modes lay out the same scenes (settling and camera choice included, 8 instances, real meshes
of ../shared/assets) in one process on one machine, so the ratio is what matters; times are CPU
seconds of this process (``time.process_time``). The scenes are compared too: a cache must not
change a scene.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import SHARED, write_result  # noqa: E402


def run(source, shards: int, per_shard: int, fresh_per_task: bool) -> tuple[list[float], list]:
    from datagen import layout as L
    from datagen.errors import SceneFailure

    L._LIBRARIES.clear()
    times, specs = [], []
    blob = pickle.dumps(source)
    for k in range(shards):
        if fresh_per_task:
            L._LIBRARIES.clear()
        task_source = pickle.loads(blob)  # what a Ray task receives
        for i in range(k * per_shard, (k + 1) * per_shard):
            t = time.process_time()
            try:
                specs.append(task_source.spec(i))
            except SceneFailure as exc:
                specs.append(str(exc))
            times.append(time.process_time() - t)
    return times, specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--scenes-per-shard", type=int, default=16)
    args = ap.parse_args()
    if args.shards < 1 or args.scenes_per_shard < 1:
        ap.error("--shards and --scenes-per-shard must be >= 1")
    import numpy as np

    from assets_manifest import build_catalog, load_manifest
    from datagen.layout import LayoutConfig, RandomSceneSource

    with tempfile.TemporaryDirectory() as tmp:
        recs = load_manifest(build_catalog("dir", tmp, inputs=SHARED / "assets", progress=False))
        source = RandomSceneSource(recs, LayoutConfig(min_instances=8, max_instances=8), dataset_seed=3)
        per_task, specs_a = run(source, args.shards, args.scenes_per_shard, fresh_per_task=True)
        per_process, specs_b = run(source, args.shards, args.scenes_per_shard, fresh_per_task=False)
    a, b = np.array(per_task) * 1e3, np.array(per_process) * 1e3
    res = {
        "shards": args.shards, "scenes_per_shard": args.scenes_per_shard, "instances_per_scene": 8,
        "assets": len(recs), "catalog": "../shared/assets (dir)",
        "clock": "CPU seconds of the benchmark process (time.process_time)",
        "ms_per_scene_library_per_task": {"median": float(np.median(a)), "mean": float(a.mean()), "p99": float(np.percentile(a, 99))},
        "ms_per_scene_library_per_process": {"median": float(np.median(b)), "mean": float(b.mean()), "p99": float(np.percentile(b, 99))},
        "speedup_mean": float(a.mean() / b.mean()),
        "speedup_median": float(np.median(a) / np.median(b)),
        "identical_scenes": f"{sum(x == y for x, y in zip(specs_a, specs_b))} of {len(specs_a)}",
    }
    print(json.dumps(res, indent=1))
    print("->", write_result("layout_shards", res))


if __name__ == "__main__":
    main()
