"""Training data: mixed, shuffled, resumable streams of scenes from WebDataset shards.

Composable stages, each a generator:

    shard order (seeded per epoch, split by rank and worker)
      -> samples (webdataset's tar reader: local paths or any URL it streams)
      -> shuffle buffer (seeded)
      -> per-source infinite stream  -> mix (seeded choice by weight, resampling each source)
      -> decode (images, crops, occupancy)  -> batch (cap + pad instances)

Every random choice comes from generators seeded by (seed, rank, worker, source, epoch), so the
batch stream is a pure function of the configuration and the position: ``start_batch = k`` gives
exactly the batches ``k, k+1, ...`` of an uninterrupted run (the skipped ones are read but not
decoded). Each DataLoader worker makes whole batches; the loader takes them round-robin, which is
also deterministic.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from iscene_core import space
from iscene_core.conditioning import crop_instance, crop_scene
from iscene_core.shards import parse_mix, resolve


@dataclass(frozen=True)
class DataConfig:
    mix: str
    batch_size: int = 2  # scenes per batch (per rank)
    max_instances: int = 6
    image_size: int = 518
    space: str = "view"  # view | world
    shuffle_buffer: int = 64
    seed: int = 0
    num_workers: int = 0
    resolution: int = 64


def _rng(*keys) -> np.random.Generator:
    words = [int(k) if isinstance(k, (int, np.integer)) else int.from_bytes(str(k).encode()[:8].ljust(8, b"\0"), "little") for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def _tar_samples(url: str) -> Iterator[dict]:
    import webdataset as wds

    for sample in wds.tarfile_to_samples()([{"url": url}]):
        yield sample


def source_stream(shards: tuple[str, ...], name: str, seed: int, part: int, parts: int, buffer: int) -> Iterator[dict]:
    """Infinite stream of raw samples of one source for one (rank, worker) part."""
    if not shards:
        raise ValueError(f"dataset {name!r} has no shards")
    epoch = 0
    while True:
        order = _rng(seed, name, epoch).permutation(len(shards))
        mine = [shards[i] for i in order[part::parts]] or [shards[order[part % len(shards)]]]
        rng = _rng(seed, name, epoch, part, "buffer")
        buf: list[dict] = []
        for url in mine:
            for s in _tar_samples(url):
                buf.append(s)
                if len(buf) >= buffer:
                    yield buf.pop(int(rng.integers(len(buf))))
        while buf:
            yield buf.pop(int(rng.integers(len(buf))))
        epoch += 1


def mixed_stream(cfg: DataConfig, part: int, parts: int) -> Iterator[tuple[str, dict]]:
    """(source name, raw sample) drawn by weight: each source resampled, so ratios hold at any size."""
    mix = parse_mix(cfg.mix)
    streams = {n: source_stream(resolve(n).shards, n, cfg.seed, part, parts, cfg.shuffle_buffer) for n, _ in mix}
    names = [n for n, _ in mix]
    p = np.array([w for _, w in mix])
    rng = _rng(cfg.seed, part, "mix")
    while True:
        n = names[int(rng.choice(len(names), p=p))]
        yield n, next(streams[n])


def occupancy(coords: np.ndarray, offsets: np.ndarray, scene: np.ndarray, R: int) -> tuple[np.ndarray, list[np.ndarray]]:
    return space.coords_to_dense(scene, R), [space.coords_to_dense(coords[offsets[i]:offsets[i + 1]], R) for i in range(len(offsets) - 1)]


def decode_sample(raw: dict, cfg: DataConfig, rng: np.random.Generator) -> dict:
    """Scene image, instance crops and occupancy grids of one sample (instances capped)."""
    meta = json.loads(raw["meta.json"])
    rgb = np.asarray(Image.open(io.BytesIO(raw["rgb.png"])).convert("RGB"))
    inst = np.asarray(Image.open(io.BytesIO(raw["inst.png"]))).astype(np.int64)
    with np.load(io.BytesIO(raw["vox.npz"])) as z:
        if cfg.space == "view":
            scene, offs, coords = z["scene"], z["inst_offsets"], z["inst_coords"]
        elif cfg.space == "world":
            if "world_scene" not in z.files:
                raise ValueError(f"sample {raw['__key__']} has no world-frame voxels; make the data with --space both")
            scene, offs, coords = z["world_scene"], z["world_inst_offsets"], z["world_inst_coords"]
        else:
            raise ValueError(f"space must be view or world, got {cfg.space!r}")
    n = len(offs) - 1
    ids = [i for i in range(1, n + 1) if (inst == i).any()]
    if len(ids) > cfg.max_instances:
        ids = sorted(rng.choice(ids, size=cfg.max_instances, replace=False).tolist())
    scene_occ, inst_occ = occupancy(coords, offs, scene, cfg.resolution)
    return {
        "key": raw["__key__"],
        "scene_image": crop_scene(rgb, cfg.image_size),
        "inst_images": [crop_instance(rgb, inst == i, cfg.image_size) for i in ids],
        "scene_occ": torch.from_numpy(scene_occ),
        "inst_occ": [torch.from_numpy(inst_occ[i - 1]) for i in ids],
    }


def collate(samples: list[dict], sources: list[str], cfg: DataConfig) -> dict:
    B, N, S, R = len(samples), cfg.max_instances, cfg.image_size, cfg.resolution
    batch = {
        "scene_occ": torch.stack([s["scene_occ"] for s in samples]).unsqueeze(1).float(),
        "inst_occ": torch.zeros(B, N, 1, R, R, R),
        "inst_valid": torch.zeros(B, N, dtype=torch.bool),
        "scene_image": torch.stack([s["scene_image"] for s in samples]),
        "inst_images": torch.zeros(B, N, 3, S, S),
        "source": sources,
        "key": [s["key"] for s in samples],
    }
    for b, s in enumerate(samples):
        for j, (img, occ) in enumerate(zip(s["inst_images"], s["inst_occ"])):
            batch["inst_images"][b, j] = img
            batch["inst_occ"][b, j, 0] = occ.float()
            batch["inst_valid"][b, j] = True
    return batch


def batch_stream(cfg: DataConfig, part: int, parts: int, start_batch: int = 0) -> Iterator[dict]:
    """Batches of this part; the first ``start_batch`` are read but not decoded (fast resume)."""
    stream = mixed_stream(cfg, part, parts)
    k = 0
    while True:
        raws = [next(stream) for _ in range(cfg.batch_size)]
        if k >= start_batch:
            rng = _rng(cfg.seed, part, k, "instances")
            yield collate([decode_sample(r, cfg, rng) for _, r in raws], [n for n, _ in raws], cfg)
        k += 1


class ShardBatches(torch.utils.data.IterableDataset):
    """IterableDataset over whole batches; rank and worker pick disjoint parts of each source."""

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, start_batch: int = 0):
        super().__init__()
        self.cfg, self.rank, self.world_size, self.start_batch = cfg, rank, world_size, start_batch

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        # The loader takes worker batches round-robin from worker 0, so in a run resumed at batch k
        # worker w plays the role of the original run's worker (w + k) mod nw, whose own batches
        # are role, role + nw, ...; it skips those below k. Same nw as the original run required.
        role = (wid + self.start_batch) % nw
        part, parts = self.rank * nw + role, self.world_size * nw
        skip = max(0, -(-(self.start_batch - role) // nw))
        yield from batch_stream(self.cfg, part, parts, skip)


def build_loader(mix: str, config: DataConfig | None = None, *, rank: int = 0, world_size: int = 1, start_batch: int = 0):
    """A DataLoader of batch dicts (see module docs); ``start_batch`` resumes exactly."""
    cfg = config or DataConfig(mix=mix)
    if cfg.mix != mix:
        cfg = DataConfig(**{**cfg.__dict__, "mix": mix})
    for name, _ in parse_mix(mix):
        resolve(name)  # fail early with a clear message for an unknown name
    ds = ShardBatches(cfg, rank, world_size, start_batch)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.num_workers,
                                       persistent_workers=cfg.num_workers > 0, prefetch_factor=2 if cfg.num_workers else None)
