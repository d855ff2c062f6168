"""`iscene-datagen`: make a dataset of rendered scenes in the shard format (SHARD_FORMAT.md).

    iscene-datagen --procedural --n 100 --out data/demo                 # no downloads
    iscene-datagen --assets catalogs/objv --n 25000 --out data/rand25k --name rand25k
    iscene-datagen --source 3d-front --front-dir 3D-FRONT --future-dir 3D-FUTURE-model \\
        --n 5000 --out data/3dfront --name 3dfront
    iscene-datagen ... --address ray://head:10001 --workers 64          # on a Ray cluster

Rerunning the same command after a crash or kill resumes: finished shards are kept (verified by
sha256), the others are redone from their own seeds. The same command with a larger --n extends the
dataset. Other settings, or a smaller --n, on an existing dataset are refused unless --overwrite.
One run at a time per --out (a lock file); a second one exits with a message.

Exit codes: 0 done; 1 the run failed or produced no sample; 2 bad arguments or paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path

from datagen.layout_cli import add_source_arguments
from datagen.render.worker import MATERIAL_MODES
from iscene_core.cli_family import FamilyParser, UsageError, add_debug_flag, int_in, output_dir, run_guarded

SOURCES = {"random": "random", "3d-front": "3d-front", "3dfront": "3d-front"}  # one name, an old spelling accepted


def build_parser() -> argparse.ArgumentParser:
    p = FamilyParser(prog="iscene-datagen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--out", type=output_dir, required=True, help="dataset folder to make or continue (dataset.json, shards/, failures.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset in --out made with other settings (removes its shards)")
    p.add_argument("--name", default=None, help="dataset name: shard prefix and the name registered for `iscene-train --mix` (default: the folder name)")
    p.add_argument("--source", choices=sorted(SOURCES), default="random",
                   help="scene source: random non-semantic scenes from --assets/--procedural, or 3D-FRONT rooms (`3d-front`)")
    p.add_argument("--front-dir", type=Path, help="3d-front: folder of 3D-FRONT house JSONs")
    p.add_argument("--future-dir", type=Path, help="3d-front: the 3D-FUTURE-model folder")
    p.add_argument("--strict", action="store_true", help="3d-front: stop at the first malformed house file (default: record it and go on)")
    p.add_argument("--samples", type=int_in(1, 65536, "--samples"), default=32, help="Cycles samples per pixel")
    p.add_argument("--no-denoise", action="store_true", help="turn OpenImageDenoise off")
    p.add_argument("--no-floor", action="store_true", help="random scenes: do not render a floor")
    p.add_argument("--materials", choices=MATERIAL_MODES, default="authored",
                   help="authored: glTF/OBJ materials through Blender's importer when its triangles equal the catalog's "
                        "(else a recorded fallback); simple: base colour and vertex colours only (docs/MATERIALS.md)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="Cycles device (auto: GPU if present)")
    p.add_argument("--space", choices=["view", "world", "both"], default="view",
                   help="voxel frames to write: view-centric (always), plus the canonical world frame with `both` (for the no-VC ablation)")
    p.add_argument("--grid", type=int_in(8, 255, "--grid"), default=64,
                   help="voxel grid cells per side (voxels; 64 is what TRELLIS's VAE reads; at most 255, coordinates are uint8)")
    p.add_argument("--min-visible-pixels", type=int_in(0, None, "--min-visible-pixels"), default=16,
                   help="drop a view where an instance has fewer visible pixels than this")
    p.add_argument("--scenes-per-shard", type=int_in(1, None, "--scenes-per-shard"), default=16, help="scenes per tar shard (the unit of resume and of Ray tasks)")
    p.add_argument("--workers", type=int_in(1, None, "--workers"), default=1, help="concurrent shard tasks, each with its own Blender process")
    p.add_argument("--threads", type=int_in(0, None, "--threads"), default=0, help="Cycles threads per worker (0 = cores / workers)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (`auto` = the one running on this node, or ray://host:port); default: a private local Ray")
    p.add_argument("--no-ray", action="store_true", help="run shards in this process, one after the other (debugging, tests)")
    p.add_argument("--max-retries", type=int_in(0, None, "--max-retries"), default=2, help="Ray retries of a failed shard task")
    p.add_argument("--recycle-after", type=int_in(1, None, "--recycle-after"), default=50, help="restart a Blender worker after this many scenes (bounds its memory)")
    add_debug_flag(p)
    return p


def make_source(args: argparse.Namespace):
    """(source, n scenes, source config, source info)."""
    if SOURCES[args.source] == "3d-front":
        from datagen.front3d import Front3DSource
        from datagen.layout import LayoutConfig

        if not args.front_dir or not args.future_dir:
            raise UsageError("--source 3d-front needs --front-dir and --future-dir")
        for flag, d in (("--front-dir", args.front_dir), ("--future-dir", args.future_dir)):
            if not d.is_dir():
                raise UsageError(f"{flag} {d}: {'is a file, expected a folder' if d.exists() else 'no such folder'}")
        cfg = LayoutConfig(views_per_scene=args.views_per_scene, width=args.resolution, height=args.resolution)
        src = Front3DSource(args.front_dir, args.future_dir, cfg, args.seed, cache_dir=args.out / "_front3d_cache", max_scenes=args.n,
                            on_bad_house="error" if args.strict else "skip")
        n = min(args.n, src.num_scenes())
        if n == 0:
            raise RuntimeError(f"no usable 3D-FRONT rooms in {args.front_dir} (see the cleaning counts with --debug)")
        return src, n, {"source": "3d-front", "front_dir": str(args.front_dir), "views": args.views_per_scene,
                        "resolution": args.resolution}, src.dataset_info()
    from dataclasses import asdict

    from datagen.layout_cli import random_source

    if args.assets and not args.assets.exists():
        raise UsageError(f"--assets {args.assets}: no such catalog folder or manifest")
    src = random_source(args)
    cfg = asdict(src.config)
    return src, args.n, {"source": "random", "assets_sha256": sorted(r.sha256 for r in src.records), "layout": cfg}, {"assets": len(src.records)}


def check_renderer() -> None:
    """Fail before any work when Blender is missing, instead of recording every scene as a crash."""
    if importlib.util.find_spec("bpy") is None:
        raise UsageError("bpy (Blender as a module) is not installed; rendering needs it: "
                         "pip install 'iscene[render]' (bpy 5.0.1, Python 3.11 only)")


def generate(args: argparse.Namespace) -> int:
    from datagen import __version__
    from datagen.render import RenderSettings
    from datagen.runner import RunConfig, claim_output, run_dataset
    from datagen.sample import SampleConfig
    from iscene_core.shards import FolderLock, register_dataset, unregister_dataset

    check_renderer()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    name = args.name or args.out.resolve().name
    with FolderLock(args.out, f"iscene-datagen --name {name}"):
        source, n, source_config, source_info = make_source(args)
        threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
        render = RenderSettings(samples=args.samples, denoise=not args.no_denoise, floor=not args.no_floor, device=args.device, threads=threads,
                                materials=args.materials)
        sample = SampleConfig(dataset=name, resolution=args.grid, space=args.space, min_visible_pixels=args.min_visible_pixels,
                              render_meta={"engine": "cycles", "samples": args.samples, "denoise": not args.no_denoise, "floor": not args.no_floor,
                                           "materials": args.materials})
        cfg = RunConfig(out=str(args.out), name=name, n=n, seed=args.seed, scenes_per_shard=args.scenes_per_shard,
                        workers=args.workers, address=args.address, use_ray=not args.no_ray, max_retries=args.max_retries,
                        recycle_after=args.recycle_after, render=render, sample=sample, source_config=source_config)
        # each sample carries the same config hash as dataset.json (identity() leaves `generator` out)
        cfg = RunConfig(**{**cfg.__dict__, "sample": SampleConfig(**{**sample.__dict__, "generator": {
            "package_version": __version__, "config_sha256": cfg.config_sha256()}})})
        claim_output(cfg, overwrite=args.overwrite)
        if SOURCES[args.source] == "3d-front":  # the split manifest is written only once the folder is ours
            source_info = source.dataset_info(args.out)
        info = run_dataset(source, cfg, source_info)
        c = info["counts"]
        print(f"{args.out}: {c['samples']} samples from {c['scenes_ok']}/{c['scenes_requested']} scenes in {c['shards']} shards "
              f"({c['scenes_failed']} scenes failed, {c['views_dropped']} views dropped; see failures.jsonl)")
        if c["samples"] == 0:
            unregister_dataset(name)
            print(f"iscene-datagen: no sample was produced, so {name!r} is not registered; the reasons are in {args.out / 'failures.jsonl'}",
                  file=sys.stderr)
            return 1
        register_dataset(name, str(args.out.resolve()), info)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from iscene_core.shards import DatasetError, LockedError

    return run_guarded("iscene-datagen", lambda: generate(args), args.debug, (DatasetError, LockedError))
