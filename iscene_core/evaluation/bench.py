"""Benchmarks: ``make-bench`` (dataset -> self-contained, hashed folder), ``verify``, loading.

A bench holds everything scoring needs without the dataset, the asset catalog or the generator:
the input view and its instance mask, the camera, the scene spec, GT voxels in the view grid and
GT meshes in metres in the view frame (docs/EVAL.md, section 3). GT meshes are rebuilt from the
catalog asset named in each sample's meta (by sha256, or uid + sha256 check), loaded with
``assets_manifest.load_mesh`` (the renderer's triangles), moved by ``object_to_world``, the camera's
``world_to_cam`` and the view-axis change of ``iscene_core.space``; make-bench re-voxelises them and
refuses a scene whose voxels differ from the shard's, so a bench cannot silently disagree with the
data it was made from. ``bench.json`` is written last and lists the sha256 of every file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import trimesh

from iscene_core import space
from iscene_core.evaluation.errors import EvalError, SceneError
from iscene_core.evaluation.layout import atomic_write_bytes, atomic_write_text, instance_name, write_prediction_info, write_scene_glb

__all__ = ["BENCH_FORMAT", "BenchScene", "Bench", "make_bench", "verify_bench", "load_bench", "AssetResolver"]

log = logging.getLogger("iscene-eval")

BENCH_FORMAT = "iscene-bench/1"
VOXEL_AGREEMENT_MIN = 0.98  # GT voxels rebuilt from the catalog vs the shard's (IoU), per instance


def view_from_cam4() -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = space.VIEW_FROM_CAM
    return m


@dataclass
class BenchScene:
    """One bench scene as scoring needs it (paths are inside the bench folder)."""

    key: str
    root: Path
    camera: dict
    cam_to_grid: np.ndarray
    resolution: int
    up_view: np.ndarray
    instance_ids: list[int]

    @property
    def view_to_grid(self) -> np.ndarray:
        """4x4 view frame (metres) -> view grid cube: the uniform scale and shift of ``cam_to_grid``."""
        return self.cam_to_grid @ view_from_cam4().T

    @property
    def grid_to_view(self) -> np.ndarray:
        return space.invert_rigid_scale(self.view_to_grid)

    @property
    def view_to_cam(self) -> np.ndarray:
        return view_from_cam4().T

    def gt_voxels(self) -> dict[int, np.ndarray]:
        with np.load(self.root / "scenes" / self.key / "voxels.npz", allow_pickle=False) as z:
            return {i: z[instance_name(i)] for i in self.instance_ids}

    @property
    def image_path(self) -> Path:
        return self.root / "scenes" / self.key / "image.png"

    @property
    def mask_path(self) -> Path:
        return self.root / "scenes" / self.key / "inst.png"

    @property
    def gt_glb(self) -> Path:
        return self.root / "gt" / f"{self.key}.glb"


@dataclass
class Bench:
    root: Path
    manifest: dict
    scenes: list[BenchScene] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.root.name))


class AssetResolver:
    """Asset (uid, sha256) -> mesh file: catalogs by sha256 / uid, or a 3D-FUTURE folder by uid."""

    def __init__(self, catalogs: list[Path] = (), future_dir: Path | None = None):
        from assets_manifest import load_manifest

        self.by_sha: dict[str, str] = {}
        self.by_uid: dict[str, str] = {}
        for c in catalogs:
            try:
                records = load_manifest(c)
            except (FileNotFoundError, OSError, ValueError) as exc:
                raise EvalError(f"--assets {c}: {exc}") from None
            for r in records:
                self.by_sha.setdefault(r.sha256, r.path)
                self.by_uid.setdefault(r.uid, r.path)
        self.future_dir = Path(future_dir) if future_dir else None
        self._hash_cache: dict[str, str] = {}
        self._mesh_cache: dict[str, trimesh.Trimesh] = {}

    def _sha(self, path: str) -> str:
        from iscene_core.shards import file_sha256

        if path not in self._hash_cache:
            self._hash_cache[path] = file_sha256(path)
        return self._hash_cache[path]

    def path(self, uid: str, sha256: str) -> str:
        if sha256 in self.by_sha:
            return self.by_sha[sha256]
        candidates = []
        if uid in self.by_uid:
            candidates.append(self.by_uid[uid])
        if self.future_dir is not None:
            from datagen.front3d.cleaning import model_path

            candidates.append(str(model_path(self.future_dir, uid)))
        for c in candidates:
            if Path(c).is_file() and self._sha(c) == sha256:
                return c
        raise SceneError(f"asset {uid} (sha256 {sha256[:12]}...) not found in the given catalogs"
                         + (" or --future-dir" if self.future_dir else "") + " with the same sha256")

    def mesh(self, uid: str, sha256: str) -> trimesh.Trimesh:
        from assets_manifest import load_mesh

        p = self.path(uid, sha256)
        if p not in self._mesh_cache:
            if len(self._mesh_cache) > 256:
                self._mesh_cache.pop(next(iter(self._mesh_cache)))
            self._mesh_cache[p] = load_mesh(p)
        return self._mesh_cache[p]


def _iter_dataset(root: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    from iscene_core.shards import DatasetError, ShardReadError, iter_raw, load_dataset_json, shard_paths

    try:
        info = load_dataset_json(root)
    except DatasetError as exc:
        raise EvalError(f"--from: {exc}") from None
    for path in shard_paths(root, info):
        try:
            yield from iter_raw(path)
        except ShardReadError as exc:
            log.warning("skipping the rest of a shard: %s", exc)


def stacked_share(meta: dict) -> float:
    """Share of instances that stand ``on_top_of`` another (subject of such a relation)."""
    n = len(meta.get("instances", []))
    on = {r.get("subject") for r in meta.get("relations", []) if r.get("relation") == "on_top_of"}
    return len(on) / n if n else 0.0


def _scene_files(meta: dict, files: dict[str, bytes], resolver: AssetResolver) -> tuple[dict[str, bytes], dict]:
    """Bench files of one sample (relative names -> bytes) and its scenes[] entry."""
    from iscene_core.shards import decode

    from iscene_core.evaluation.boxes import voxelize_in_grid
    from iscene_core.metrics import voxel_iou

    dec = decode({k: files[k] for k in ("vox.npz",) if k in files})
    vox = dec.get("vox")
    if vox is None:
        raise SceneError("sample has no vox.npz")
    cam = meta["camera"]
    w2c = np.asarray(cam["world_to_cam"], np.float64)
    cam_to_grid = np.asarray(meta["grid"]["cam_to_grid"], np.float64)
    R = int(meta["grid"].get("resolution", 64))
    view_from_world = view_from_cam4() @ w2c
    up_view = view_from_world[:3, :3] @ np.array([0.0, 0.0, 1.0])
    up_view /= np.linalg.norm(up_view)
    scene = BenchScene(key="", root=Path("."), camera=cam, cam_to_grid=cam_to_grid, resolution=R, up_view=up_view, instance_ids=[])
    offsets, coords = vox["inst_offsets"], vox["inst_coords"]
    meshes, voxels, assets = {}, {"scene": vox["scene"]}, []
    for k, inst in enumerate(meta["instances"]):
        i = int(inst["index"])
        a = inst["asset"]
        m = resolver.mesh(a["uid"], a["sha256"])
        verts = space.transform_points(view_from_world @ np.asarray(inst["object_to_world"], np.float64), m.vertices)
        meshes[i] = trimesh.Trimesh(verts, np.asarray(m.faces), process=False)
        shard_vox = coords[offsets[k]:offsets[k + 1]]
        rebuilt = voxelize_in_grid(verts, m.faces, scene.view_to_grid, R)
        agree = voxel_iou(rebuilt, shard_vox)
        if agree < VOXEL_AGREEMENT_MIN:
            raise SceneError(f"instance {i}: voxels rebuilt from asset {a['uid']} agree with the shard's at IoU {agree:.3f} "
                             f"< {VOXEL_AGREEMENT_MIN} (different asset file or transform?)")
        voxels[instance_name(i)] = shard_vox
        assets.append({"index": i, "uid": a["uid"], "sha256": a["sha256"], "source": a.get("source", "unknown")})
    from datagen.sample import encode_npz

    out = {
        "image.png": files["rgb.png"],
        "inst.png": files["inst.png"],
        "camera.json": json.dumps({"K": cam["K"], "world_to_cam": cam["world_to_cam"], "width": cam["width"],
                                   "height": cam["height"], "cam_to_grid": cam_to_grid.tolist(), "resolution": R,
                                   "up_view": up_view.tolist()}, indent=1, sort_keys=True).encode(),
        "spec.json": json.dumps(meta, indent=1, sort_keys=True).encode(),
        "voxels.npz": encode_npz(**{k: np.asarray(v, np.uint8).reshape(-1, 3) for k, v in voxels.items()}),
    }
    return out, {"meshes": meshes, "voxels": voxels, "assets": assets}


def make_bench(dataset: Path, out: Path, *, n: int | None = None, views: int = 1, catalogs: list[Path] = (),
               future_dir: Path | None = None, split: str | None = None, min_stacked: float | None = None,
               name: str | None = None, progress: bool = True) -> dict:
    """Write a bench folder from an iscene-datagen dataset; returns the manifest (also bench.json)."""
    from tqdm import tqdm

    from iscene_core import __version__
    from iscene_core.shards import file_sha256, load_dataset_json

    dataset, out = Path(dataset), Path(out)
    if (out / "bench.json").exists():
        raise EvalError(f"--out {out}: already holds a bench (bench.json); choose another folder or remove it")
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out}: exists and is not a folder")
    try:
        info = load_dataset_json(dataset)
    except Exception as exc:
        raise EvalError(f"--from {dataset}: {exc}") from None
    if not catalogs and future_dir is None:
        resolver = _default_resolver(info)
    else:
        resolver = AssetResolver(list(catalogs), future_dir)
    scenes, skipped, views_taken = [], [], {}
    bar = tqdm(total=n, desc="make-bench", unit="scene", disable=not progress)
    for key, files in _iter_dataset(dataset):
        if n is not None and len(scenes) >= n:
            break
        if "meta.json" not in files:
            skipped.append({"key": key, "reason": "no meta.json"})
            continue
        try:
            meta = json.loads(files["meta.json"])
        except ValueError:
            skipped.append({"key": key, "reason": "meta.json unreadable"})
            continue
        sid = meta.get("scene_id", key)
        if views_taken.get(sid, 0) >= views:
            continue
        if split is not None and (meta.get("room") or {}).get("split") != split:
            continue
        if min_stacked is not None and stacked_share(meta) < min_stacked:
            continue
        try:
            bench_files, extra = _scene_files(meta, files, resolver)
        except SceneError as exc:
            skipped.append({"key": key, "reason": str(exc)})
            log.warning("%s: skipped: %s", key, exc)
            continue
        except Exception as exc:  # an asset that fails to load costs this scene only
            skipped.append({"key": key, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
            log.warning("%s: skipped: %s", key, exc)
            continue
        for fname, data in bench_files.items():
            atomic_write_bytes(out / "scenes" / key / fname, data)
        write_scene_glb(out / "gt" / f"{key}.glb", extra["meshes"])
        from datagen.sample import encode_npz

        atomic_write_bytes(out / "gt" / f"{key}.npz", encode_npz(**{k: np.asarray(v, np.uint8).reshape(-1, 3) for k, v in extra["voxels"].items()}))
        views_taken[sid] = views_taken.get(sid, 0) + 1
        scenes.append({"key": key, "scene_id": sid, "view": meta.get("view", 0), "source": meta.get("source", "random"),
                       "instance_ids": [a["index"] for a in extra["assets"]], "assets": extra["assets"],
                       "stacked_share": stacked_share(meta)})
        bar.update(1)
    bar.close()
    if not scenes:
        raise EvalError(f"--from {dataset}: no scene passed the filters ({len(skipped)} skipped"
                        + (f"; first reason: {skipped[0]['reason']}" if skipped else "") + ")")
    write_prediction_info(out / "gt", "view", "ground-truth")
    asset_lines = sorted({a["uid"] for s in scenes for a in s["assets"]} | {a["sha256"] for s in scenes for a in s["assets"]})
    atomic_write_text(out / "assets.txt", "".join(x + "\n" for x in asset_lines))
    listed = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "bench.json" and not p.name.startswith("."))
    manifest = {
        "format": BENCH_FORMAT,
        "name": name or out.name,
        "generator": {"package": "iscene", "version": __version__},
        "source": {"dataset": info.get("name"), "path": str(dataset.resolve()), "dataset_json_sha256": file_sha256(dataset / "dataset.json"),
                   "generator": info.get("generator")},
        "options": {"n": n, "views": views, "split": split, "min_stacked": min_stacked},
        "scenes": scenes,
        "skipped": skipped,
        "assets": sorted({(a["uid"], a["sha256"]) for s in scenes for a in s["assets"]}),
        "files": {str(p.relative_to(out)): file_sha256(p) for p in listed},
    }
    manifest["assets"] = [{"uid": u, "sha256": h} for u, h in manifest["assets"]]
    atomic_write_text(out / "bench.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _default_resolver(info: dict) -> AssetResolver:
    """No --assets: the built-in procedural catalog (what ``iscene-datagen --procedural`` uses), of the
    size the dataset was made with (its config lists the catalog's asset hashes)."""
    import os

    from datagen.layout_cli import procedural_catalog

    cache = Path(os.environ.get("ISCENE_CACHE", Path.home() / ".cache" / "iscene"))
    found = sorted(p.parent for p in cache.glob("procedural_n*_s*/manifest.parquet"))
    if found:  # every built-in catalog made so far (a dataset may use a subset of one: --exclude-assets)
        return AssetResolver(found)
    n = len(((info.get("config") or {}).get("source_config") or {}).get("assets_sha256") or []) or 200
    return AssetResolver([Path(procedural_catalog(n))])


def _read_manifest(root: Path) -> dict:
    root = Path(root)
    if not root.is_dir():
        raise EvalError(f"bench {root}: not a folder")
    path = root / "bench.json"
    if not path.is_file():
        raise EvalError(f"bench {root}: no bench.json (made by iscene-eval make-bench?)")
    try:
        from iscene_core.shards.format import MAX_DATASET_JSON_BYTES
        from iscene_core.shards.safejson import load_bounded

        manifest = load_bounded(path, MAX_DATASET_JSON_BYTES)  # untrusted: size and nesting bounded (BadJSON is a ValueError)
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BENCH_FORMAT:
        raise EvalError(f"{path}: format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {BENCH_FORMAT!r}")
    return manifest


def verify_bench(root: Path) -> list[str]:
    """Problems found (empty = the bench is intact): missing, altered or unlisted files."""
    from iscene_core.shards import file_sha256

    root = Path(root)
    manifest = _read_manifest(root)
    problems = []
    files = manifest.get("files", {})
    for rel, sha in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif file_sha256(p) != sha:
            problems.append(f"{rel}: sha256 differs from bench.json (file altered)")
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file() and rel != "bench.json" and not p.name.startswith(".") and rel not in files:
            problems.append(f"{rel}: not listed in bench.json")
    return problems


def load_bench(root: Path) -> Bench:
    """The manifest and per-scene cameras (no hash check: run ``verify`` for that)."""
    root = Path(root)
    manifest = _read_manifest(root)
    bench = Bench(root=root, manifest=manifest)
    for s in manifest.get("scenes", []):
        key = s["key"]
        try:
            cam = json.loads((root / "scenes" / key / "camera.json").read_text())
        except (OSError, ValueError) as exc:
            raise EvalError(f"bench {root}: scene {key} camera.json unreadable ({exc})") from None
        bench.scenes.append(BenchScene(key=key, root=root, camera=cam, cam_to_grid=np.asarray(cam["cam_to_grid"], np.float64),
                                       resolution=int(cam["resolution"]), up_view=np.asarray(cam["up_view"], np.float64),
                                       instance_ids=[int(i) for i in s["instance_ids"]]))
    return bench
