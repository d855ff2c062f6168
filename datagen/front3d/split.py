"""Deterministic train/test split by room id.

A room's split depends only on its key and a salt (sha256), never on which other rooms were
scanned, so evaluations stay reproducible when more houses are added.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def split_of(room_key: str, test_fraction: float = 0.1, salt: str = "iscene-front3d-split/1") -> str:
    """'test' for a stable ``test_fraction`` of room keys, else 'train'."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    digest = hashlib.sha256(f"{salt}:{room_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "train"


def write_split_manifest(rows: list[dict], path: Path) -> Path:
    """Write ``{"room_key", "scene_id", "split"}`` rows as JSONL, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
