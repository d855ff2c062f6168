"""Iterate the samples of shards without any generator code or assets.

:func:`iter_raw` yields ``(key, {extension: bytes})`` in tar order and turns a truncated or corrupt
tar into a :class:`ShardReadError` naming the shard and how many samples were read before it, so a
tool can report the damage and go on with the next shard. :func:`decode` is the lenient decoder the
verifier uses (it reports problems itself); consumers that must not see broken samples use
:func:`iscene_core.shards.validate_sample`.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from iscene_core.shards.dataset_json import load_dataset_json, shard_paths
from iscene_core.shards.format import MAX_META_BYTES
from iscene_core.shards.safejson import loads_bounded


class ShardReadError(OSError):
    """A shard that cannot be read to its end (truncated, corrupt header, not a tar)."""


def iter_raw(shard: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in tar order; members grouped by key prefix."""
    key, files, n = None, {}, 0
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = Path(member.name).name
                k, _, ext = base.partition(".")
                if k != key and key is not None:
                    yield key, files
                    n += 1
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ShardReadError(f"{shard}: unreadable after {n} samples ({type(exc).__name__}: {exc})") from None
    if key is not None:
        yield key, files


def decode(files: dict[str, bytes]) -> dict:
    """Lenient decode of a sample's files (each present file decoded; errors propagate)."""
    out = {}
    if "rgb.png" in files:
        out["rgb"] = np.asarray(Image.open(io.BytesIO(files["rgb.png"])).convert("RGB"))
    if "inst.png" in files:
        im = Image.open(io.BytesIO(files["inst.png"]))
        out["inst_mode"] = im.mode
        out["inst"] = np.asarray(im).astype(np.uint16)
    if "depth.npy" in files:
        out["depth"] = np.load(io.BytesIO(files["depth.npy"]), allow_pickle=False)
    if "vox.npz" in files:
        with np.load(io.BytesIO(files["vox.npz"]), allow_pickle=False) as z:
            out["vox"] = {k: z[k] for k in z.files}
    if "meta.json" in files:
        out["meta"] = loads_bounded(files["meta.json"], MAX_META_BYTES, "meta.json")
    return out


def iter_samples(root: str | Path, limit: int | None = None) -> Iterator[tuple[str, dict]]:
    """(key, decoded sample) over every shard listed in dataset.json."""
    info = load_dataset_json(root)
    n = 0
    for path in shard_paths(root, info):
        for key, files in iter_raw(path):
            yield key, {"files": sorted(files), **decode(files)}
            n += 1
            if limit is not None and n >= limit:
                return


def iter_valid_samples(root: str | Path, on_problem: Callable[[str, str], None], limit: int | None = None,
                       spaces: tuple[str, ...] = ("view",), need_depth: bool = False) -> Iterator[dict]:
    """Validated samples (see :func:`validate_sample`) of a dataset; damage goes to ``on_problem``.

    For tools that show or summarise a dataset (preview, stats, benches): a corrupt shard or sample
    is reported as ``on_problem(where, message)`` and skipped, and the rest is still read.
    """
    from iscene_core.shards.validate import SampleError, validate_sample

    info = load_dataset_json(root)
    n = 0
    for entry, path in zip(info["shards"], shard_paths(root, info)):
        if not path.is_file():
            on_problem(entry["file"], "listed in dataset.json but missing")
            continue
        try:
            for key, files in iter_raw(path):
                try:
                    yield validate_sample({"__key__": key, **files}, spaces=spaces, need_depth=need_depth)
                except SampleError as exc:
                    on_problem(f"{entry['file']}:{key}", exc.reason)
                    continue
                n += 1
                if limit is not None and n >= limit:
                    return
        except ShardReadError as exc:
            on_problem(entry["file"], str(exc))
