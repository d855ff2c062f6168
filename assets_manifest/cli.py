"""`iscene-assets`: build, inspect and validate the asset catalog.

    iscene-assets build --source dir ../shared/assets --out catalogs/shared
    iscene-assets build --source procedural --n 200 --seed 0 --out catalogs/proc
    iscene-assets build --source objaverse --objaverse-cache ~/.objaverse --lvis \\
        --metadata-csv ObjaverseXL_sketchfab.csv --min-aesthetic 4.5 --max-faces 200000 --out catalogs/objv
    iscene-assets stats catalogs/proc --plot stats.png
    iscene-assets validate catalogs/proc
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from iscene_core.cli_family import (FamilyParser, UsageError, add_debug_flag, existing_dir, existing_path, int_in, output_dir,
                                    output_file, run_guarded)


def build_parser() -> argparse.ArgumentParser:
    p = FamilyParser(prog="iscene-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(p)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="ingest a source into a catalog folder (resumable: reruns skip known sha256)")
    b.add_argument("--source", required=True, choices=["dir", "procedural", "objaverse"],
                   help="where assets come from: a local folder of meshes, built-in procedural shapes, or Objaverse via the objaverse package")
    b.add_argument("input", nargs="?", help="folder of meshes for --source dir")
    b.add_argument("--out", required=True, type=output_dir, help="catalog folder (manifest.parquet, proxies/, rejects.jsonl)")
    b.add_argument("--n", type=int_in(1, None, "--n"), default=200, help="procedural: number of assets to make (not scenes)")
    b.add_argument("--seed", type=int, default=0, help="procedural: seed")
    b.add_argument("--workers", type=int_in(1, None, "--workers"), default=1, help="ingest processes")
    b.add_argument("--max-faces", type=int_in(1, None, "--max-faces"), default=None, help="reject assets with more faces")
    b.add_argument("--proxy-faces", type=int_in(4, None, "--proxy-faces"), default=2000, help="faces of the decimated collision proxy")
    b.add_argument("--objaverse-cache", type=Path, default=None, help="objaverse base folder (default ~/.objaverse)")
    b.add_argument("--lvis", action="store_true", help="objaverse: only the LVIS-annotated subset")
    b.add_argument("--metadata-csv", type=Path, default=None, help="objaverse: TRELLIS-500K-style CSV with aesthetic_score")
    b.add_argument("--min-aesthetic", type=float, default=None, help="objaverse: keep aesthetic_score >= this")
    b.add_argument("--limit", type=int_in(1, None, "--limit"), default=None, help="objaverse: at most this many uids")
    b.add_argument("--download-processes", type=int_in(1, None, "--download-processes"), default=8, help="objaverse: parallel downloads")
    add_debug_flag(b, subcommand=True)
    s = sub.add_parser("stats", help="counts, histograms, rejects by reason (+ PNG plot)")
    s.add_argument("catalog", type=existing_path, help="catalog folder or its manifest.parquet")
    s.add_argument("--plot", type=output_file, default=None, help="write a PNG plot here")
    add_debug_flag(s, subcommand=True)
    v = sub.add_parser("validate", help="re-check every row: file, sha256, proxy, normalisation (exit 1 on problems)")
    v.add_argument("catalog", type=existing_path, help="catalog folder or its manifest.parquet")
    v.add_argument("--no-geometry", action="store_true", help="skip reloading meshes")
    add_debug_flag(v, subcommand=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 done, 1 failed run or validation problems, 2 bad arguments or paths."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_guarded("iscene-assets", lambda: run(args), args.debug)


def run(args: argparse.Namespace) -> int:
    from assets_manifest import build_catalog, load_manifest
    from assets_manifest.stats import catalog_stats, plot_stats, read_rejects, validate_record

    if args.command == "build":
        if args.source == "dir" and not args.input:
            raise UsageError("build --source dir needs an input folder of meshes")
        if args.source == "dir":
            existing_dir(args.input)  # one-line error for a missing folder or a file
        filters = {}
        if args.source == "objaverse":
            filters = dict(lvis=args.lvis, metadata_csv=args.metadata_csv, min_aesthetic=args.min_aesthetic,
                           limit=args.limit, download_processes=args.download_processes)
        inputs = args.input if args.source == "dir" else args.objaverse_cache
        manifest = build_catalog(args.source, args.out, inputs=inputs, n=args.n, seed=args.seed, workers=args.workers,
                                 proxy_faces=args.proxy_faces, max_faces=args.max_faces, **filters)
        records, rejects = load_manifest(manifest), read_rejects(args.out)
        print(f"{manifest}: {len(records)} assets, {len(rejects)} rejects ({args.out / 'rejects.jsonl'})")
        return 0
    records, rejects = load_manifest(args.catalog), read_rejects(args.catalog)
    if args.command == "stats":
        print(json.dumps(catalog_stats(records, rejects), indent=2))
        if args.plot:
            print(f"plot: {plot_stats(records, rejects, args.plot)}")
        return 0
    problems = [msg for r in records for msg in validate_record(r, not args.no_geometry)]
    for msg in problems:
        print(msg)
    print(f"{len(records)} assets checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
