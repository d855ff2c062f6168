"""`iscene-datagen verify DIR`: check every sample against SHARD_FORMAT.md from its own files.

Needs neither the assets nor the generator's configuration; uses only the contract and the shared
coordinate conventions (``iscene_core.space``). Per sample:

- files, dtypes and shapes; ``meta.format``; key = ``<scene_id>_v<view>``;
- instance counts agree across meta, vox and inst.png; ``mask_pixels`` equal the map's counts;
- scene grid == union of the instance grids; world grid (when present) is the same surfaces;
- voxels and masks agree through the stored camera and ``cam_to_grid``: every mask pixel of an
  instance back-projects (with its depth) into a voxel of that instance, and every voxel of an
  instance projects onto its mask or behind something nearer (occlusion, via depth);
- relations hold in the world boxes; ``visible_fraction`` in [0, 1].

Geometric checks allow one voxel of slack (a pixel's depth is a sample of a surface, a voxel is a
box) and pass when at least ``--min-agreement`` (default 99 %) of pixels / voxels agree.
Dataset level: dataset.json format, listed shards exist with the recorded sha256 and counts,
unique keys, failures.jsonl parses.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iscene_core.shards import FORMAT, REQUIRED_FILES as REQUIRED, decode, iter_raw, load_dataset_json
from iscene_core import space


@dataclass
class Report:
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    agreement: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, key: str, msg: str) -> None:
        self.problems.append(f"{key}: {msg}")

    def measure(self, name: str, value: float) -> None:
        self.agreement.setdefault(name, []).append(value)

    def summary(self) -> dict:
        return {
            "samples": self.samples,
            "problems": len(self.problems),
            "agreement_min": {k: float(np.min(v)) for k, v in self.agreement.items()},
            "agreement_mean": {k: float(np.mean(v)) for k, v in self.agreement.items()},
        }


def _occupied_lookup(coords: np.ndarray, R: int) -> np.ndarray:
    from scipy import ndimage  # imported where used: `verify --help` must not pay for scipy
    dense = space.coords_to_dense(coords, R)
    # one voxel of slack: a surface sample may sit on a voxel's boundary
    return ndimage.binary_dilation(dense, structure=np.ones((3, 3, 3), bool))


def check_sample(key: str, s: dict, rep: Report, min_agreement: float = 0.99) -> None:
    from scipy import ndimage

    missing = [f for f in REQUIRED if f not in s["files"]]
    if missing:
        rep.add(key, f"missing files {missing}")
        return
    meta, vox, rgb, inst, depth = s["meta"], s["vox"], s["rgb"], s["inst"], s["depth"]
    if meta.get("format") != FORMAT:
        rep.add(key, f"meta.format is {meta.get('format')!r}, expected {FORMAT!r}")
    if key != f"{meta.get('scene_id')}_v{int(meta.get('view', -1)):02d}":
        rep.add(key, "key does not equal <scene_id>_v<view>")
    cam = meta["camera"]
    W, H = int(cam["width"]), int(cam["height"])
    K, w2c = np.asarray(cam["K"], float), np.asarray(cam["world_to_cam"], float)
    if rgb.shape != (H, W, 3) or rgb.dtype != np.uint8:
        rep.add(key, f"rgb.png is {rgb.shape} {rgb.dtype}, expected ({H}, {W}, 3) uint8")
    if inst.shape != (H, W) or s.get("inst_mode") not in ("I;16", "I;16B", "I;16L", "I"):
        rep.add(key, f"inst.png is {inst.shape} mode {s.get('inst_mode')}, expected ({H}, {W}) 16-bit")
    if depth.shape != (H, W) or depth.dtype != np.float32:
        rep.add(key, f"depth.npy is {depth.shape} {depth.dtype}, expected ({H}, {W}) float32")
        return
    if K.shape != (3, 3) or w2c.shape != (4, 4) or not np.allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-6):
        rep.add(key, "camera K must be 3x3 and world_to_cam a rigid 4x4")
        return
    for name, dt in (("scene", np.uint8), ("inst_offsets", np.int64), ("inst_coords", np.uint8)):
        if name not in vox or vox[name].dtype != dt:
            rep.add(key, f"vox.npz[{name}] missing or not {np.dtype(dt).name}")
            return
    insts = meta["instances"]
    n = len(insts)
    offs = vox["inst_offsets"]
    if len(offs) != n + 1 or offs[0] != 0 or offs[-1] != len(vox["inst_coords"]) or np.any(np.diff(offs) < 0):
        rep.add(key, f"inst_offsets {offs.tolist()[:5]}... inconsistent with {n} instances")
        return
    if [i["index"] for i in insts] != list(range(1, n + 1)):
        rep.add(key, "instance indices are not 1..N")
    if int(inst.max(initial=0)) > n:
        rep.add(key, f"inst.png has id {int(inst.max())} > {n} instances")
    counts = np.bincount(inst.ravel(), minlength=n + 1)
    for i, m in enumerate(insts, start=1):
        if m["mask_pixels"] != int(counts[i]):
            rep.add(key, f"instance {i}: mask_pixels {m['mask_pixels']} != {int(counts[i])} pixels in inst.png")
        vf = m.get("visible_fraction")
        if vf is not None and not 0.0 <= vf <= 1.0:
            rep.add(key, f"instance {i}: visible_fraction {vf} outside [0, 1]")
    R = int(meta["grid"]["resolution"])
    per = [vox["inst_coords"][offs[i]:offs[i + 1]] for i in range(n)]
    union = np.unique(np.concatenate(per), axis=0) if n else np.zeros((0, 3), np.uint8)
    if not np.array_equal(np.unique(vox["scene"], axis=0), union):
        rep.add(key, "scene grid is not the union of the instance grids")
    c2g = np.asarray(meta["grid"]["cam_to_grid"], float)
    g2c = space.invert_rigid_scale(c2g)
    scale = float(np.linalg.norm(c2g[:3, 0]))
    vsize = 1.0 / (R * scale)  # voxel edge in camera units
    f = K[0, 0]
    # (a) mask pixels back-project into their instance's voxels
    vv, uu = np.nonzero(depth > 0)
    for i in range(1, n + 1):
        sel = inst[vv, uu] == i
        if not sel.any():
            continue
        u, v = uu[sel] + 0.5, vv[sel] + 0.5
        z = depth[vv[sel], uu[sel]].astype(np.float64)
        pc = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=1)
        idx = np.floor((space.transform_points(c2g, pc) + 0.5) * R).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < R), axis=1)
        occ = _occupied_lookup(per[i - 1], R)
        hit = np.zeros(len(idx), bool)
        hit[inside] = occ[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
        rep.measure("mask_pixels_in_voxels", float(hit.mean()))
        if hit.mean() < min_agreement:
            rep.add(key, f"instance {i}: only {hit.mean():.1%} of its mask pixels (with depth) fall in its voxels")
    # (b) voxels project onto their mask, or behind a nearer surface
    for i in range(1, n + 1):
        if len(per[i - 1]) == 0:
            rep.add(key, f"instance {i} has no voxels")
            continue
        pc = space.transform_points(g2c, space.voxel_centers(per[i - 1], R))
        uv, z = space.project_points(K, np.eye(4), pc)
        if np.any(z <= 0):
            rep.add(key, f"instance {i}: voxels behind the camera")
            continue
        px = np.floor(uv).astype(np.int64)
        inframe = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
        radius = int(np.ceil(f * vsize * 0.87 / z.min())) + 1  # a voxel's half-diagonal in pixels
        mine = ndimage.binary_dilation(inst == i, iterations=radius)
        ok = np.zeros(len(px), bool)
        p = px[inframe]
        d = depth[p[:, 1], p[:, 0]]
        nearer = (d > 0) & (d < z[inframe] - 1.75 * vsize)
        ok[inframe] = mine[p[:, 1], p[:, 0]] | nearer
        rep.measure("voxels_on_mask_or_occluded", float(ok.mean()))
        if ok.mean() < min_agreement:
            rep.add(key, f"instance {i}: only {ok.mean():.1%} of its voxels project onto its mask or behind a nearer surface")
    # (c) world grid: the same surfaces in the canonical frame
    if "world_inst_coords" in vox and "world_to_grid" in meta["grid"]:
        wg = np.asarray(meta["grid"]["world_to_grid"], float)
        woffs = vox["world_inst_offsets"]
        if len(woffs) != n + 1:
            rep.add(key, "world_inst_offsets inconsistent with instance count")
        else:
            wunion = np.unique(vox["world_inst_coords"], axis=0) if len(vox["world_inst_coords"]) else np.zeros((0, 3), np.uint8)
            if not np.array_equal(np.unique(vox["world_scene"], axis=0), wunion):
                rep.add(key, "world scene grid is not the union of the world instance grids")
            from scipy.spatial import cKDTree

            g2w = space.invert_rigid_scale(wg)
            c2w = space.invert_rigid_scale(w2c)
            half_w = 0.5 * np.sqrt(3) / (R * float(np.linalg.norm(wg[:3, 0])))
            half_v = 0.5 * np.sqrt(3) * vsize
            for i in range(n):
                wc = vox["world_inst_coords"][woffs[i]:woffs[i + 1]]
                if len(wc) == 0 or len(per[i]) == 0:
                    rep.add(key, f"instance {i + 1}: empty world or view grid")
                    continue
                a = space.transform_points(g2w, space.voxel_centers(wc, R))
                b = space.transform_points(c2w @ g2c, space.voxel_centers(per[i], R))
                # a surface point lies in a world voxel and in a view voxel: their centres are at most
                # the sum of the two half-diagonals apart
                d, _ = cKDTree(b).query(a)
                hit = d <= (half_w + half_v) * (1 + 1e-6)
                rep.measure("world_voxels_near_view_voxels", float(hit.mean()))
                if hit.mean() < min_agreement:
                    rep.add(key, f"instance {i + 1}: world grid disagrees with view grid ({hit.mean():.1%})")
    # (d) relations in the world boxes
    boxes = {m["index"]: np.asarray(m["world_aabb"], float) for m in insts}
    for r in meta.get("relations", []):
        a, b = boxes.get(r["subject"]), boxes.get(r["object"])
        if a is None or b is None:
            rep.add(key, f"relation {r} names a missing instance")
            continue
        holds = {
            "left_of": a[1, 0] < b[0, 0], "right_of": a[0, 0] > b[1, 0],
            "in_front_of": a[1, 1] < b[0, 1], "behind": a[0, 1] > b[1, 1],
            "on_top_of": insts[r["subject"] - 1].get("support") in (r["object"], None) and a[0, 2] >= b[0, 2],
        }.get(r["relation"])
        if holds is None:
            rep.add(key, f"unknown relation {r['relation']!r}")
        elif not holds:
            rep.add(key, f"relation {r} does not hold in the world boxes")


def verify_dataset(root: str | Path, limit: int | None = None, min_agreement: float = 0.99) -> Report:
    """Check a dataset folder; ``Report.ok`` is True when nothing is wrong and there is a sample.

    Damage is what this exists to find, so none of it stops the check: an unreadable index, a
    truncated or corrupt shard, a sample that does not decode are each reported where they are,
    and everything else is still verified.
    """
    from iscene_core.shards import DatasetError, ShardReadError, file_sha256, safe_shard_path

    root = Path(root)
    rep = Report()
    try:
        info = load_dataset_json(root, check_format=False)
    except DatasetError as exc:
        rep.add("dataset.json", str(exc))
        return rep
    if info.get("format") != FORMAT:
        rep.add("dataset.json", f"format {info.get('format')!r}, expected {FORMAT!r}")
    fail_path = root / "failures.jsonl"
    if fail_path.is_file():
        for ln, line in enumerate(fail_path.read_text(errors="replace").splitlines(), 1):
            try:
                rec = json.loads(line)
                assert isinstance(rec, dict) and {"scene_id", "stage", "reason"} <= set(rec)
            except (json.JSONDecodeError, AssertionError, RecursionError):
                rep.add("failures.jsonl", f"line {ln} is not a {{scene_id, stage, reason}} record")
    keys: set[str] = set()
    total = 0
    for shard in info.get("shards", []):
        path = safe_shard_path(root, shard["file"])
        if not path.is_file():
            rep.add(shard["file"], "listed in dataset.json but missing")
            continue
        if file_sha256(path) != shard["sha256"]:
            rep.add(shard["file"], "sha256 differs from dataset.json")
        count = 0
        try:
            for key, files in iter_raw(path):
                count += 1
                if key in keys:
                    rep.add(key, "duplicate key")
                keys.add(key)
                if limit is not None and rep.samples >= limit:
                    continue
                rep.samples += 1
                try:
                    s = {"files": sorted(files), **decode(files)}
                    check_sample(key, s, rep, min_agreement)
                except Exception as exc:  # a malformed sample is a finding, not a crash
                    rep.add(f"{shard['file']}:{key}", f"unreadable sample: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        except ShardReadError as exc:
            rep.add(shard["file"], str(exc))
        if count != shard["samples"]:
            rep.add(shard["file"], f"{count} samples, dataset.json says {shard['samples']}")
        total += count
    if total != info["counts"]["samples"]:
        rep.add("dataset.json", f"counts.samples {info['counts']['samples']} != {total} samples in shards")
    if rep.samples == 0:
        rep.add(str(root), "no sample to verify (an empty dataset is not a dataset)")
    return rep


def build_parser() -> argparse.ArgumentParser:
    from iscene_core.cli_family import FamilyParser, add_debug_flag, existing_dir, float_in, int_in

    p = FamilyParser(prog="iscene-datagen verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=existing_dir, help="dataset folder (the one holding dataset.json)")
    p.add_argument("--limit", type=int_in(1, None, "--limit"), default=None, help="check at most this many samples in depth (all are still counted)")
    p.add_argument("--min-agreement", type=float_in(0.0, 1.0, "--min-agreement"), default=0.99,
                   help="fraction of pixels/voxels that must agree for a sample to pass")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the dataset passes, 1 when a problem was found, 2 for a bad argument or path."""
    from iscene_core.cli_family import run_guarded

    args = build_parser().parse_args(argv)

    def run() -> int:
        rep = verify_dataset(args.dataset, args.limit, args.min_agreement)
        for msg in rep.problems[:50]:
            print("FAIL", msg)
        if len(rep.problems) > 50:
            print(f"... and {len(rep.problems) - 50} more")
        summary = rep.summary()
        print(json.dumps(summary, indent=1) if args.json else
              f"{'OK' if rep.ok else 'FAILED'}: {rep.samples} samples checked, {len(rep.problems)} problems; "
              f"min agreement {summary['agreement_min']}")
        return 0 if rep.ok else 1

    return run_guarded("iscene-datagen verify", run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
