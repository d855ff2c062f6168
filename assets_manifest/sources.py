"""Asset sources: each turns its input into ``IngestItem``s; ingest treats them all alike."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Iterator

from assets_manifest.ingest import IngestItem
from assets_manifest.mesh_io import MESH_EXTENSIONS

log = logging.getLogger(__name__)

# Everything that is not a mesh (textures, .mtl, docs) is skipped silently; files with an extension
# that looks like geometry we cannot read are offered to ingest so that they are rejected *with a
# reason* rather than vanish.
SIDE_FILE_EXTENSIONS = {".mtl", ".jpg", ".jpeg", ".png", ".bmp", ".tga", ".tif", ".tiff", ".webp",
                        ".md", ".txt", ".json", ".bin", ".ktx2", ".hdr", ".exr", ".csv", ".jsonl", ".parquet"}


def dir_items(root: str | Path) -> Iterator[IngestItem]:
    """Every mesh-like file below ``root`` in sorted order (a stable order keeps uids stable)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--source dir: {root} is not a folder")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        ext = path.suffix.lower()
        if ext in SIDE_FILE_EXTENSIONS or path.name.startswith("."):
            continue
        if ext not in MESH_EXTENSIONS:
            log.info("offering %s (unknown extension) to ingest so it is rejected with a reason", path)
        yield IngestItem(str(path), None, "dir", {"relpath": str(path.relative_to(root))})


def procedural_items(out_dir: str | Path, n: int, seed: int) -> Iterator[IngestItem]:
    """Generate (or reuse) ``n`` procedural assets as PLY files in ``out_dir/assets``."""
    from assets_manifest.procedural import make_asset

    folder = Path(out_dir) / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        uid = f"proc-{seed}-{i:06d}"
        path = folder / f"{uid}.ply"
        family = None
        if not path.is_file():
            mesh, family = make_asset(seed, i)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            mesh.export(tmp, file_type="ply")
            os.replace(tmp, path)
        yield IngestItem(str(path), uid, "procedural", {"seed": seed, "index": i, **({"family": family} if family else {})})


def read_metadata_csv(path: str | Path) -> dict[str, float]:
    """TRELLIS-500K-style metadata: uid (or sha256/file_identifier) -> aesthetic_score."""
    out: dict[str, float] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "aesthetic_score" not in reader.fieldnames:
            raise ValueError(f"--metadata-csv {path}: needs an 'aesthetic_score' column")
        for row in reader:
            key = row.get("uid") or row.get("file_identifier") or row.get("sha256") or ""
            key = key.rstrip("/").split("/")[-1].removesuffix(".glb")  # file_identifier is a URL
            try:
                out[key] = float(row["aesthetic_score"])
            except ValueError:
                continue
    return out


def objaverse_items(
    cache_dir: str | Path | None,
    *,
    lvis: bool | list[str] = False,
    metadata_csv: str | Path | None = None,
    min_aesthetic: float | None = None,
    max_faces: int | None = None,
    limit: int | None = None,
    download_processes: int = 8,
) -> Iterator[IngestItem]:
    """Objaverse 1.0 objects through the ``objaverse`` package (its cache layout, its downloader).

    ``cache_dir`` replaces the package's ``~/.objaverse`` base, so a pre-populated cache works
    offline; anything missing is downloaded by ``objaverse.load_objects`` with parallel processes
    (and skipped on rerun because the package keeps what it downloaded).
    """
    import objaverse

    if cache_dir is not None:
        objaverse.BASE_PATH = str(Path(cache_dir))
        objaverse._VERSIONED_PATH = os.path.join(objaverse.BASE_PATH, "hf-objaverse-v1")
    uids = objaverse.load_uids()
    categories: dict[str, str] = {}
    if lvis:
        ann = objaverse.load_lvis_annotations()
        wanted = set(ann) if lvis is True else set(lvis)
        for cat in sorted(wanted):
            for uid in ann.get(cat, []):
                categories.setdefault(uid, cat)
        uids = [u for u in uids if u in categories]
    scores: dict[str, float] = {}
    if metadata_csv is not None:
        scores = read_metadata_csv(metadata_csv)
        uids = [u for u in uids if u in scores and (min_aesthetic is None or scores[u] >= min_aesthetic)]
    elif min_aesthetic is not None:
        raise ValueError("--min-aesthetic needs --metadata-csv (the aesthetic scores come from it)")
    if max_faces is not None:
        ann = objaverse.load_annotations(uids)
        uids = [u for u in uids if u in ann and int(ann[u].get("faceCount", 0) or 0) <= max_faces]
    uids = sorted(uids)[:limit] if limit else sorted(uids)
    paths = objaverse.load_objects(uids, download_processes=download_processes)
    for uid in uids:
        if uid not in paths:
            log.warning("objaverse uid %s has no local file after load_objects", uid)
            continue
        meta = {"lvis_category": categories.get(uid)} if uid in categories else {}
        if uid in scores:
            meta["aesthetic_score"] = scores[uid]
        yield IngestItem(paths[uid], uid, "objaverse", meta)
