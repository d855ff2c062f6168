"""Constants of the shard format (``iscene-shard/1``) and the few pure helpers that define it."""

from __future__ import annotations

import hashlib
import json

FORMAT = "iscene-shard/1"

# The five files of one sample (SHARD_FORMAT.md, "One sample = one rendered view of one scene").
REQUIRED_FILES = ("rgb.png", "inst.png", "depth.npy", "vox.npz", "meta.json")

# Voxel coordinates are stored as uint8, so a grid can have at most 255 cells a side; 64 is TRELLIS's.
MAX_GRID_RESOLUTION = 255

# Limits on files that come from outside, checked before anything is allocated from them.
MAX_META_BYTES = 4 << 20          # a meta.json of 4 MiB already describes thousands of instances
MAX_DATASET_JSON_BYTES = 256 << 20  # a dataset.json lists shards; 256 MiB is millions of them
MAX_IMAGE_SIDE = 8192             # pixels per side of rgb.png / inst.png / depth.npy
MAX_INSTANCES = 4096


def sample_key(scene_id: str, view: int) -> str:
    """``__key__`` of a sample: ``<scene_id>_v<view>`` with a two-digit view."""
    return f"{scene_id}_v{int(view):02d}"


def config_sha256(config: dict) -> str:
    """Hash of a configuration dict (key order and non-JSON values normalised)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
