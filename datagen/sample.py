"""Spec + rendered view -> the files of one shard sample (SHARD_FORMAT.md, `iscene-shard/1`).

Voxels are made here, in the view frame (always) and the world frame (when asked), from the same
triangles the renderer drew (``assets_manifest.load_mesh``). ``cam_to_grid`` is fitted to the union
of all instances' vertices in camera coordinates, so every instance of a view shares one grid and
the scene grid is the union of the instance grids.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import trimesh
from PIL import Image

from datagen.raster import rasterize
from datagen.voxelize import voxelize_surface
from iscene_core import space
from iscene_core.shards import FORMAT, config_sha256, sample_key  # noqa: F401  (config_sha256 re-exported)



@dataclass(frozen=True)
class SampleConfig:
    dataset: str = "dataset"
    resolution: int = 64
    space: str = "view"  # view | world | both
    min_visible_pixels: int = 16
    png_compress_level: int = 1
    render_meta: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)


class MeshCache:
    """World-independent geometry per asset file, loaded once per worker through the one loader."""

    def __init__(self, max_items: int = 256):
        self._cache: dict[str, trimesh.Trimesh] = {}
        self.max_items = max_items

    def get(self, path: str) -> trimesh.Trimesh:
        if path not in self._cache:
            from assets_manifest import load_mesh

            if len(self._cache) >= self.max_items:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = load_mesh(path)
        return self._cache[path]


def encode_png(arr: np.ndarray, level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def encode_npz(**arrays: np.ndarray) -> bytes:
    """An uncompressed .npz (np.load reads it) with fixed zip timestamps, so the same arrays always
    give the same bytes and shards are reproducible (np.savez stamps the current time)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def _grid_voxels(transform: np.ndarray, world_verts: list[np.ndarray], faces: list[np.ndarray], R: int):
    per = [voxelize_surface(space.transform_points(transform, v), f, R) for v, f in zip(world_verts, faces)]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in per])]).astype(np.int64)
    coords = np.concatenate(per) if per else np.zeros((0, 3), np.uint8)
    scene = np.unique(coords, axis=0).astype(np.uint8) if len(coords) else np.zeros((0, 3), np.uint8)
    return scene, offsets, coords.astype(np.uint8)


def make_sample(spec: dict, view: int, render: dict, meshes: MeshCache, cfg: SampleConfig) -> tuple[dict | None, dict]:
    """Files of one sample, or ``(None, record)`` when the view is dropped (record says why).

    The second value is always a small record of the decision (kept / dropped, pixel counts).
    """
    cam = spec["cameras"][view]
    K, w2c = np.asarray(cam["K"]), np.asarray(cam["world_to_cam"])
    W, H = int(cam["width"]), int(cam["height"])
    inst_map = render["inst"]
    if inst_map.shape != (H, W):
        raise ValueError(f"render size {inst_map.shape} does not match camera {H}x{W}")
    world_verts, faces = [], []
    for inst in spec["instances"]:
        m = meshes.get(inst["path"])
        world_verts.append(space.transform_points(inst["object_to_world"], m.vertices))
        faces.append(np.asarray(m.faces))
    n = len(spec["instances"])
    counts = np.bincount(inst_map.ravel(), minlength=n + 1)[: n + 1]
    amodal = np.array([rasterize(K, w2c, v, f, W, H).sum() for v, f in zip(world_verts, faces)])
    decision = {"scene_id": spec["scene_id"], "view": view, "mask_pixels": counts[1:].tolist(), "amodal_pixels": amodal.tolist()}
    small = [i + 1 for i in range(n) if counts[i + 1] < cfg.min_visible_pixels]
    if small:
        decision.update(kept=False, reason=f"instances {small} have fewer than {cfg.min_visible_pixels} visible pixels")
        return None, decision
    decision["kept"] = True
    R = cfg.resolution
    cam_verts = [space.transform_points(w2c, v) for v in world_verts]
    cam_to_grid = space.fit_cam_to_grid(np.concatenate(cam_verts))
    scene, offsets, coords = _grid_voxels(cam_to_grid @ w2c, world_verts, faces, R)
    vox = {"scene": scene, "inst_offsets": offsets, "inst_coords": coords}
    grid = {"resolution": R, "cam_to_grid": cam_to_grid.tolist()}
    if cfg.space in ("world", "both"):
        world_to_grid = space.fit_world_to_grid(np.concatenate(world_verts))
        ws, wo, wc = _grid_voxels(world_to_grid, world_verts, faces, R)
        vox.update(world_scene=ws, world_inst_offsets=wo, world_inst_coords=wc)
        grid["world_to_grid"] = world_to_grid.tolist()
    elif cfg.space != "view":
        raise ValueError(f"space must be view, world or both, got {cfg.space!r}")
    meta = {
        "format": FORMAT,
        "dataset": cfg.dataset,
        "scene_id": spec["scene_id"],
        "view": view,
        "seed": spec["seed"],
        "source": spec.get("source", "random"),
        "camera": {"K": K.tolist(), "world_to_cam": w2c.tolist(), "width": W, "height": H},
        "grid": grid,
        "instances": [
            {
                "index": inst["index"],
                "asset": {"uid": inst["uid"], "source": inst.get("asset_source", "unknown"), "sha256": inst["sha256"]},
                "object_to_world": inst["object_to_world"],
                "world_aabb": inst["world_aabb"],
                "mask_pixels": int(counts[i + 1]),
                "visible_fraction": float(min(1.0, counts[i + 1] / amodal[i])) if amodal[i] > 0 else 0.0,
                "support": inst["support"],
                # "authored" (the file's own materials), "simple", or "fallback: <why>" (datagen/render/authored.py)
                "materials": (render.get("materials") or [None] * n)[i],
            }
            for i, inst in enumerate(spec["instances"])
        ],
        "relations": spec.get("relations", []),
        "render": cfg.render_meta,
        "generator": cfg.generator,
    }
    if "room" in spec:
        meta["room"] = spec["room"]
    files = {
        "__key__": sample_key(spec['scene_id'], view),
        "rgb.png": encode_png(render["rgb"], cfg.png_compress_level),
        "inst.png": encode_png(inst_map.astype(np.uint16), cfg.png_compress_level),
        "depth.npy": encode_npy(render["depth"].astype(np.float32)),
        "vox.npz": encode_npz(**vox),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }
    return files, decision

