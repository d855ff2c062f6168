"""Per-sample validation: a sample is checked against the contract before anything uses it.

The trainer must never learn from a broken sample and the tools must never allocate what a broken
file claims (a ``grid.resolution`` of 3000 is a 27 GB dense grid). :func:`validate_sample` decodes a
raw sample (``{extension: bytes}``) with every size checked first and returns the decoded arrays,
or raises :class:`SampleError` naming the sample and the problem. Geometric agreement between masks,
depth and voxels is the verifier's job (``iscene-datagen verify``); this is the cheap, always-on part.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image

from iscene_core.shards.format import (FORMAT, MAX_GRID_RESOLUTION, MAX_IMAGE_SIDE, MAX_INSTANCES, MAX_META_BYTES,
                                       REQUIRED_FILES)
from iscene_core.shards.safejson import BadJSON, loads_bounded, require_dict

MAX_VOX_MEMBER_BYTES = 256 << 20
_VOX_SETS = {"view": ("scene", "inst_offsets", "inst_coords"),
             "world": ("world_scene", "world_inst_offsets", "world_inst_coords")}


class SampleError(ValueError):
    """A sample that breaks the contract; ``key`` and ``reason`` are kept for counting and logs."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"sample {key}: {reason}")
        self.key, self.reason = key, reason


def _image(data: bytes, key: str, name: str, size: tuple[int, int]) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise SampleError(key, f"{name} does not decode ({type(exc).__name__})") from None
    if im.format != "PNG":
        raise SampleError(key, f"{name} is {im.format}, expected PNG")
    if im.size != size:
        raise SampleError(key, f"{name} is {im.size[0]}x{im.size[1]}, meta.camera says {size[0]}x{size[1]}")
    try:
        im.load()
    except Exception as exc:
        raise SampleError(key, f"{name} is corrupt ({type(exc).__name__}: {exc})") from None
    return im


def _npz(data: bytes, key: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if info.file_size > MAX_VOX_MEMBER_BYTES:
                    raise SampleError(key, f"vox.npz member {info.filename} is {info.file_size} bytes")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(key, f"vox.npz does not decode ({type(exc).__name__}: {exc})") from None


def _check_grid(vox: dict, names: tuple[str, str, str], n: int, R: int, key: str) -> None:
    scene_k, offs_k, coords_k = names
    for k, dt in ((scene_k, np.uint8), (offs_k, np.int64), (coords_k, np.uint8)):
        if k not in vox:
            raise SampleError(key, f"vox.npz has no {k!r}")
        if vox[k].dtype != dt:
            raise SampleError(key, f"vox.npz[{k}] is {vox[k].dtype}, expected {np.dtype(dt).name}")
    coords, offs, scene = vox[coords_k], vox[offs_k], vox[scene_k]
    if coords.ndim != 2 or coords.shape[1] != 3 or scene.ndim != 2 or scene.shape[1] != 3:
        raise SampleError(key, f"{coords_k} / {scene_k} must be (M, 3)")
    if offs.shape != (n + 1,) or offs[0] != 0 or np.any(np.diff(offs) < 0) or offs[-1] != len(coords):
        raise SampleError(key, f"{offs_k} must be {n + 1} non-decreasing offsets from 0 to {len(coords)}")
    for k, c in ((coords_k, coords), (scene_k, scene)):
        if len(c) and int(c.max()) >= R:
            raise SampleError(key, f"{k} has a coordinate {int(c.max())} outside the {R}^3 grid")


def validate_sample(raw: dict, expected_resolution: int | None = None, spaces: tuple[str, ...] = ("view",),
                    need_depth: bool = False) -> dict:
    """Decode and check one raw sample; returns ``{key, meta, rgb, inst, vox[, depth]}``.

    ``expected_resolution`` is the grid the consumer's model needs (the trainer's 64): a sample with
    another grid is an error rather than a silent reshape. ``spaces`` lists the voxel frames the
    consumer reads (``view``, ``world``).
    """
    key = str(raw.get("__key__", "?"))
    missing = [f for f in REQUIRED_FILES if f not in raw and (f != "depth.npy" or need_depth)]
    if missing:
        raise SampleError(key, f"missing files {missing}")
    try:
        meta = require_dict(loads_bounded(raw["meta.json"], MAX_META_BYTES, "meta.json"), "meta.json")
    except BadJSON as exc:
        raise SampleError(key, str(exc)) from None
    if meta.get("format") != FORMAT:
        raise SampleError(key, f"meta.format is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        cam, grid, insts = meta["camera"], meta["grid"], meta["instances"]
        W, H, R = int(cam["width"]), int(cam["height"]), int(grid["resolution"])
        n = len(insts)
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleError(key, f"meta.json lacks camera/grid/instances ({type(exc).__name__}: {exc})") from None
    if not (0 < W <= MAX_IMAGE_SIDE and 0 < H <= MAX_IMAGE_SIDE):
        raise SampleError(key, f"camera {W}x{H} outside 1..{MAX_IMAGE_SIDE} pixels")
    if not 1 <= R <= MAX_GRID_RESOLUTION:
        raise SampleError(key, f"grid.resolution {R} outside 1..{MAX_GRID_RESOLUTION}")
    if expected_resolution is not None and R != expected_resolution:
        raise SampleError(key, f"grid.resolution {R}, the model needs {expected_resolution}")
    if not 1 <= n <= MAX_INSTANCES:
        raise SampleError(key, f"{n} instances (expected 1..{MAX_INSTANCES})")
    rgb = np.asarray(_image(raw["rgb.png"], key, "rgb.png", (W, H)).convert("RGB"))
    inst_im = _image(raw["inst.png"], key, "inst.png", (W, H))
    if inst_im.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise SampleError(key, f"inst.png mode {inst_im.mode}, expected 16-bit")
    inst = np.asarray(inst_im).astype(np.uint16)
    ids = np.unique(inst)
    if int(ids.max(initial=0)) > n:
        raise SampleError(key, f"inst.png has instance id {int(ids.max())} but meta lists {n} instances")
    vox = _npz(raw["vox.npz"], key)
    for s in spaces:
        if s not in _VOX_SETS:
            raise ValueError(f"unknown voxel space {s!r}")
        if s == "world" and "world_scene" not in vox:
            raise SampleError(key, "no world-frame voxels (make the data with `iscene-datagen --space both`)")
        _check_grid(vox, _VOX_SETS[s], n, R, key)
    out = {"key": key, "meta": meta, "rgb": rgb, "inst": inst, "vox": vox}
    if need_depth:
        try:
            depth = np.load(io.BytesIO(raw["depth.npy"]), allow_pickle=False)
        except Exception as exc:
            raise SampleError(key, f"depth.npy does not decode ({type(exc).__name__})") from None
        if depth.shape != (H, W) or depth.dtype != np.float32 or not np.isfinite(depth).all():
            raise SampleError(key, f"depth.npy is {depth.shape} {depth.dtype}, expected finite ({H}, {W}) float32")
        out["depth"] = depth
    return out
