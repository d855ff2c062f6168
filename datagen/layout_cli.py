"""`iscene-datagen layout`: scene specs (JSONL), no rendering.

    iscene-datagen layout --assets catalog/ --n 1000 --seed 0 --out layouts.jsonl
    iscene-datagen layout --procedural --n 10 --out layouts.jsonl

One JSON scene spec per line (docs/SCENE_SPEC.md). A scene that cannot be made costs that scene
only: it is reported on stderr and in ``<out>.failures.jsonl`` with its stage and reason (an
unexpected error too, with its type). ``<out>.assets.json`` says, for every asset of the catalog,
in how many scenes it appears, or why it was excluded. Files are written to temporary names and
renamed when complete; an interrupted run leaves no temporary file behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from iscene_core.cli_family import FamilyParser, UsageError, add_debug_flag, int_in, output_file, run_guarded


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Asset and layout flags shared with `iscene-datagen` generate."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--assets", type=Path, help="asset catalog folder or manifest.parquet (iscene-assets build)")
    g.add_argument("--procedural", action="store_true", help="use a built-in procedural catalog (no download)")
    p.add_argument("--procedural-n", type=int_in(1, None, "--procedural-n"), default=200, help="number of assets in the built-in procedural catalog")
    p.add_argument("--n", type=int_in(1, None, "--n"), required=True, help="number of scenes to make (not assets)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; (seed, index) determines a scene")
    p.add_argument("--views-per-scene", type=int_in(1, None, "--views-per-scene"), default=4, help="camera views rendered per scene (one sample each)")
    p.add_argument("--resolution", type=int_in(32, 8192, "--resolution"), default=518, help="image width = height in pixels (not voxels: see --grid)")
    p.add_argument("--min-instances", type=int_in(1, None, "--min-instances"), default=2, help="fewest instances placed in a random scene")
    p.add_argument("--max-instances", type=int_in(1, None, "--max-instances"), default=10, help="most instances placed in a random scene (the trainer's own cap is iscene-train --max-instances)")
    p.add_argument("--fill", type=_fill_arg, default=0.4,
                   help="target share of the image the scene covers (0-1]; the camera backs off to it and never cuts an "
                        "instance off; 'box' frames the scene's bounding box as before")
    p.add_argument("--min-instance-pixels", type=int_in(0, None, "--min-instance-pixels"), default=32,
                   help="each instance must show at least this many visible pixels in a view, enforced when the camera "
                        "is chosen (before rendering), so no view is dropped later for a too small instance")
    p.add_argument("--occlusion", choices=["none", "mixed", "heavy"], default="mixed",
                   help="instances hiding each other: none (every instance >= 90%% visible), heavy (a third of the "
                        "instances <= 60%% visible, lower cameras), mixed (heavy in a third of the views)")
    p.add_argument("--no-settle", action="store_true", help="skip the PyBullet rigid-body settling of random scenes (docs/PHYSICS.md)")
    p.add_argument("--exclude-assets", type=Path, default=None,
                   help="file with one asset uid or sha256 per line (e.g. a bench's assets.txt): those assets are never placed")


def _fill_arg(text: str) -> float | None:
    if text == "box":
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fill {text!r}: expected a number in (0, 1] or 'box'") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"--fill {text}: expected a number in (0, 1] or 'box'")
    return v


def procedural_catalog(n: int = 200, seed: int = 0) -> Path:
    """The embedded default catalog, built once into a cache folder and reused."""
    from assets_manifest import build_catalog

    cache = Path(os.environ.get("ISCENE_CACHE", Path.home() / ".cache" / "iscene")) / f"procedural_n{n}_s{seed}"
    manifest = cache / "manifest.parquet"
    if manifest.is_file():
        return manifest
    return build_catalog("procedural", cache, n=n, seed=seed, progress=False)


def random_source(args: argparse.Namespace):
    from datagen.layout import LayoutConfig, RandomSceneSource

    if args.min_instances < 1 or args.max_instances < args.min_instances:
        raise UsageError(f"--min-instances {args.min_instances} / --max-instances {args.max_instances}: need 1 <= min <= max")
    manifest = args.assets if args.assets else procedural_catalog(args.procedural_n)
    if getattr(args, "exclude_assets", None) is not None:  # iscene-eval benches: keep their assets out of training sets
        from assets_manifest import load_manifest

        if not args.exclude_assets.is_file():
            raise UsageError(f"--exclude-assets {args.exclude_assets}: file not found")
        drop = {line.strip() for line in args.exclude_assets.read_text().splitlines() if line.strip()}
        manifest = [r for r in load_manifest(manifest) if r.uid not in drop and r.sha256 not in drop]
        if not manifest:
            raise UsageError(f"--exclude-assets {args.exclude_assets}: excludes every asset of the catalog")
    from datagen.settle import SettleConfig

    cfg = LayoutConfig(min_instances=args.min_instances, max_instances=args.max_instances,
                       views_per_scene=args.views_per_scene, width=args.resolution, height=args.resolution,
                       fill=getattr(args, "fill", 0.4), min_instance_pixels=getattr(args, "min_instance_pixels", 32),
                       occlusion=getattr(args, "occlusion", "mixed"),
                       settle=SettleConfig(enabled=not getattr(args, "no_settle", False)))
    return RandomSceneSource(manifest, cfg, args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = FamilyParser(prog="iscene-datagen layout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--out", type=output_file, required=True, help="output JSONL file (scene specs, one per line)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded("iscene-datagen layout", lambda: make_layouts(args), args.debug)


def asset_usage(src, specs_uids: list[list[str]]) -> dict:
    """Per catalog asset: scenes it appears in, or the reason it was excluded (never silent)."""
    from collections import Counter

    scenes = Counter(u for uids in specs_uids for u in set(uids))
    exclusions = src.library.exclusions
    out = {}
    for r in src.records:
        row = {"path": r.path, "scenes": int(scenes.get(r.uid, 0)), "excluded": exclusions.get(r.uid)}
        if row["scenes"] == 0 and row["excluded"] is None:
            row["excluded"] = ("never placed in this run: every try as the first instance of the scenes assigned "
                               "to it failed (see failures.jsonl)" if len(specs_uids) >= len(src.records)
                               else f"not reached: {len(specs_uids)} scenes for {len(src.records)} assets")
        out[r.uid] = row
    return out


def _write_atomic(path: Path, text: str) -> None:
    from iscene_core.shards.atomic import write_bytes_atomic

    write_bytes_atomic(path, text.encode())


def make_layouts(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from datagen.errors import SceneFailure
    from datagen.ids import scene_id

    if args.assets and not args.assets.exists():
        print(f"iscene-datagen layout: --assets {args.assets} not found", file=sys.stderr)
        return 2
    src = random_source(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp{os.getpid()}")
    failures, uids = [], []
    try:
        with open(tmp, "w") as f:
            for i in tqdm(range(args.n), desc="layout", unit="scene"):
                try:
                    spec = src.spec(i)
                except SceneFailure as exc:
                    failures.append(exc.to_record(scene_id(i)))
                    print(f"scene {scene_id(i)} failed: {exc}", file=sys.stderr)
                    continue
                except Exception as exc:  # a bug or a bad asset costs this scene, never the run
                    if args.debug:
                        raise
                    failures.append({"scene_id": scene_id(i), "stage": "layout", "reason": f"{type(exc).__name__}: {exc}"})
                    print(f"scene {scene_id(i)} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                f.write(json.dumps(spec) + "\n")
                uids.append([inst["uid"] for inst in spec["instances"]])
        os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    fail_path = args.out.with_name(args.out.name + ".failures.jsonl")
    _write_atomic(fail_path, "".join(json.dumps(r) + "\n" for r in failures))
    usage = asset_usage(src, uids)
    _write_atomic(args.out.with_name(args.out.name + ".assets.json"), json.dumps(usage, indent=1))
    excluded = sum(1 for r in usage.values() if r["scenes"] == 0)
    print(f"{args.out}: {args.n - len(failures)} scenes, {len(failures)} failed ({fail_path.name}); "
          f"{len(usage) - excluded}/{len(usage)} assets used, {excluded} excluded with reasons in {args.out.name}.assets.json")
    return 0
