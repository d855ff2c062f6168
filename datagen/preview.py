"""`iscene-datagen preview DIR --out sheet.png`: a contact sheet to look at a dataset.

One row per sample: the RGB render, the instance map in colours, and the instance voxels drawn
from the sample's own camera (voxel centres through ``cam_to_grid`` and ``K``, nearest first), so a
misaligned voxel grid is visible at a glance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from iscene_core.cli_family import FamilyParser, add_debug_flag, existing_dir, int_in, output_file, run_guarded
from iscene_core.shards import iter_valid_samples
from iscene_core import space


def palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    p = rng.integers(60, 255, size=(max(n, 1) + 1, 3)).astype(np.uint8)
    p[0] = 0
    return p


def voxel_view(s: dict) -> np.ndarray:
    meta, vox = s["meta"], s["vox"]
    cam = meta["camera"]
    W, H = cam["width"], cam["height"]
    R = meta["grid"]["resolution"]
    g2c = space.invert_rigid_scale(np.asarray(meta["grid"]["cam_to_grid"]))
    offs, coords = vox["inst_offsets"], vox["inst_coords"]
    ids = np.repeat(np.arange(1, len(offs)), np.diff(offs))
    pc = space.transform_points(g2c, space.voxel_centers(coords, R))
    uv, z = space.project_points(cam["K"], np.eye(4), pc)
    img = np.full((H, W, 3), 255, np.uint8)
    pal = palette(len(offs))
    scale = float(np.linalg.norm(np.asarray(meta["grid"]["cam_to_grid"])[:3, 0]))
    r = np.maximum(1, np.round(cam["K"][0][0] / (R * scale) / np.maximum(z, 1e-6) / 2)).astype(int)
    shade = np.clip(1.2 - (z - z.min()) / max(np.ptp(z), 1e-6) * 0.6, 0.4, 1.0)
    for k in np.argsort(-z):  # far to near: nearer voxels paint over
        u, v = int(uv[k, 0]), int(uv[k, 1])
        img[max(0, v - r[k]):v + r[k] + 1, max(0, u - r[k]):u + r[k] + 1] = (pal[ids[k]] * shade[k]).astype(np.uint8)
    return img


def contact_sheet(root: str | Path, n: int = 8, tile: int = 256, problems: list[str] | None = None) -> Image.Image:
    """Rows of RGB | instance map | voxels for the first ``n`` readable samples.

    Damaged shards and samples are skipped and listed in ``problems``: a preview is how a user looks
    at a dataset that may be broken, so it shows what it can.
    """
    problems = problems if problems is not None else []
    rows = []
    for s in iter_valid_samples(root, lambda where, msg: problems.append(f"{where}: {msg}"), limit=n):
        pal = palette(int(s["inst"].max()))
        tiles = [s["rgb"], pal[s["inst"]], voxel_view(s)]
        rows.append(np.concatenate([np.asarray(Image.fromarray(t).resize((tile, tile), Image.NEAREST)) for t in tiles], axis=1))
    if not rows:
        raise RuntimeError(f"{root}: no readable sample to preview" + (f" ({len(problems)} problems, first: {problems[0]})" if problems else ""))
    return Image.fromarray(np.concatenate(rows, axis=0))


def build_parser() -> argparse.ArgumentParser:
    p = FamilyParser(prog="iscene-datagen preview", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=existing_dir, help="dataset folder (the one holding dataset.json)")
    p.add_argument("--out", type=output_file, required=True, help="PNG file to write")
    p.add_argument("--n", type=int_in(1, 1000, "--n"), default=8, help="number of samples (rows) to show")
    p.add_argument("--tile", type=int_in(16, 2048, "--tile"), default=256, help="tile size in pixels")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with a sheet (problems listed on stderr), 1 when no sample is readable, 2 for bad arguments."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        problems: list[str] = []
        sheet = contact_sheet(args.dataset, args.n, args.tile, problems)
        for msg in problems[:20]:
            print(f"skipped {msg}", file=sys.stderr)
        tmp = args.out.with_name(f".{args.out.stem}.tmp.png")
        sheet.save(tmp)
        tmp.replace(args.out)
        print(f"{args.out}: {sheet.size[0]}x{sheet.size[1]} contact sheet (RGB | instances | voxels)"
              + (f"; {len(problems)} damaged shards/samples skipped" if problems else ""))
        return 0

    from iscene_core.shards import DatasetError

    return run_guarded("iscene-datagen preview", run, args.debug, (DatasetError,))
