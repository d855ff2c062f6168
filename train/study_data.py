"""Dataset sizes as prefixes of one dataset: ``rand25k@5000`` = the first 5000 samples of ``rand25k``.

A scaling study trains on several sizes of the same data. Making each size separately would
render the same scenes again; a prefix reuses them, and nested prefixes make the sizes nested
(the 1k run sees a subset of the 5k run's scenes), which is what a data-scaling curve assumes.

:func:`materialize_prefix` writes the prefix as an ordinary dataset folder (``dataset.json`` +
``shards/``) that every tool reads unchanged: whole shards are hard-linked (copied across file
systems), the one shard cut in the middle is rewritten with its first samples. The folder is built
under a temporary name and renamed, so a killed run never leaves a half-made dataset.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import tarfile
from pathlib import Path

from iscene_core.shards import file_sha256, iter_raw, resolve, write_dataset_json


def parse_sized(spec: str) -> tuple[str, int | None]:
    """``"rand25k@5000"`` -> ("rand25k", 5000); ``"rand25k"`` -> ("rand25k", None)."""
    name, sep, n = str(spec).rpartition("@")
    if not sep:
        return str(spec), None
    try:
        size = int(n)
    except ValueError:
        raise ValueError(f"dataset size in {spec!r} must be an integer (name@samples)") from None
    if size < 1 or not name:
        raise ValueError(f"dataset spec {spec!r}: use name@N with N >= 1")
    return name, size


def _write_partial_shard(src: str, dst: Path, n: int) -> int:
    """Copy the first ``n`` samples of shard ``src`` into tar ``dst``; returns samples written."""
    written = 0
    with tarfile.open(dst, "w") as tar:
        for key, files in iter_raw(src):
            if written >= n:
                break
            for ext in sorted(files):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(files[ext]), 0, 0o644
                tar.addfile(info, io.BytesIO(files[ext]))
            written += 1
    return written


def materialize_prefix(spec: str, out: Path) -> Path:
    """Make ``out`` a dataset folder holding the first N samples of ``spec`` (``name@N``).

    Returns ``out``; an existing ``out`` with a dataset.json is kept as it is (finished earlier).
    Raises ValueError when the dataset has fewer than N samples.
    """
    name, n = parse_sized(spec)
    out = Path(out)
    if (out / "dataset.json").is_file():
        return out
    entry = resolve(name)
    if n is None:
        n = entry.samples
    if n > entry.samples:
        raise ValueError(f"{spec}: dataset {name!r} has only {entry.samples} samples")
    counts = [int(s.get("samples", 0)) for s in entry.info.get("shards", [])]
    if len(counts) != len(entry.shards):
        raise ValueError(f"{spec}: dataset {name!r} has no per-shard sample counts (a local dataset folder is needed)")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    shards, left = [], n
    for i, (src, count) in enumerate(zip(entry.shards, counts)):
        if left <= 0:
            break
        dst = tmp / "shards" / f"{Path(src).stem}-prefix{i:06d}.tar"
        if count <= left:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            got = count
        else:
            got = _write_partial_shard(src, dst, left)
        shards.append({"file": f"shards/{dst.name}", "samples": got, "sha256": file_sha256(dst)})
        left -= got
    info = copy.deepcopy(entry.info)
    info.update({"name": f"{entry.name}@{n}", "shards": shards, "prefix_of": {"dataset": entry.name, "samples": n}})
    info["counts"] = {**info.get("counts", {}), "samples": n - left}
    write_dataset_json(tmp, info)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out
