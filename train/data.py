"""Training data: mixed, shuffled, validated, seekable streams of scenes from WebDataset shards.

Stages (each source of ``--mix`` separately, then mixed):

    shard order (seeded per epoch, split by rank and worker)
      -> samples of one shard (sha256 checked on first open; ``train.shard_io``)
      -> seeded shuffle buffer
      -> validation (``iscene_core.shards.validate_sample``: a bad sample is skipped and counted,
         too many stop the run naming shard and key; a source with nothing usable stops it)
      -> mix (seeded choice by weight, each source resampled so its share holds at any size)
      -> decode (crops, occupancy or cached latents)  -> collate (pad instances)

Every random choice comes from generators seeded by (seed, rank, worker, source, epoch), and the
whole state of a worker's stream -- per source: epoch, shard, samples read in that shard, what sits
in the shuffle buffer and the generators' states; the mixing generator; the batch counter -- is a
small JSON dict attached to each batch (``batch["position"]``). A checkpoint stores the last one
of every worker of every rank; a resumed run restores it and *seeks* (shard offsets, headers
only) instead of replaying earlier batches, and continues with exactly the batches an uninterrupted
run would have made. Each DataLoader worker makes whole batches and the loader takes them
round-robin, which is also deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator

import numpy as np
import torch

from iscene_core import space
from iscene_core.space import GRID_RESOLUTION
from iscene_core.conditioning import IMAGE_SIZE, crop_scene, instance_image
from iscene_core.shards import SampleError, grid_keys, parse_mix, resolve, scene_and_instance_coords, validate_sample
from iscene_core.shards.registry import DatasetEntry
from train.shard_io import READ_ERRORS, DataError, read_shard, verify_shard

MIN_SEEN_FOR_BAD_FRACTION = 20  # a bad fraction is judged only once this many samples were read


@dataclass(frozen=True)
class DataConfig:
    """What the data pipeline needs; made from a TrainConfig by :meth:`from_train` (never copied by hand)."""

    mix: str
    batch_size: int = 2  # scene groups per batch (per rank)
    max_instances: int = 6
    image_size: int = IMAGE_SIZE
    space: str = "view"  # view | world
    shuffle_buffer: int = 64
    seed: int = 0
    num_workers: int = 0
    resolution: int = GRID_RESOLUTION
    verify: bool = True
    max_bad_fraction: float = 0.05
    instance_view: str = "crop"  # crop (TRELLIS) | masked-frame (iscene_core.conditioning.instance_image)
    latents: str = "encode"  # encode (occupancy grids in the batch) | cache (cached latents in the batch)
    encoder_id: str | None = None  # which encoder's latent cache to read (train.latent_cache.encoder_id)

    @classmethod
    def from_train(cls, cfg, **overrides: Any) -> "DataConfig":
        """The data fields of a TrainConfig (same names), the crop size resolved, plus ``overrides``."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        values["image_size"] = cfg.crop_size
        if values.get("latents") not in ("encode", "cache"):
            values.pop("latents", None)  # "auto" is decided by the trainer, which passes it in overrides
        return cls(**{**values, **overrides})


def _rng(*keys) -> np.random.Generator:
    words = [int(k) if isinstance(k, (int, np.integer)) else int.from_bytes(str(k).encode()[:8].ljust(8, b"\0"), "little") for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


class BadSampleCounter:
    """Samples read vs rejected in one worker; raises DataError above the allowed fraction."""

    def __init__(self, max_fraction: float, seen: int = 0, bad: int = 0):
        self.max_fraction, self.seen, self.bad = max_fraction, seen, bad
        self.events: list[dict] = []  # since the last batch: {"shard", "key", "reason"}

    def ok(self) -> None:
        self.seen += 1

    def reject(self, shard: str, key: str, reason: str) -> None:
        self.seen += 1
        self.bad += 1
        self.events.append({"shard": shard, "key": key, "reason": reason})
        if self.seen >= MIN_SEEN_FOR_BAD_FRACTION and self.bad > self.max_fraction * self.seen:
            raise DataError(f"{self.bad} of {self.seen} samples read were rejected, more than --max-bad-fraction "
                            f"{self.max_fraction}; last: shard {shard}, key {key}: {reason}")

    def take_events(self) -> list[dict]:
        ev, self.events = self.events, []
        return ev


class SourceStream:
    """Infinite stream of validated samples of one dataset for one (rank, worker) part; seekable.

    ``state()`` returns a JSON-able dict from which ``SourceStream(..., state=...)`` continues with
    the same samples: the shuffle buffer is stored as (shard position, sample index) pairs and
    re-read on restore.
    """

    def __init__(self, entry: DatasetEntry, cfg: DataConfig, part: int, parts: int, counter: BadSampleCounter,
                 state: dict | None = None):
        if not entry.shards:
            raise DataError(f"dataset {entry.name!r} has no shards")
        self.entry, self.cfg, self.part, self.parts, self.counter = entry, cfg, part, parts, counter
        self.sha = dict(zip(entry.shards, entry.shard_sha256)) if cfg.verify else {}
        s = state or {}
        self.epoch, self.pos, self.offset = s.get("epoch", 0), s.get("pos", 0), s.get("offset", 0)
        self.valid_in_epoch, self.read_in_epoch = s.get("valid_in_epoch", 0), s.get("read_in_epoch", 0)
        self._start_epoch(rng_state=s.get("rng"))
        self.buf: list[tuple[int, int, dict]] = self._reload_buffer(s.get("buffer", []))
        self._reader: Iterator | None = None

    # -- epoch and shard bookkeeping --
    def _start_epoch(self, rng_state: dict | None = None) -> None:
        shards = self.entry.shards
        order = _rng(self.cfg.seed, self.entry.name, self.epoch).permutation(len(shards))
        self.mine = [shards[i] for i in order[self.part::self.parts]] or [shards[order[self.part % len(shards)]]]
        self.rng = _rng(self.cfg.seed, self.entry.name, self.epoch, self.part, "buffer")
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state

    def _open(self, url: str, start: int) -> Iterator[tuple[int, dict]]:
        verify_shard(url, self.sha.get(url))
        return read_shard(url, start)

    def _reload_buffer(self, entries: list) -> list[tuple[int, int, dict]]:
        """Re-read the samples a checkpointed shuffle buffer held (a few shards at most)."""
        wanted: dict[int, set[int]] = {}
        for pos, idx in entries:
            wanted.setdefault(pos, set()).add(idx)
        found: dict[tuple[int, int], dict] = {}
        for pos, idxs in wanted.items():
            for idx, raw in self._open(self.mine[pos], min(idxs)):
                if idx in idxs:
                    found[(pos, idx)] = raw
                if idx >= max(idxs):
                    break
        missing = [e for e in entries if tuple(e) not in found]
        if missing:
            raise DataError(f"dataset {self.entry.name!r}: the checkpoint's shuffle buffer lists samples {missing[:3]} that the "
                            "shards no longer hold (the dataset changed since the checkpoint)")
        return [(pos, idx, found[(pos, idx)]) for pos, idx in entries]

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "offset": self.offset, "buffer": [[p, i] for p, i, _ in self.buf],
                "rng": self.rng.bit_generator.state, "valid_in_epoch": self.valid_in_epoch, "read_in_epoch": self.read_in_epoch}

    # -- reading --
    def _fill(self) -> bool:
        """Read one raw sample into the buffer; False when this epoch's shards are exhausted."""
        while self.pos < len(self.mine):
            url = self.mine[self.pos]
            if self._reader is None:
                self._reader = self._open(url, self.offset)
            try:
                idx, raw = next(self._reader)
            except StopIteration:
                pass
            except READ_ERRORS as exc:
                self.counter.reject(url, f"after sample {self.offset}", f"shard unreadable ({type(exc).__name__}: {exc})")
            else:
                self.offset = idx + 1
                self.read_in_epoch += 1
                self.buf.append((self.pos, idx, raw))
                return True
            self._reader, self.pos, self.offset = None, self.pos + 1, 0
        return False

    def _pop(self) -> tuple[int, int, dict] | None:
        while len(self.buf) < self.cfg.shuffle_buffer and self._fill():
            pass
        if not self.buf:
            return None
        return self.buf.pop(int(self.rng.integers(len(self.buf))))

    def __next__(self) -> dict:
        """The next valid sample (validated and decoded by ``validate_sample``), with ``__shard__``."""
        while True:
            item = self._pop()
            if item is None:  # epoch done
                if self.read_in_epoch == 0:
                    raise DataError(f"dataset {self.entry.name!r}: its shards hold no sample")
                if self.valid_in_epoch == 0:
                    raise DataError(f"dataset {self.entry.name!r}: every one of the {self.read_in_epoch} samples read was rejected "
                                    "by validation (see the reasons in log.jsonl / the error above)")
                self.epoch, self.pos, self.offset, self.valid_in_epoch, self.read_in_epoch = self.epoch + 1, 0, 0, 0, 0
                self._start_epoch()
                continue
            pos, _, raw = item
            try:
                sample = validate_sample(raw, expected_resolution=self.cfg.resolution, spaces=(self.cfg.space,))
            except SampleError as exc:
                self.counter.reject(self.mine[pos], exc.key, exc.reason)
                continue
            self.counter.ok()
            self.valid_in_epoch += 1
            sample["__shard__"], sample["__key__"] = self.mine[pos], sample["key"]
            return sample

    def __iter__(self):
        return self


class MixedStream:
    """(source name, validated sample) drawn by weight; ``state()`` / ``state=`` as SourceStream."""

    def __init__(self, cfg: DataConfig, part: int, parts: int, state: dict | None = None):
        s = state or {}
        self.mix = parse_mix(cfg.mix)
        self.counter = BadSampleCounter(cfg.max_bad_fraction, s.get("seen", 0), s.get("bad", 0))
        src = s.get("sources", {})
        self.streams = {n: SourceStream(resolve(n), cfg, part, parts, self.counter, src.get(n)) for n, _ in self.mix}
        self.names = [n for n, _ in self.mix]
        self.p = np.array([w for _, w in self.mix])
        self.rng = _rng(cfg.seed, part, "mix")
        if "mix_rng" in s:
            self.rng.bit_generator.state = s["mix_rng"]

    def __next__(self) -> tuple[str, dict]:
        n = self.names[int(self.rng.choice(len(self.names), p=self.p))]
        return n, next(self.streams[n])

    def __iter__(self):
        return self

    def state(self) -> dict:
        return {"mix_rng": self.rng.bit_generator.state, "seen": self.counter.seen, "bad": self.counter.bad,
                "sources": {n: s.state() for n, s in self.streams.items()}}


def mixed_stream(cfg: DataConfig, part: int, parts: int) -> MixedStream:
    return MixedStream(cfg, part, parts)


def source_stream(shards: tuple[str, ...], name: str, seed: int, part: int, parts: int, buffer: int) -> Iterator[dict]:
    """Validated samples of one shard list for one part (the view of SourceStream used by tests/tools)."""
    entry = DatasetEntry(name, tuple(shards), 0, {}, ())
    cfg = DataConfig(mix=name, seed=seed, shuffle_buffer=buffer, verify=False, max_bad_fraction=1.0)
    return SourceStream(entry, cfg, part, parts, BadSampleCounter(1.0))


def decode_sample(sample: dict, cfg: DataConfig, rng: np.random.Generator) -> dict:
    """Crops and grids (or cached latents) of one validated sample, instances capped.

    Returns ``scene_image`` (3, S, S), ``inst_images`` [n x (3, S, S)], and either ``scene_occ``
    (R, R, R) bool + ``inst_occ`` [n x (R, R, R)] or ``scene_lat`` (8, 16, 16, 16) + ``inst_lat``
    [n x (8, 16, 16, 16)]; n = visible instances, at most ``max_instances`` (a seeded subset).
    """
    rgb, inst = sample["rgb"], sample["inst"].astype(np.int64)
    vox = sample["vox"]
    n = len(vox[grid_keys(cfg.space)[1]]) - 1
    ids = [int(i) for i in np.unique(inst) if 1 <= i <= n]
    if len(ids) > cfg.max_instances:
        ids = sorted(rng.choice(ids, size=cfg.max_instances, replace=False).tolist())
    out = {"key": sample["key"], "scene_image": crop_scene(rgb, cfg.image_size),
           "inst_images": [instance_image(rgb, inst == i, cfg.image_size, cfg.instance_view) for i in ids]}
    if cfg.latents == "cache":
        from train.latent_cache import read_latents

        scene_lat, inst_lat = read_latents(sample["__shard__"], sample["key"], cfg.space, cfg.encoder_id)
        out["scene_lat"] = torch.from_numpy(scene_lat)
        out["inst_lat"] = [torch.from_numpy(inst_lat[i - 1]) for i in ids]
    else:
        scene_coords, inst_coords = scene_and_instance_coords(vox, cfg.space)
        out["scene_occ"] = torch.from_numpy(space.coords_to_dense(scene_coords, cfg.resolution))
        out["inst_occ"] = [torch.from_numpy(space.coords_to_dense(inst_coords[i - 1], cfg.resolution)) for i in ids]
    return out


def collate(samples: list[dict], sources: list[str], cfg: DataConfig) -> dict:
    """Pad each scene group to ``max_instances`` instance slots.

    Shapes (B scenes, N = max_instances, S = image side, R = grid side):
    ``scene_image`` (B, 3, S, S), ``inst_images`` (B, N, 3, S, S), ``inst_valid`` (B, N) bool, and
    ``scene_occ`` (B, 1, R, R, R) + ``inst_occ`` (B, N, 1, R, R, R) float, or with cached latents
    ``scene_lat`` (B, 8, 16, 16, 16) + ``inst_lat`` (B, N, 8, 16, 16, 16); ``source``/``key`` lists.
    """
    B, N, S = len(samples), cfg.max_instances, cfg.image_size
    field = "lat" if cfg.latents == "cache" else "occ"
    first = samples[0][f"scene_{field}"]
    grid_shape = tuple(first.shape) if field == "lat" else (1, *first.shape)
    batch = {
        f"scene_{field}": torch.stack([s[f"scene_{field}"].float().reshape(grid_shape) for s in samples]),
        f"inst_{field}": torch.zeros(B, N, *grid_shape),
        "inst_valid": torch.zeros(B, N, dtype=torch.bool),
        "scene_image": torch.stack([s["scene_image"] for s in samples]),
        "inst_images": torch.zeros(B, N, 3, S, S),
        "source": sources,
        "key": [s["key"] for s in samples],
    }
    for b, s in enumerate(samples):
        for j, (img, g) in enumerate(zip(s["inst_images"], s[f"inst_{field}"])):
            batch["inst_images"][b, j] = img
            batch[f"inst_{field}"][b, j] = g.float().reshape(grid_shape)
            batch["inst_valid"][b, j] = True
    return batch


def batch_stream(cfg: DataConfig, part: int, parts: int, start_batch: int = 0, state: dict | None = None) -> Iterator[dict]:
    """Batches of one part, each with ``position`` (the stream state after it) and ``bad`` (rejections).

    ``state`` (a batch's ``position``) continues right after that batch by seeking. Without it,
    ``start_batch = k`` replays: the first k batches are read and validated but not decoded (the
    slow way, kept for checkpoints that have no position and as the benchmark's baseline).
    """
    stream = MixedStream(cfg, part, parts, (state or {}).get("stream"))
    k = (state or {}).get("batch", 0)
    while True:
        raws = [next(stream) for _ in range(cfg.batch_size)]
        if k >= start_batch:
            rng = _rng(cfg.seed, part, k, "instances")
            batch = collate([decode_sample(r, cfg, rng) for _, r in raws], [n for n, _ in raws], cfg)
            batch["position"] = {"batch": k + 1, "stream": stream.state()}
            batch["bad"] = stream.counter.take_events()
            batch["seen"] = stream.counter.seen
            yield batch
        k += 1


class ShardBatches(torch.utils.data.IterableDataset):
    """IterableDataset over whole batches; rank and worker pick disjoint parts of each source.

    ``positions[role]`` is the stream state of the original run's worker ``role`` (from a
    checkpoint). The loader takes worker batches round-robin from worker 0, so in a run resumed
    at batch k worker w plays the role of the original run's worker (w + k) mod nw.
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, start_batch: int = 0,
                 positions: list[dict | None] | None = None):
        super().__init__()
        self.cfg, self.rank, self.world_size, self.start_batch, self.positions = cfg, rank, world_size, start_batch, positions

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        role = (wid + self.start_batch) % nw
        part, parts = self.rank * nw + role, self.world_size * nw
        try:
            if self.positions is not None:
                for batch in batch_stream(self.cfg, part, parts, state=self.positions[role]):
                    batch["role"] = role
                    yield batch
            else:
                skip = max(0, -(-(self.start_batch - role) // nw))
                for batch in batch_stream(self.cfg, part, parts, skip):
                    batch["role"] = role
                    yield batch
        except DataError:
            raise
        except Exception as exc:  # keep worker failures one line for the CLI, with the sample's context
            raise DataError(f"data worker {wid} of rank {self.rank}: {type(exc).__name__}: {exc}") from exc


def check_sources(mix: str) -> list[DatasetEntry]:
    """Resolve every source of ``mix`` and refuse empty ones before anything is built."""
    entries = []
    for name, _ in parse_mix(mix):
        entry = resolve(name)
        if not entry.shards or entry.samples == 0:
            raise DataError(f"dataset {name!r} has {entry.samples} samples in {len(entry.shards)} shards: nothing to train on")
        entries.append(entry)
    return entries


def build_loader(mix: str, config: DataConfig | None = None, *, rank: int = 0, world_size: int = 1, start_batch: int = 0,
                 positions: list[dict | None] | None = None):
    """A DataLoader of batch dicts (see module docs); ``positions`` (or ``start_batch``) resumes exactly."""
    cfg = config or DataConfig(mix=mix)
    if cfg.mix != mix:
        cfg = DataConfig(**{**cfg.__dict__, "mix": mix})
    check_sources(mix)
    if positions is not None and len(positions) != max(1, cfg.num_workers):
        raise DataError(f"the checkpoint's data position was written with {len(positions)} data workers per process, this run "
                        f"has --num-workers {cfg.num_workers}: resume with --num-workers {len(positions) if len(positions) > 1 else 0}")
    ds = ShardBatches(cfg, rank, world_size, start_batch, positions)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.num_workers,
                                       persistent_workers=cfg.num_workers > 0, prefetch_factor=2 if cfg.num_workers else None)


def worker_message(exc: BaseException) -> str:
    """The one-line cause of an error, also when the DataLoader re-raised it with a worker's traceback."""
    lines = [l for l in str(exc).splitlines() if l.strip()]
    if not lines:
        return type(exc).__name__
    if not any(l.startswith("Original Traceback") for l in lines):
        return lines[0]
    head, sep, rest = lines[-1].partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() else lines[-1]

