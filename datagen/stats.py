"""`iscene-datagen stats DIR [--plot stats.png]`: instances per scene, relations, visibility."""

from __future__ import annotations

import argparse
import sys
import json
from collections import Counter
from pathlib import Path

import numpy as np

from iscene_core.shards import iter_valid_samples, load_dataset_json


def dataset_stats(root: str | Path) -> dict:
    """Distributions over every readable sample; damaged shards/samples are listed under ``problems``."""
    root = Path(root)
    info = load_dataset_json(root)
    per_scene, relations, visible, mask, sources = {}, Counter(), [], [], Counter()
    problems: list[str] = []
    for sample in iter_valid_samples(root, lambda where, msg: problems.append(f"{where}: {msg}")):
        meta = sample["meta"]
        per_scene[meta["scene_id"]] = len(meta["instances"])
        sources[meta["source"]] += 1
        visible += [i["visible_fraction"] for i in meta["instances"] if i["visible_fraction"] is not None]
        mask += [i["mask_pixels"] for i in meta["instances"]]
        if meta["view"] == 0:  # relations are per scene: count them once
            relations.update(r["relation"] for r in meta["relations"])
    counts = np.array(list(per_scene.values()) or [0])
    vis = np.array(visible or [0.0])
    return {
        "samples": int(info["counts"]["samples"]),
        "scenes": len(per_scene),
        "sources": dict(sources),
        "instances_per_scene": {"mean": float(counts.mean()), "min": int(counts.min()), "max": int(counts.max()),
                                "histogram": {int(k): int(v) for k, v in sorted(Counter(counts.tolist()).items())}},
        "relations": dict(relations),
        "visible_fraction": {"mean": float(vis.mean()), "p10": float(np.percentile(vis, 10)), "median": float(np.median(vis))},
        "mask_pixels_median": float(np.median(mask or [0])),
        "failures": info["counts"].get("scenes_failed", 0),
        "views_dropped": info["counts"].get("views_dropped", 0),
        "problems": problems,
        "_raw": {"instances": counts.tolist(), "visible": vis.tolist()},
    }


def plot(stats: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].hist(stats["_raw"]["instances"], bins=np.arange(0.5, max(stats["_raw"]["instances"] + [1]) + 1.5), color="tab:blue")
    ax[0].set(title="instances per scene", xlabel="instances", ylabel="scenes")
    rel = stats["relations"]
    ax[1].bar(list(rel) or ["(none)"], list(rel.values()) or [0], color="tab:green")
    ax[1].set(title="relations (view 0 of each scene)")
    ax[1].tick_params(axis="x", rotation=30)
    ax[2].hist(stats["_raw"]["visible"], bins=20, range=(0, 1), color="tab:orange")
    ax[2].set(title="visible fraction per instance", xlabel="visible / amodal pixels")
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)


def build_parser() -> argparse.ArgumentParser:
    from iscene_core.cli_family import FamilyParser, add_debug_flag, existing_dir, output_file

    p = FamilyParser(prog="iscene-datagen stats", description=__doc__)
    p.add_argument("dataset", type=existing_dir, help="dataset folder (the one holding dataset.json)")
    p.add_argument("--plot", type=output_file, default=None, help="write a PNG plot here (default DIR/stats.png)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with statistics, 1 when the dataset has damaged or no readable samples, 2 for bad arguments."""
    from iscene_core.cli_family import run_guarded
    from iscene_core.shards import DatasetError

    args = build_parser().parse_args(argv)

    def run() -> int:
        stats = dataset_stats(args.dataset)
        out = args.plot or args.dataset / "stats.png"
        plot(stats, out)
        print(json.dumps({k: v for k, v in stats.items() if k != "_raw"}, indent=1))
        print(f"plot: {out}")
        for msg in stats["problems"][:20]:
            print(f"damaged: {msg}", file=sys.stderr)
        return 1 if stats["problems"] or not stats["scenes"] else 0

    return run_guarded("iscene-datagen stats", run, args.debug, (DatasetError,))
