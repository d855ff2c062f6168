"""Small contract-valid shard datasets written directly (no Blender), for fast trainer tests.

Each sample is a 56 x 56 view with 1-3 rectangular instances, a 64^3 view grid (and world grid)
with a random blob per instance, and meta.json as SHARD_FORMAT.md describes; ``bad`` keys get a
broken vox.npz (offsets that do not end at len(coords)), which validation must reject.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from iscene_core.shards import FORMAT, file_sha256, register_dataset, write_dataset_json


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def make_sample(key: str, rng: np.random.Generator, size: int = 56, bad: bool = False) -> dict[str, bytes]:
    n = int(rng.integers(1, 4))
    rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    inst = np.zeros((size, size), np.uint16)
    coords, offs = [], [0]
    for i in range(1, n + 1):
        y, x = rng.integers(0, size - 12, 2)
        inst[y:y + 10, x:x + 10] = i
        c = rng.integers(0, 64, 3)
        blob = np.clip(c + rng.integers(-4, 5, (40, 3)), 0, 63).astype(np.uint8)
        coords.append(np.unique(blob, axis=0))
        offs.append(offs[-1] + len(coords[-1]))
    ic = np.concatenate(coords).astype(np.uint8)
    io_ = np.array(offs, np.int64)
    scene = np.unique(ic, axis=0)
    if bad:
        io_ = io_.copy()
        io_[-1] += 5  # offsets no longer end at len(coords)
    vox = _npz(scene=scene, inst_offsets=io_, inst_coords=ic, world_scene=scene[:, [1, 0, 2]].copy(),
               world_inst_offsets=io_, world_inst_coords=ic[:, [1, 0, 2]].copy())
    meta = {"format": FORMAT, "dataset": "synthetic", "scene_id": key.split("_")[0], "view": 0, "source": "random",
            "camera": {"width": size, "height": size}, "grid": {"resolution": 64},
            "instances": [{"index": i} for i in range(1, n + 1)]}
    return {"rgb.png": _png(rgb), "inst.png": _png(inst), "depth.npy": b"", "vox.npz": vox, "meta.json": json.dumps(meta).encode()}


def make_dataset(root: Path, name: str, n: int, per_shard: int = 2, seed: int = 0, bad: set[int] = frozenset(),
                 register: bool = True, size: int = 56) -> Path:
    """``n`` samples in shards of ``per_shard`` under ``root``; sample indices in ``bad`` are broken."""
    root = Path(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    for s0 in range(0, n, per_shard):
        path = root / "shards" / f"{name}-{s0 // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s0, min(n, s0 + per_shard)):
                key = f"s{seed:03d}{i:05d}_v00"
                for ext, data in make_sample(key, rng, size=size, bad=i in bad).items():
                    if ext == "depth.npy":
                        continue
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
        shards.append({"file": f"shards/{path.name}", "samples": min(n, s0 + per_shard) - s0, "sha256": file_sha256(path)})
    info = {"format": FORMAT, "name": name, "shards": shards, "counts": {"samples": n}}
    write_dataset_json(root, info)
    if register:
        register_dataset(name, root, info)
    return root
