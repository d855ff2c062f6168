"""Read a dataset folder in the shard format without any generator code or assets.

Decodes each sample's files: ``rgb`` (H, W, 3) uint8, ``inst`` (H, W) uint16, ``depth`` (H, W)
float32, ``vox`` (dict of arrays), ``meta`` (dict). Used by verify, preview and stats; the trainer
has its own WebDataset pipeline.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

REQUIRED = ("rgb.png", "inst.png", "depth.npy", "vox.npz", "meta.json")


def load_dataset_json(root: str | Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is {root} a finished iscene-datagen dataset?)")
    return json.loads(path.read_text())


def iter_raw(shard: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in tar order; members grouped by key prefix."""
    key, files = None, {}
    with tarfile.open(shard) as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = Path(member.name).name
            k, _, ext = base.partition(".")
            if k != key and key is not None:
                yield key, files
                files = {}
            key = k
            files[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, files


def decode(files: dict[str, bytes]) -> dict:
    out = {}
    if "rgb.png" in files:
        out["rgb"] = np.asarray(Image.open(io.BytesIO(files["rgb.png"])).convert("RGB"))
    if "inst.png" in files:
        out["inst"] = np.asarray(Image.open(io.BytesIO(files["inst.png"]))).astype(np.uint16)
        out["inst_mode"] = Image.open(io.BytesIO(files["inst.png"])).mode
    if "depth.npy" in files:
        out["depth"] = np.load(io.BytesIO(files["depth.npy"]), allow_pickle=False)
    if "vox.npz" in files:
        with np.load(io.BytesIO(files["vox.npz"]), allow_pickle=False) as z:
            out["vox"] = {k: z[k] for k in z.files}
    if "meta.json" in files:
        out["meta"] = json.loads(files["meta.json"])
    return out


def iter_samples(root: str | Path, limit: int | None = None) -> Iterator[tuple[str, dict]]:
    """(key, decoded sample) over every shard listed in dataset.json."""
    root = Path(root)
    info = load_dataset_json(root)
    n = 0
    for shard in info["shards"]:
        for key, files in iter_raw(root / shard["file"]):
            yield key, {"files": sorted(files), **decode(files)}
            n += 1
            if limit is not None and n >= limit:
                return
