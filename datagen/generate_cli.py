"""`iscene-datagen`: make a dataset of rendered scenes in the shard format (SHARD_FORMAT.md).

    iscene-datagen --procedural --n 100 --out data/demo                 # no downloads
    iscene-datagen --assets catalogs/objv --n 25000 --out data/rand25k --name rand25k
    iscene-datagen --source 3dfront --front-dir 3D-FRONT --future-dir 3D-FUTURE-model \\
        --n 5000 --out data/3dfront --name 3dfront
    iscene-datagen ... --address ray://head:10001 --workers 64          # on a Ray cluster

Rerunning the same command after a crash or kill resumes: finished shards are kept (verified by
sha256), the others are redone from their own seeds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from datagen.layout_cli import add_source_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iscene-datagen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="dataset folder (dataset.json, shards/, failures.jsonl)")
    p.add_argument("--name", default=None, help="dataset name (shard prefix; registered for iscene-train --mix)")
    p.add_argument("--source", choices=["random", "3dfront"], default="random", help="scene source")
    p.add_argument("--front-dir", type=Path, help="3dfront: folder of house JSONs (3D-FRONT)")
    p.add_argument("--future-dir", type=Path, help="3dfront: 3D-FUTURE-model folder")
    p.add_argument("--samples", type=int, default=32, help="Cycles samples per pixel")
    p.add_argument("--no-denoise", action="store_true", help="turn OpenImageDenoise off")
    p.add_argument("--no-floor", action="store_true", help="random scenes: do not render a floor")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="Cycles device (auto: GPU if present)")
    p.add_argument("--space", choices=["view", "world", "both"], default="view", help="voxel frames to write (view is always written)")
    p.add_argument("--grid", type=int, default=64, help="voxel grid resolution")
    p.add_argument("--min-visible-pixels", type=int, default=16, help="drop a view where an instance has fewer visible pixels")
    p.add_argument("--scenes-per-shard", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="concurrent shard tasks (each with its own Blender)")
    p.add_argument("--threads", type=int, default=0, help="Cycles threads per worker (0 = cores / workers)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--no-ray", action="store_true", help="run shards in this process (debugging, tests)")
    p.add_argument("--max-retries", type=int, default=2, help="Ray retries of a failed shard task")
    p.add_argument("--recycle-after", type=int, default=50, help="restart a Blender worker after this many scenes")
    return p


def make_source(args: argparse.Namespace):
    """(source, n scenes, source config, source info)."""
    if args.source == "3dfront":
        from datagen.front3d import Front3DSource
        from datagen.layout import LayoutConfig

        if not args.front_dir or not args.future_dir:
            raise SystemExit("iscene-datagen: --source 3dfront needs --front-dir and --future-dir")
        cfg = LayoutConfig(views_per_scene=args.views_per_scene, width=args.resolution, height=args.resolution)
        src = Front3DSource(args.front_dir, args.future_dir, cfg, args.seed, cache_dir=args.out / "_front3d_cache", max_scenes=args.n)
        n = min(args.n, src.num_scenes())
        if n == 0:
            raise SystemExit(f"iscene-datagen: no usable 3D-FRONT rooms in {args.front_dir}")
        return src, n, {"source": "3dfront", "front_dir": str(args.front_dir), "views": args.views_per_scene,
                        "resolution": args.resolution}, src.dataset_info(args.out)
    from dataclasses import asdict

    from datagen.layout_cli import random_source

    if args.assets and not args.assets.exists():
        raise SystemExit(f"iscene-datagen: --assets {args.assets} not found")
    src = random_source(args)
    cfg = asdict(src.config)
    return src, args.n, {"source": "random", "assets_sha256": sorted(r.sha256 for r in src.records), "layout": cfg}, {"assets": len(src.records)}


def main(argv: list[str] | None = None) -> int:
    from datagen.render import RenderSettings
    from datagen.runner import RunConfig, run_dataset
    from datagen.sample import SampleConfig

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.n <= 0:
        print("iscene-datagen: --n must be positive", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    name = args.name or args.out.name
    source, n, source_config, source_info = make_source(args)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    render = RenderSettings(samples=args.samples, denoise=not args.no_denoise, floor=not args.no_floor, device=args.device, threads=threads)
    sample = SampleConfig(dataset=name, resolution=args.grid, space=args.space, min_visible_pixels=args.min_visible_pixels,
                          render_meta={"engine": "cycles", "samples": args.samples, "denoise": not args.no_denoise, "floor": not args.no_floor})
    from datagen import __version__
    from datagen.sample import config_sha256

    cfg = RunConfig(out=str(args.out), name=name, n=n, seed=args.seed, scenes_per_shard=args.scenes_per_shard,
                    workers=args.workers, address=args.address, use_ray=not args.no_ray, max_retries=args.max_retries,
                    recycle_after=args.recycle_after, render=render, sample=sample, source_config=source_config)
    sample_gen = {"package_version": __version__, "config_sha256": config_sha256(cfg.identity())}
    cfg = RunConfig(**{**cfg.__dict__, "sample": SampleConfig(**{**sample.__dict__, "generator": sample_gen})})
    info = run_dataset(source, cfg, source_info)
    c = info["counts"]
    print(f"{args.out}: {c['samples']} samples from {c['scenes_ok']}/{c['scenes_requested']} scenes in {c['shards']} shards "
          f"({c['scenes_failed']} scenes failed, {c['views_dropped']} views dropped; see failures.jsonl)")
    from iscene_core.shards import register_dataset

    register_dataset(name, str(args.out.resolve()), info)
    return 0
