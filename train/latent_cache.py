"""Latent cache: every grid of a dataset encoded once to the 8 x 16^3 latent, stored beside its shard.

    iscene-train cache-latents --mix 3dfront,rand25k --init TRELLIS-image-large [--space view]

Upstream TRELLIS trains its flow from precomputed latents; on-the-fly encoding (the default for
small runs) spends a 64^3 3D-conv encoder pass on every row of every step. For each shard
``shards/x-000000.tar`` this writes ``shards/x-000000.tar.latents-<space>-<encoder id>.npz`` with,
per sample key, ``<key>.scene`` (8, 16, 16, 16) and ``<key>.inst`` (N, 8, 16, 16, 16) float32 (the
encoder's posterior mean, fp32 with autocast off -- the same numbers the trainer computes on the
fly, tested). The encoder id is a hash of the encoder's weights, so a cache made with another
encoder is never read. Files are written under a temporary name and renamed, and shards whose
cache exists are skipped, so an interrupted run continues where it stopped. Samples that fail
validation are left out (training skips them anyway).
"""

from __future__ import annotations

import io
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from train.shard_io import READ_ERRORS, is_local, local_path, read_shard, verify_shard


def cache_path(shard: str, space: str, encoder_id: str) -> Path:
    """Where the latents of ``shard`` (a local shard path) live for this frame and encoder."""
    if not is_local(shard):
        raise ValueError(f"shard {shard}: latent caches are written beside local shards only")
    p = local_path(shard)
    return p.with_name(f"{p.name}.latents-{space}-{encoder_id}.npz")


def missing_caches(entries, space: str, encoder_id: str) -> list[str]:
    """Shards of ``entries`` (DatasetEntry list) without a cache for this encoder (remote shards count as missing)."""
    return [s for e in entries for s in e.shards if not is_local(s) or not cache_path(s, space, encoder_id).is_file()]


@lru_cache(maxsize=4)
def _open(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def read_latents(shard: str, key: str, space: str, encoder_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(scene (8, 16, 16, 16), instances (N, 8, 16, 16, 16)) float32 of one sample, by instance index - 1."""
    zf = _open(str(cache_path(shard, space, encoder_id)))
    try:
        scene = np.load(io.BytesIO(zf.read(f"{key}.scene.npy")), allow_pickle=False)
        inst = np.load(io.BytesIO(zf.read(f"{key}.inst.npy")), allow_pickle=False)
    except KeyError:
        raise FileNotFoundError(f"latent cache of {shard} has no sample {key}: rebuild it with `iscene-train cache-latents`") from None
    return scene, inst


def cache_shard(shard: str, sha256: str | None, encoder, space: str, encoder_id: str, device, batch_rows: int = 16,
                verify: bool = True) -> tuple[int, int]:
    """Encode every valid sample of one shard; returns (samples cached, samples skipped as invalid)."""
    import torch

    from iscene_core import space as vspace
    from iscene_core.shards import SampleError, scene_and_instance_coords, validate_sample
    from train.models import encode_latents

    target = cache_path(shard, space, encoder_id)
    if verify:
        verify_shard(shard, sha256)
    arrays: dict[str, np.ndarray] = {}
    cached = skipped = 0
    try:
        for _, raw in read_shard(shard):
            try:
                s = validate_sample(raw, expected_resolution=vspace.GRID_RESOLUTION, spaces=(space,))
            except SampleError:
                skipped += 1
                continue
            scene, instances = scene_and_instance_coords(s["vox"], space)
            grids = [vspace.coords_to_dense(c) for c in (scene, *instances)]
            lat = []
            for i in range(0, len(grids), batch_rows):
                occ = torch.from_numpy(np.stack(grids[i:i + batch_rows])).float().unsqueeze(1).to(device)
                lat.append(encode_latents(encoder, occ).cpu().numpy())
            lat = np.concatenate(lat)
            arrays[f"{s['key']}.scene"], arrays[f"{s['key']}.inst"] = lat[0], lat[1:]
            cached += 1
    except READ_ERRORS as exc:
        raise OSError(f"shard {shard}: unreadable ({type(exc).__name__}: {exc})") from None
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return cached, skipped


def cache_latents(cfg, device: str = "cpu", progress: bool = True) -> dict:
    """Cache every shard of ``cfg.mix`` for ``cfg``'s encoder; returns counts and the encoder id."""
    import torch

    from train.data import check_sources
    from train.models import build_encoder, encoder_id

    entries = check_sources(cfg.mix)
    encoder = build_encoder(cfg).eval().requires_grad_(False).to(device)
    eid = encoder_id(encoder)
    todo = [(s, sha) for e in entries for s, sha in zip(e.shards, e.shard_sha256 or [None] * len(e.shards))
            if not cache_path(s, cfg.space, eid).is_file()]
    done = sum(len(e.shards) for e in entries) - len(todo)
    cached = skipped = 0
    it = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc="cache-latents", unit="shard")
    with torch.no_grad():
        for shard, sha in it:
            c, k = cache_shard(shard, sha if cfg.verify else None, encoder, cfg.space, eid, device)
            cached, skipped = cached + c, skipped + k
    return {"encoder_id": eid, "shards_written": len(todo), "shards_already_cached": done, "samples": cached, "invalid_skipped": skipped}
