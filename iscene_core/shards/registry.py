"""Dataset registry: a name (``rand15k``, ``3dfront``) -> shard list and its dataset.json summary.

The registry is a JSON file at ``$ISCENE_REGISTRY`` or ``~/.cache/iscene/datasets.json``;
``iscene-datagen --name`` registers what it makes. A name that is an existing folder resolves to that
folder's dataset.json (shards confined to the folder). A registry entry may list remote shard URLs
(``https://...``, ``s3://...``), so a cluster can point names at object storage, but only for the
schemes the user enables in ``$ISCENE_URL_SCHEMES`` (comma-separated; none by default). ``pipe:``
runs a shell command and must be enabled by name like any other scheme.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from iscene_core.shards.atomic import FolderLock, write_json_atomic
from iscene_core.shards.dataset_json import DatasetError, load_dataset_json, shard_paths
from iscene_core.shards.safejson import BadJSON, load_bounded, require_dict

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
MAX_REGISTRY_BYTES = 64 << 20


def registry_path() -> Path:
    return Path(os.environ.get("ISCENE_REGISTRY", Path.home() / ".cache" / "iscene" / "datasets.json"))


def enabled_schemes() -> set[str]:
    return {s.strip().lower() for s in os.environ.get("ISCENE_URL_SCHEMES", "").split(",") if s.strip()}


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    shards: tuple[str, ...]
    samples: int
    info: dict
    shard_sha256: tuple[str | None, ...] = ()  # per shard, when known (local datasets)


def _read() -> dict:
    p = registry_path()
    if not p.is_file():
        return {}
    try:
        return require_dict(load_bounded(p, MAX_REGISTRY_BYTES), str(p))
    except BadJSON as exc:
        raise DatasetError(f"dataset registry unreadable: {exc}") from None


def check_url(url: str, name: str) -> str:
    """A registry shard URL is a local path or uses a scheme the user enabled."""
    m = _SCHEME.match(url)
    if m and len(m.group(1)) > 1:  # one letter would be a Windows drive
        scheme = m.group(1).lower()
        if scheme == "file":
            return url
        if scheme not in enabled_schemes():
            raise DatasetError(f"dataset {name!r}: shard URL {url[:80]!r} uses scheme {scheme!r}, which is not enabled; "
                               f"set ISCENE_URL_SCHEMES={scheme} to allow it")
    return url


def register_dataset(name: str, root_or_urls: str | Path | list[str], dataset_json: dict) -> Path:
    """Add or replace ``name``; ``root_or_urls`` is the dataset folder or an explicit shard URL list."""
    if isinstance(root_or_urls, (list, tuple)):
        shards, root, sha = [check_url(u, name) for u in root_or_urls], None, [None] * len(root_or_urls)
    else:
        root = str(Path(root_or_urls).resolve())
        shards = [str(p) for p in shard_paths(root, dataset_json)]
        sha = [s["sha256"] for s in dataset_json["shards"]]
    p = registry_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    with FolderLock(p.parent, "registry update", wait=True):  # two datagen runs finishing at once
        reg = _read()
        reg[name] = {"root": root, "shards": shards, "sha256": sha, "samples": int(dataset_json["counts"]["samples"]),
                     "format": dataset_json.get("format"), "source_info": dataset_json.get("source_info", {})}
        write_json_atomic(p, reg)
    return p


def unregister_dataset(name: str) -> None:
    p = registry_path()
    if not p.is_file():
        return
    with FolderLock(p.parent, "registry update", wait=True):
        reg = _read()
        if reg.pop(name, None) is not None:
            write_json_atomic(p, reg)


def resolve(name: str) -> DatasetEntry:
    """Registered name, or a dataset folder path (DatasetError / KeyError with a clear message)."""
    p = Path(name)
    if p.exists():
        info = load_dataset_json(p)
        return DatasetEntry(info.get("name", p.name), tuple(str(s) for s in shard_paths(p, info)), int(info["counts"]["samples"]),
                            info, tuple(s["sha256"] for s in info["shards"]))
    reg = _read()
    if name not in reg:
        known = ", ".join(sorted(reg)) or "(none)"
        raise KeyError(f"dataset {name!r} is not registered in {registry_path()} and is not a folder (known: {known}); "
                       f"make it with `iscene-datagen --name {name}` or pass a dataset folder")
    e = reg[name]
    if e.get("root"):
        # a local dataset: re-read its index, so a dataset regenerated since registration is seen as it is now
        root = Path(e["root"])
        if root.is_dir():
            return resolve(str(root))
    shards = tuple(check_url(u, name) for u in e["shards"])
    sha = tuple(e.get("sha256") or [None] * len(shards))
    return DatasetEntry(name, shards, int(e["samples"]), e, sha)


def parse_mix(mix: str) -> list[tuple[str, float]]:
    """``"a,b"`` -> equal weights; ``"a:0.3,b:0.7"`` -> given weights (normalised; finite, > 0)."""
    parts = [p.strip() for p in str(mix).split(",") if p.strip()]
    if not parts:
        raise ValueError("--mix is empty: name one or more datasets, e.g. --mix 3dfront,rand15k")
    out = []
    for p in parts:
        name, _, w = p.rpartition(":") if ":" in p and not Path(p).exists() else (p, "", "")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"--mix: bad weight in {p!r} (use name:weight)") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"--mix: weight of {name!r} must be a finite number > 0, got {w!r}")
        out.append((name, weight))
    total = sum(w for _, w in out)
    return [(n, w / total) for n, w in out]
