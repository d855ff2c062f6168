"""Ingest: validate each asset, record its stats, and prepare the normalisation and collision proxy.

One bad file never stops a build: it goes to ``rejects.jsonl`` with the file, the stage and the
reason. A rerun skips every file whose sha256 is already in the manifest (or already rejected), so
an interrupted build resumes where it stopped. The manifest is rewritten atomically (temp + rename)
every ``checkpoint_every`` assets and at the end.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import trimesh

from assets_manifest.mesh_io import AssetError, file_sha256, load_mesh
from assets_manifest.normalize import guess_unit, guess_up_axis, normalization_matrix
from assets_manifest.record import AssetRecord
from assets_manifest import stable_poses

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
REJECTS_NAME = "rejects.jsonl"


@dataclass(frozen=True)
class IngestItem:
    """A file to ingest, with the uid and source its row will carry."""

    path: str
    uid: str | None
    source: str
    meta: dict


@dataclass(frozen=True)
class IngestOptions:
    proxy_faces: int = 2000
    max_faces: int | None = None


def _has_texture(mesh: trimesh.Trimesh) -> tuple[bool, bool]:
    visual = mesh.visual
    material = getattr(visual, "material", None)
    has_material = material is not None or visual.kind in ("vertex", "face")
    image = None
    if material is not None:
        image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
    return bool(visual.kind == "texture" and image is not None), bool(has_material)


def _collision_proxy(canonical: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Decimated copy for fast broad checks; exact checks always use the full mesh."""
    if len(canonical.faces) <= max_faces:
        return canonical
    try:
        return canonical.simplify_quadric_decimation(face_count=max_faces)
    except Exception:  # decimation can fail on non-manifold input: a hull is still a valid bound
        return canonical.convex_hull


def ingest_file(item: IngestItem, out_dir: Path, options: IngestOptions) -> AssetRecord:
    """Validate one file and build its row; raises ``AssetError`` for anything unusable."""
    path = Path(item.path).resolve()
    if not path.is_file():
        raise AssetError(path, "read", "file not found")
    sha = file_sha256(path)
    mesh = load_mesh(path)
    if options.max_faces is not None and len(mesh.faces) > options.max_faces:
        raise AssetError(path, "filter", f"{len(mesh.faces)} faces > max_faces {options.max_faces}")
    used = mesh.vertices[np.unique(mesh.faces)]
    extents = np.ptp(used, axis=0)
    file_frame = trimesh.Trimesh(used, np.searchsorted(np.unique(mesh.faces), mesh.faces), process=False)
    try:  # resting poses once, in the file frame: they decide an ambiguous up axis too
        rots_file, probs = stable_poses.all_poses(file_frame)
    except Exception as exc:
        raise AssetError(path, "stable_poses", f"{type(exc).__name__}: {exc}") from None
    up = guess_up_axis(path.suffix, extents, lambda axis: stable_poses.up_probability(rots_file, probs, axis))
    norm, canonical_extents = normalization_matrix(used, up)
    canonical = trimesh.Trimesh(used @ norm[:3, :3].T + norm[:3, 3], file_frame.faces, process=False)
    # canonical = s R_n x + t_n, so a file-frame pose R_f acts on the canonical frame as R_f R_n^T
    rot_n = norm[:3, :3] / np.linalg.norm(norm[:3, 0])
    poses = stable_poses.to_record(*stable_poses.select(rots_file @ rot_n.T, probs))
    proxy = _collision_proxy(canonical, options.proxy_faces)
    proxy_path = out_dir / "proxies" / f"{sha[:24]}.ply"
    if not proxy_path.is_file():
        proxy_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = proxy_path.with_name(f".{proxy_path.name}.tmp{os.getpid()}")
        proxy.export(tmp, file_type="ply")
        os.replace(tmp, proxy_path)
    has_texture, has_material = _has_texture(mesh)
    return AssetRecord(
        uid=item.uid or f"{item.source}-{sha[:16]}",
        source=item.source,
        path=str(path),
        sha256=sha,
        faces=int(len(mesh.faces)),
        vertices=int(len(mesh.vertices)),
        extents=tuple(float(v) for v in extents),
        normalization=norm.tolist(),
        collision_proxy=str(proxy_path.resolve()),
        proxy_faces=int(len(proxy.faces)),
        watertight=bool(mesh.is_watertight),
        has_texture=has_texture,
        has_material=has_material,
        up_axis=up,
        unit_guess=guess_unit(float(extents.max())),
        canonical_extents=tuple(float(v) for v in canonical_extents),
        meta=dict(item.meta),
        stable_poses=poses,
    )


def _ingest_worker(args) -> tuple[str, AssetRecord | None, dict | None]:
    item, out_dir, options = args
    try:
        return item.path, ingest_file(item, out_dir, options), None
    except AssetError as exc:
        return item.path, None, {"file": exc.path, "stage": exc.stage, "reason": exc.reason}
    except Exception as exc:  # never let one file stop the build
        return item.path, None, {"file": str(item.path), "stage": "ingest", "reason": f"{type(exc).__name__}: {exc}"}


def read_manifest_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.is_file() else []


def write_manifest(records: list[AssetRecord], path: Path) -> None:
    rows = [r.to_row() for r in records]
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({"manifest_version": records[0].manifest_version if records else ""})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_rejects(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ingest(items: Iterable[IngestItem], out_dir: Path, options: IngestOptions = IngestOptions(), *,
           workers: int = 1, checkpoint_every: int = 200, progress: bool = True) -> Path:
    """Ingest ``items`` into ``out_dir/manifest.parquet`` (resuming), returns the manifest path."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, rejects_path = out_dir / MANIFEST_NAME, out_dir / REJECTS_NAME
    records = [AssetRecord.from_row(r) for r in read_manifest_rows(manifest_path)]
    known_sha = {r.sha256 for r in records}
    known_paths = {r.path for r in records}
    rejected = {(r["file"], r.get("sha256")) for r in _read_rejects(rejects_path)}

    def todo() -> Iterator[IngestItem]:
        for item in items:
            p = Path(item.path).resolve()
            if str(p) in known_paths:
                continue
            sha = file_sha256(p) if p.is_file() else None
            if sha in known_sha or (str(p), sha) in rejected:
                continue
            yield item

    pending = list(todo())
    new = 0
    with open(rejects_path, "a") as rej, tqdm(total=len(pending), desc="ingest", unit="asset", disable=not progress) as bar:
        jobs = ((item, out_dir, options) for item in pending)
        if workers > 1:
            pool = ProcessPoolExecutor(workers)
            results = pool.map(_ingest_worker, jobs, chunksize=4)
        else:
            pool, results = None, map(_ingest_worker, jobs)
        try:
            for path, record, reject in results:
                bar.update(1)
                if reject is not None:
                    p = Path(reject["file"])
                    reject["sha256"] = file_sha256(p) if p.is_file() else None
                    rej.write(json.dumps(reject, sort_keys=True) + "\n")
                    rej.flush()
                    log.warning("rejected %s: [%s] %s", reject["file"], reject["stage"], reject["reason"])
                    continue
                if record.sha256 in known_sha:  # same bytes under two names: keep the first
                    continue
                known_sha.add(record.sha256)
                records.append(record)
                new += 1
                if new % checkpoint_every == 0:
                    write_manifest(records, manifest_path)
        finally:
            if pool is not None:
                pool.shutdown()
    if records:
        write_manifest(records, manifest_path)
    log.info("ingested %d new assets (%d in manifest)", new, len(records))
    return manifest_path
