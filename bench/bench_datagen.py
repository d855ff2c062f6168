"""Seconds per 518x518 view by stage, and the non-render overhead against render time alone.

    python bench/bench_datagen.py [--scenes 4] [--views 2] [--samples 32] [--resolution 518]

Stages: layout (scene spec incl. cameras), asset load (loader + Blender mesh build, first use),
render (Cycles: RGB + Object Index + depth in one pass), masks (instance counts + amodal raster),
voxelise (view grid, all instances), encode+write (PNG/NPY/NPZ/JSON + tar). Assets are the
procedural catalog; the Blender worker is warmed up on one scene first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=518)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    from assets_manifest import build_catalog, load_manifest
    from datagen import sample as S
    from datagen.layout import LayoutConfig, RandomSceneSource
    from datagen.raster import rasterize
    from datagen.render import BlenderWorker, RenderSettings
    from datagen.shard_writer import write_shard
    from iscene_core import space

    tmp = Path(tempfile.mkdtemp())
    recs = load_manifest(build_catalog("procedural", tmp / "cat", n=200, seed=0, progress=False))
    src = RandomSceneSource(recs, LayoutConfig(views_per_scene=args.views, width=args.resolution, height=args.resolution), 0)
    t = {k: 0.0 for k in ("layout", "asset_load", "render", "masks", "voxelise", "encode_write")}
    views = 0
    with BlenderWorker(RenderSettings(samples=args.samples, denoise=True, device=args.device)) as worker:
        worker.render(src.spec(10_000))  # warm-up: Blender start, first imports
        for i in range(args.scenes):
            t0 = time.perf_counter()
            spec = src.spec(i)
            t["layout"] += time.perf_counter() - t0
            meshes = S.MeshCache()
            t0 = time.perf_counter()
            for inst in spec["instances"]:
                meshes.get(inst["path"])
            t["asset_load"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            renders = worker.render(spec)  # includes building Blender meshes for new assets
            t["render"] += time.perf_counter() - t0
            samples = []
            for v, r in enumerate(renders):
                cam = spec["cameras"][v]
                K, w2c = np.asarray(cam["K"]), np.asarray(cam["world_to_cam"])
                wv = [space.transform_points(inst["object_to_world"], meshes.get(inst["path"]).vertices) for inst in spec["instances"]]
                fs = [meshes.get(inst["path"]).faces for inst in spec["instances"]]
                t0 = time.perf_counter()
                np.bincount(r["inst"].ravel())
                [rasterize(K, w2c, a, b, cam["width"], cam["height"]).sum() for a, b in zip(wv, fs)]
                t["masks"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                c2g = space.fit_cam_to_grid(np.concatenate([space.transform_points(w2c, a) for a in wv]))
                S._grid_voxels(c2g @ w2c, wv, fs, 64)
                t["voxelise"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                files, _ = S.make_sample(spec, v, r, meshes, S.SampleConfig(min_visible_pixels=0))
                samples.append(files)
                t["encode_write"] += time.perf_counter() - t0  # includes a second masks+voxelise pass
                views += 1
            t0 = time.perf_counter()
            write_shard(tmp / "bench.tar", samples)
            t["encode_write"] += time.perf_counter() - t0
    # make_sample repeats masks and voxelisation; subtract them from encode+write
    t["encode_write"] -= t["masks"] + t["voxelise"]
    per_view = {k: v / views for k, v in t.items()}
    overhead = sum(v for k, v in per_view.items() if k != "render")
    res = {"resolution": args.resolution, "samples_per_pixel": args.samples, "views": views, "cpu_count": os.cpu_count(),
           "seconds_per_view": per_view, "render_seconds_per_view": per_view["render"],
           "non_render_overhead_seconds_per_view": overhead, "overhead_fraction_of_render": overhead / per_view["render"],
           "total_seconds_per_view": overhead + per_view["render"]}
    for k, v in per_view.items():
        print(f"{k:14s} {v:8.3f} s/view")
    print(f"overhead / render = {res['overhead_fraction_of_render']:.1%}")
    print("->", write_result(f"datagen_{args.resolution}px_{args.samples}spp", res))


if __name__ == "__main__":
    main()
