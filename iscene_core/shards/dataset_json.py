"""``dataset.json``: the index of a dataset folder, read defensively and written atomically.

A dataset folder may come from anyone (a colleague's bucket, a download), so its index is untrusted:
each shard entry must be a relative path that stays inside the folder. WebDataset would otherwise
run ``pipe:`` entries as shell commands and read any absolute path; remote URLs are allowed only
through the user's own registry (see :mod:`.registry`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from iscene_core.shards.atomic import write_json_atomic
from iscene_core.shards.format import FORMAT, MAX_DATASET_JSON_BYTES
from iscene_core.shards.safejson import BadJSON, load_bounded, require_dict

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class DatasetError(ValueError):
    """A dataset folder or its dataset.json is missing, malformed or unsafe; the message names it."""


def safe_shard_path(root: Path, entry: str) -> Path:
    """``root / entry`` if ``entry`` is a plain relative path inside ``root``; else DatasetError."""
    if not isinstance(entry, str) or not entry:
        raise DatasetError(f"{root}/dataset.json: shard entry {entry!r} is not a file name")
    if _SCHEME.match(entry) or entry.startswith(("/", "\\", "~")) or os.path.isabs(entry):
        raise DatasetError(f"{root}/dataset.json: shard entry {entry!r} is not a relative path inside the dataset "
                           "(URLs and absolute paths are accepted only from the registry)")
    norm = os.path.normpath(entry)
    if norm == ".." or norm.startswith(".." + os.sep) or "\0" in entry:
        raise DatasetError(f"{root}/dataset.json: shard entry {entry!r} points outside the dataset folder")
    return root / norm


def load_dataset_json(root: str | Path, *, check_format: bool = True) -> dict:
    """The validated content of ``root/dataset.json``.

    Raises :class:`DatasetError` with a one-line message for a missing folder, a file where a folder
    is expected, a missing/oversized/invalid index, a wrong format version or an unsafe shard entry.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: is a file, expected a dataset folder (the one holding dataset.json)")
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing (is {root} a finished iscene-datagen dataset?)")
    try:
        info = require_dict(load_bounded(path, MAX_DATASET_JSON_BYTES), str(path))
    except BadJSON as exc:
        raise DatasetError(str(exc)) from None
    if check_format and info.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {info.get('format')!r}, this reader reads {FORMAT!r}")
    shards = info.get("shards")
    if not isinstance(shards, list):
        raise DatasetError(f"{path}: 'shards' must be a list")
    for s in shards:
        if not isinstance(s, dict):
            raise DatasetError(f"{path}: shard entry {s!r} is not an object")
        safe_shard_path(root, s.get("file"))
        if not isinstance(s.get("samples"), int) or s["samples"] < 0:
            raise DatasetError(f"{path}: shard {s.get('file')!r} has no valid sample count")
        if not isinstance(s.get("sha256"), str) or not _SHA256.match(s["sha256"]):
            raise DatasetError(f"{path}: shard {s.get('file')!r} has no valid sha256")
    counts = info.get("counts")
    if not isinstance(counts, dict) or not isinstance(counts.get("samples"), int):
        raise DatasetError(f"{path}: 'counts.samples' missing")
    return info


def shard_paths(root: str | Path, info: dict) -> list[Path]:
    """Local paths of the shards listed in a validated ``info``."""
    root = Path(root)
    return [safe_shard_path(root, s["file"]) for s in info["shards"]]


def write_dataset_json(root: str | Path, info: dict) -> None:
    """Write the index last and atomically: a reader sees the old index or the new one."""
    write_json_atomic(Path(root) / "dataset.json", info)
