"""Where do a prediction's instances land? Voxel-box centre error and size against a bench's ground truth.

    python studies/ablation-nano/followup/placement.py PRED_DIR [BENCH_GT_DIR] [--scenes s00000000_v00,...]

IoU-B alone cannot tell a model that places small blobs in the right spot from one that scatters
voxels over the grid (a scattered box overlaps many ground-truth boxes a little). This prints, over
every ground-truth instance: how many came back empty, the median distance between predicted and true
voxel-box centres (in voxels of the 64^3 grid; the mean-box baseline sets the floor), the median
ratio of box volumes, and the mean voxel-box IoU (IoU-B up to the mesh-vs-voxel box difference).
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from iscene_core.evaluation.boxes import aabb, box_iou


def voxel_box(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the voxels' box: a voxel ``v`` spans ``[v, v + 1)``."""
    lo, hi = aabb(coords.astype(float))
    return lo, hi + 1.0


def placement(pred: str, gt: str, scenes: list[str] | None = None) -> dict:
    rows = []
    for f in sorted(glob.glob(os.path.join(gt, "s*.npz"))):
        key = os.path.basename(f)[:-4]
        if scenes and key not in scenes:
            continue
        g, p = np.load(f), np.load(os.path.join(pred, key + ".npz"))
        for k in (k for k in g.files if k.startswith("instance")):
            if k not in p.files or len(p[k]) == 0:
                rows.append((np.nan, np.nan, 0.0))
                continue
            gb, pb = voxel_box(g[k]), voxel_box(p[k])
            rows.append((float(np.linalg.norm((pb[0] + pb[1]) / 2 - (gb[0] + gb[1]) / 2)),
                         float(np.prod(pb[1] - pb[0]) / np.prod(gb[1] - gb[0])), box_iou(pb, gb)))
    r = np.array(rows)
    return {"instances": len(r), "empty": int(np.isnan(r[:, 0]).sum()), "centre_error_median": float(np.nanmedian(r[:, 0])),
            "volume_ratio_median": float(np.nanmedian(r[:, 1])), "voxel_box_iou_mean": float(r[:, 2].mean())}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pred")
    ap.add_argument("gt", nargs="?", default="studies/ablation-nano/benches/train-fit/gt")
    ap.add_argument("--scenes", default="", help="comma-separated scene keys (default: all)")
    a = ap.parse_args()
    s = placement(a.pred, a.gt, [x for x in a.scenes.split(",") if x] or None)
    print(f"{a.pred}: {s['instances']} instances, {s['empty']} empty; centre error median {s['centre_error_median']:.1f} voxels; "
          f"box volume ratio median {s['volume_ratio_median']:.2f}; voxel-box IoU mean {s['voxel_box_iou_mean']:.3f}")
