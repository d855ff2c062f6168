"""Writing one WebDataset shard atomically, and the per-shard "done" record used for resume.

A shard is written to ``.<name>.tar.tmp<pid>`` and renamed when complete, so a reader never sees a
partial shard. Tar headers carry a fixed mtime, so the same samples give byte-identical shards and
a resumed run's shard hashes equal an uninterrupted run's. The done record (``<name>.tar.json``) is
written last; a shard without a matching record is redone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import webdataset as wds

from iscene_core.shards.atomic import file_sha256, write_json_atomic

FIXED_MTIME = 0.0


def write_shard(path: Path, samples: Iterable[dict]) -> tuple[int, str]:
    """Write samples (dicts of pre-encoded bytes + ``__key__``) to ``path``; returns (count, sha256)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False, mtime=FIXED_MTIME)
            for sample in samples:
                writer.write(sample)
                count += 1
            writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count, file_sha256(path)


def done_record_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".json")


def read_done_record(shard: Path) -> dict | None:
    """The shard's done record if the shard is complete and its bytes match; else None."""
    rec_path = done_record_path(shard)
    if not shard.is_file() or not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except json.JSONDecodeError:
        return None
    return rec if rec.get("sha256") == file_sha256(shard) else None
