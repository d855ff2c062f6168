"""`iscene-datagen stats DIR [--plot stats.png]`: what the data looks like before training on it.

Distributions over every readable sample: instances per scene, relations, frame fill (share of the
image covered by instances), projected size (visible pixels of each instance / image pixels),
visible fraction, voxels per instance, frames with clipped highlights, and asset usage against the
catalog the dataset was made from (dataset.json's ``assets_sha256``).
"""

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
    fill, size, voxels, clipped, usage = [], [], [], [], Counter()
    problems: list[str] = []
    for sample in iter_valid_samples(root, lambda where, msg: problems.append(f"{where}: {msg}")):
        meta = sample["meta"]
        per_scene[meta["scene_id"]] = len(meta["instances"])
        sources[meta["source"]] += 1
        visible += [i["visible_fraction"] for i in meta["instances"] if i["visible_fraction"] is not None]
        mask += [i["mask_pixels"] for i in meta["instances"]]
        pixels = float(sample["inst"].size)
        fill.append(float((sample["inst"] > 0).mean()))
        size += [i["mask_pixels"] / pixels for i in meta["instances"]]
        voxels += np.diff(np.asarray(sample["vox"]["inst_offsets"])).tolist()
        clipped.append(float(np.all(sample["rgb"] >= 254, axis=-1).mean()))
        if meta["view"] == 0:  # relations and assets are per scene: count them once
            relations.update(r["relation"] for r in meta["relations"])
            usage.update((i.get("asset") or {}).get("sha256") for i in meta["instances"])
    counts = np.array(list(per_scene.values()) or [0])
    vis = np.array(visible or [0.0])
    catalog = set(((info.get("config") or {}).get("source_config") or {}).get("assets_sha256") or [])
    usage.pop(None, None)

    def dist(x: list) -> dict:
        a = np.asarray(x or [0.0], dtype=np.float64)
        return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)), "p90": float(np.percentile(a, 90)),
                "mean": float(a.mean())}
    return {
        "samples": int(info["counts"]["samples"]),
        "scenes": len(per_scene),
        "sources": dict(sources),
        "instances_per_scene": {"mean": float(counts.mean()), "min": int(counts.min()), "max": int(counts.max()),
                                "histogram": {int(k): int(v) for k, v in sorted(Counter(counts.tolist()).items())}},
        "relations": dict(relations),
        "visible_fraction": {"mean": float(vis.mean()), "p10": float(np.percentile(vis, 10)), "median": float(np.median(vis))},
        "mask_pixels_median": float(np.median(mask or [0])),
        "frame_fill": dist(fill),
        "projected_size": dist(size),
        "voxels_per_instance": dist(voxels),
        "clipped_highlights": {"frames_over_10pct": int(np.sum(np.asarray(clipped) > 0.10)), "frames": len(clipped),
                               "median_fraction": float(np.median(clipped or [0.0]))},
        "asset_usage": {"assets_used": len(usage), "catalog_assets": len(catalog) or None,
                        "used_fraction_of_catalog": (len(set(usage) & catalog) / len(catalog)) if catalog else None,
                        "scenes_per_used_asset": dist(list(usage.values()))},
        "failures": info["counts"].get("scenes_failed", 0),
        "views_dropped": info["counts"].get("views_dropped", 0),
        "problems": problems,
        "_raw": {"instances": counts.tolist(), "visible": vis.tolist(), "fill": fill, "size": size, "voxels": voxels,
                 "usage": sorted(usage.values(), reverse=True), "catalog": len(catalog)},
    }


def plot(stats: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = stats["_raw"]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    ax = axes.ravel()
    ax[0].hist(raw["instances"], bins=np.arange(0.5, max(raw["instances"] + [1]) + 1.5), color="tab:blue")
    ax[0].set(title="instances per scene", xlabel="instances", ylabel="scenes")
    rel = stats["relations"]
    ax[1].bar(list(rel) or ["(none)"], list(rel.values()) or [0], color="tab:green")
    ax[1].set(title="relations (view 0 of each scene)")
    ax[1].tick_params(axis="x", rotation=30)
    ax[2].hist(raw["visible"], bins=20, range=(0, 1), color="tab:orange")
    ax[2].set(title="visible fraction per instance", xlabel="visible / amodal pixels")
    ax[3].hist(raw["fill"] or [0], bins=20, range=(0, 1), color="tab:purple")
    ax[3].set(title=f"frame fill (median {stats['frame_fill']['median']:.2f})", xlabel="instance pixels / image pixels", ylabel="views")
    ax[4].hist(np.log10(np.maximum(raw["size"], 1e-6)) if raw["size"] else [0], bins=30, color="tab:red")
    ax[4].set(title="projected size per instance", xlabel="log10(visible pixels / image pixels)")
    ax[5].hist(raw["voxels"] or [0], bins=30, color="tab:brown")
    ax[5].set(title="voxels per instance (view grid)", xlabel="occupied voxels")
    ax[6].bar(np.arange(len(raw["usage"])), raw["usage"], color="tab:gray")
    ax[6].set(title=f"asset usage: {len(raw['usage'])} used of {raw['catalog'] or '?'} in the catalog",
              xlabel="assets (by use)", ylabel="scenes")
    ax[7].axis("off")
    ax[7].text(0, 0.5, "\n".join([f"samples {stats['samples']}, scenes {stats['scenes']}",
                                   f"failures {stats['failures']}, views dropped {stats['views_dropped']}",
                                   f"frames > 10% clipped white: {stats['clipped_highlights']['frames_over_10pct']}"
                                   f" / {stats['clipped_highlights']['frames']}"]), fontsize=11)
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
