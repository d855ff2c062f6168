"""Dataset registry: a name (``rand15k``, ``3dfront``) -> shard URLs and its dataset.json.

The registry is a JSON file at ``$ISCENE_REGISTRY`` or ``~/.cache/iscene/datasets.json``;
``iscene-datagen --name`` registers what it makes. A name that is an existing folder resolves to
that folder's dataset.json, and a shard URL may be anything WebDataset streams (local path,
``http(s)://``, ``pipe:``), so a cluster can point names at object storage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def registry_path() -> Path:
    return Path(os.environ.get("ISCENE_REGISTRY", Path.home() / ".cache" / "iscene" / "datasets.json"))


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    shards: tuple[str, ...]
    samples: int
    info: dict


def _read() -> dict:
    p = registry_path()
    return json.loads(p.read_text()) if p.is_file() else {}


def register_dataset(name: str, root_or_urls: str | list[str], dataset_json: dict) -> Path:
    """Add or replace ``name``; ``root_or_urls`` is the dataset folder or an explicit shard URL list."""
    if isinstance(root_or_urls, (list, tuple)):
        shards = list(root_or_urls)
        root = None
    else:
        root = str(Path(root_or_urls).resolve())
        shards = [str(Path(root) / s["file"]) for s in dataset_json["shards"]]
    reg = _read()
    reg[name] = {"root": root, "shards": shards, "samples": int(dataset_json["counts"]["samples"]),
                 "format": dataset_json.get("format"), "source_info": dataset_json.get("source_info", {})}
    p = registry_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(reg, indent=1, sort_keys=True))
    os.replace(tmp, p)
    return p


def resolve(name: str) -> DatasetEntry:
    """Registered name, or a dataset folder path."""
    p = Path(name)
    if p.is_dir():
        info_path = p / "dataset.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{p}: no dataset.json (not a finished iscene-datagen dataset)")
        info = json.loads(info_path.read_text())
        return DatasetEntry(info.get("name", p.name), tuple(str(p / s["file"]) for s in info["shards"]), int(info["counts"]["samples"]), info)
    reg = _read()
    if name not in reg:
        known = ", ".join(sorted(reg)) or "(none)"
        raise KeyError(f"dataset {name!r} is not registered in {registry_path()} (known: {known}); "
                       f"make it with `iscene-datagen --name {name}` or pass a dataset folder")
    e = reg[name]
    return DatasetEntry(name, tuple(e["shards"]), int(e["samples"]), e)


def parse_mix(mix: str) -> list[tuple[str, float]]:
    """``"a,b"`` -> equal weights; ``"a:0.3,b:0.7"`` -> given weights (normalised)."""
    parts = [p.strip() for p in mix.split(",") if p.strip()]
    if not parts:
        raise ValueError("--mix is empty")
    out = []
    for p in parts:
        name, _, w = p.rpartition(":") if ":" in p and not Path(p).exists() else (p, "", "")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"--mix: bad weight in {p!r} (use name:weight)") from None
        if weight <= 0:
            raise ValueError(f"--mix: weight of {name!r} must be positive")
        out.append((name, weight))
    total = sum(w for _, w in out)
    return [(n, w / total) for n, w in out]
