"""Settling cost per scene (PyBullet) next to the render time of one 518 px, 32 spp view.

    python bench/bench_settle.py [--scenes 40] [--instances 8]

Layout proposals are made on the real meshes of ../shared/assets with settling off; each is then
settled (``datagen.layout.settle_placed``) and timed, after the caches are warm (a long generation
run keeps them). "ours": one PyBullet world per process with collision shapes cached per
(asset, pose, size). "obvious": a fresh PyBullet world per scene building every shape again, as a
straightforward implementation would. The render time comes from bench/results/datagen_518px_32spp.json
(Cycles on the same 2-core CPU class); the target is settling < 10 % of one view's render.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import RESULTS, SHARED, write_result  # noqa: E402


def proposals(lib, cfg, seed: int, n: int, k: int) -> list:
    """Unsettled k-instance proposals (instances, relations) from the layout sampler."""
    from datagen.ids import scene_rng
    from datagen.layout import SceneSampler

    out, i = [], 0
    while len(out) < n and i < 20 * n:
        rng = scene_rng(seed, i, "layout")
        s = SceneSampler(lib, cfg, rng, lib.coverage_uid(seed, i))
        i += 1
        if not s.place_first():
            continue
        while len(s.placed) < k and s.add():
            pass
        if len(s.placed) == k:
            out.append((s.placed, s.relations))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--instances", type=int, default=8)
    args = ap.parse_args()
    import numpy as np

    from assets_manifest import build_catalog, load_manifest
    from datagen import settle
    from datagen.layout import AssetLibrary, LayoutConfig, settle_placed
    from datagen.settle import SettleConfig, SettleError

    render_s = json.loads((RESULTS / "datagen_518px_32spp.json").read_text())["render_seconds_per_view"]
    with tempfile.TemporaryDirectory() as tmp:
        recs = load_manifest(build_catalog("dir", tmp, inputs=SHARED / "assets", progress=False))
        lib = AssetLibrary(recs)
        cfg = LayoutConfig(settle=SettleConfig(enabled=False))
        props = proposals(lib, cfg, 5, args.scenes, args.instances)
        scfg = SettleConfig()
        for placed, rels in props:  # warm: every shape once (a long run's steady state)
            try:
                settle_placed(lib, placed, rels, scfg)
            except SettleError:
                pass
        ours, obvious, rejected, reasons = [], [], 0, []
        for placed, rels in props:
            t0 = time.perf_counter()
            try:
                settle_placed(lib, placed, rels, scfg)
            except SettleError as exc:
                rejected += 1
                reasons.append(str(exc))
            ours.append(time.perf_counter() - t0)
            settle._WORLD = None  # the obvious way: a new world, every shape built again
            t0 = time.perf_counter()
            try:
                settle_placed(lib, placed, rels, scfg)
            except SettleError:
                pass
            obvious.append(time.perf_counter() - t0)
    ours_ms, obv_ms = np.array(ours) * 1e3, np.array(obvious) * 1e3
    res = {
        "scenes": len(props), "instances_per_scene": args.instances, "assets": len(recs),
        "settle_ms_per_scene": {"median": float(np.median(ours_ms)), "p90": float(np.percentile(ours_ms, 90)), "max": float(ours_ms.max())},
        "settle_ms_per_scene_fresh_world": {"median": float(np.median(obv_ms)), "p90": float(np.percentile(obv_ms, 90))},
        "render_seconds_per_view_518px_32spp": render_s,
        "settle_fraction_of_render_median": float(np.median(ours_ms) / 1e3 / render_s),
        "settle_fraction_of_render_p90": float(np.percentile(ours_ms, 90) / 1e3 / render_s),
        "target_fraction": 0.10,
        "rejected_by_settling": rejected, "rejection_reasons": reasons[:10],
        "note": "per scene, not per view: a scene is settled once and rendered views_per_scene (default 4) times",
    }
    print(json.dumps(res, indent=1))
    print("->", write_result("settle", res))


if __name__ == "__main__":
    main()
