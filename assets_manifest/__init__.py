"""Asset catalog: one manifest over Objaverse, local folders and procedural assets.

Public API used by later stages::

    from assets_manifest import load_manifest, load_mesh, build_catalog, AssetRecord
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AssetError", "AssetRecord", "MANIFEST_VERSION", "build_catalog", "load_manifest", "load_mesh"]

_LAZY = {"AssetError": "assets_manifest.mesh_io", "load_mesh": "assets_manifest.mesh_io",
         "AssetRecord": "assets_manifest.record", "MANIFEST_VERSION": "assets_manifest.record"}


def __getattr__(name: str):
    """Geometry and parquet modules load on first use, so `iscene-assets --help` stays instant."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'assets_manifest' has no attribute {name!r}")


def load_manifest(path: str | Path) -> list:
    """Rows of a manifest file (``manifest.parquet``) or of a catalog folder containing one."""
    import pyarrow.parquet as pq

    from assets_manifest.record import AssetRecord

    path = Path(path)
    if path.is_dir():
        path = path / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"asset manifest not found: {path}")
    table = pq.read_table(path)
    return [AssetRecord.from_row(r) for r in table.to_pylist()]


def build_catalog(source: str, out: str | Path, *, inputs: str | Path | None = None, n: int | None = None,
                  seed: int = 0, workers: int = 1, progress: bool = True, proxy_faces: int = 2000,
                  max_faces: int | None = None, **filters) -> Path:
    """Build (or resume) a catalog in ``out``; returns the manifest path.

    ``source``: ``"dir"`` (``inputs`` = folder), ``"procedural"`` (``n``, ``seed``) or
    ``"objaverse"`` (``inputs`` = objaverse cache dir or None for ~/.objaverse; ``filters``:
    lvis, metadata_csv, min_aesthetic, limit, download_processes).
    """
    from assets_manifest.ingest import IngestOptions, ingest
    from assets_manifest.sources import dir_items, objaverse_items, procedural_items

    out = Path(out)
    if source == "dir":
        if inputs is None:
            raise ValueError("source 'dir' needs an input folder")
        items = dir_items(inputs)
    elif source == "procedural":
        items = procedural_items(out, int(n if n is not None else 200), seed)
    elif source == "objaverse":
        items = objaverse_items(inputs, max_faces=max_faces, **filters)
    else:
        raise ValueError(f"unknown asset source {source!r}; expected dir, procedural or objaverse")
    return ingest(items, out, IngestOptions(proxy_faces=proxy_faces, max_faces=max_faces), workers=workers, progress=progress)
