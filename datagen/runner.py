"""Run a dataset: shards of scenes, one task each (Ray, or in-process), resumable after a kill.

Shard ``k`` holds scenes ``[k*S, (k+1)*S)``; a shard is a pure function of (source, its scene
indices, configuration), so a killed run restarted with the same arguments keeps every finished
shard (its done record matches its bytes and configuration) and redoes the others from their own
seeds: the result is the same set of samples as an uninterrupted run. A bad asset, a failed layout
or a Blender crash costs that scene only (recorded in ``failures.jsonl``). ``dataset.json`` is
written last, atomically.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datagen.errors import SceneFailure
from datagen.ids import scene_id
from datagen.render import BlenderWorker, RenderCrash, RenderSettings
from datagen.render.worker import RenderError
from datagen.sample import FORMAT, MeshCache, SampleConfig, config_sha256, make_sample
from datagen.shard_writer import done_record_path, read_done_record, write_shard
from iscene_core.shards import write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    out: str
    name: str
    n: int
    seed: int = 0
    scenes_per_shard: int = 16
    workers: int = 1
    address: str | None = None
    use_ray: bool = True
    max_retries: int = 2
    recycle_after: int = 50
    render: RenderSettings = RenderSettings()
    sample: SampleConfig = field(default_factory=SampleConfig)
    source_config: dict = field(default_factory=dict)  # what made the specs (for the config hash)

    def identity(self) -> dict:
        """What determines the samples (not where or how fast they are made)."""
        d = asdict(self)
        for k in ("out", "workers", "address", "use_ray", "max_retries", "recycle_after"):
            d.pop(k)
        d["render"].pop("threads", None)
        d["render"].pop("device", None)
        d["render"].pop("crash_on_scene", None)
        return d


def shard_path(cfg: RunConfig, k: int) -> Path:
    return Path(cfg.out) / "shards" / f"{cfg.name}-{k:06d}.tar"


def make_shard(source, k: int, cfg: RunConfig) -> dict:
    """Render shard ``k`` (or return its done record if it is already complete and matches)."""
    path = shard_path(cfg, k)
    ident = config_sha256(cfg.identity())
    done = read_done_record(path)
    if done is not None and done.get("config_sha256") == ident:
        return done
    start, stop = k * cfg.scenes_per_shard, min(cfg.n, (k + 1) * cfg.scenes_per_shard)
    samples, failures, decisions = [], [], []
    meshes = MeshCache()
    with BlenderWorker(cfg.render, recycle_after=cfg.recycle_after) as worker:
        for idx in range(start, stop):
            sid = scene_id(idx)
            try:
                spec = source.spec(idx)
            except SceneFailure as exc:
                failures.append(exc.to_record(sid))
                continue
            except Exception as exc:  # a bad asset file, a bug in one scene: cost one scene
                failures.append({"scene_id": sid, "stage": "spec", "reason": f"{type(exc).__name__}: {exc}"})
                continue
            try:
                views = worker.render(spec)
            except (RenderCrash, RenderError) as exc:
                failures.append({"scene_id": sid, "stage": "render", "reason": str(exc)})
                continue
            scene_samples = []
            try:
                for v, render in enumerate(views):
                    files, decision = make_sample(spec, v, render, meshes, cfg.sample)
                    decisions.append(decision)
                    if files is not None:
                        scene_samples.append(files)
            except Exception as exc:
                failures.append({"scene_id": sid, "stage": "sample", "reason": f"{type(exc).__name__}: {exc}"})
                continue
            if not scene_samples:
                failures.append({"scene_id": sid, "stage": "visibility", "reason": "every view dropped (too few visible pixels)"})
            samples.extend(scene_samples)
    count, sha = write_shard(path, samples)
    record = {
        "shard": k,
        "file": str(path.relative_to(cfg.out)),
        "samples": count,
        "sha256": sha,
        "scenes": [start, stop],
        "failures": failures,
        "views_dropped": [d for d in decisions if not d["kept"]],
        "config_sha256": ident,
    }
    write_json_atomic(done_record_path(path), record)
    return record


def _clean_stale_tmp(out: Path) -> None:
    for p in (out / "shards").glob(".*.tmp*"):
        p.unlink(missing_ok=True)


def _assemble(cfg: RunConfig, records: list[dict], source_info: dict, elapsed_s: float) -> dict:
    out = Path(cfg.out)
    records = sorted(records, key=lambda r: r["shard"])
    failures = [f for r in records for f in r["failures"]]
    tmp = out / f".failures.jsonl.tmp{os.getpid()}"
    tmp.write_text("".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    os.replace(tmp, out / "failures.jsonl")
    from datagen import __version__ as version

    dropped = sum(len(r["views_dropped"]) for r in records)
    failed_ids = {f["scene_id"] for f in failures}
    info = {
        "name": cfg.name,
        "format": FORMAT,
        "generator": {"package": "iscene", "package_version": version, "config_sha256": config_sha256(cfg.identity())},
        "config": cfg.identity(),
        "seed": cfg.seed,
        "counts": {
            "scenes_requested": cfg.n,
            "scenes_ok": cfg.n - len(failed_ids),
            "scenes_failed": len(failed_ids),
            "samples": sum(r["samples"] for r in records),
            "views_dropped": dropped,
            "shards": len(records),
        },
        "shards": [{"file": r["file"], "samples": r["samples"], "sha256": r["sha256"]} for r in records],
        "shard_pattern": f"shards/{cfg.name}-{{000000..{len(records) - 1:06d}}}.tar" if records else None,
        "source_info": source_info,
        "last_run_seconds": round(elapsed_s, 2),
    }
    write_json_atomic(out / "dataset.json", info)
    return info


def run_dataset(source, cfg: RunConfig, source_info: dict | None = None, progress: bool = True) -> dict:
    """Make (or finish) the dataset in ``cfg.out``; returns the content of dataset.json."""
    from tqdm import tqdm

    out = Path(cfg.out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out)
    n_shards = (cfg.n + cfg.scenes_per_shard - 1) // cfg.scenes_per_shard
    ident = config_sha256(cfg.identity())
    records, pending = [], []
    for k in range(n_shards):
        done = read_done_record(shard_path(cfg, k))
        (records if done is not None and done.get("config_sha256") == ident else pending).append(done if done else k)
    records = [r for r in records if isinstance(r, dict)]
    pending = [k for k in pending if isinstance(k, int)]
    t0 = time.time()
    done_scenes = sum(r["scenes"][1] - r["scenes"][0] for r in records)
    bar = tqdm(total=cfg.n, initial=done_scenes, desc=f"datagen {cfg.name}", unit="scene", disable=not progress)
    failed_shards = []
    if pending and cfg.use_ray:
        import ray

        if not ray.is_initialized():
            if cfg.address:
                ray.init(address=cfg.address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, cfg.workers), include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=True)(make_shard)
        src_ref = ray.put(source)
        refs = {task.remote(src_ref, k, cfg): k for k in pending}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            k = refs.pop(ready[0])
            try:
                rec = ray.get(ready[0])
            except Exception as exc:  # retries exhausted: the shard is missing, the run is not lost
                log.error("shard %d failed after %d retries: %s", k, cfg.max_retries, exc)
                failed_shards.append({"shard": k, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            records.append(rec)
            bar.update(rec["scenes"][1] - rec["scenes"][0])
            bar.set_postfix(samples=sum(r["samples"] for r in records), failed=sum(len(r["failures"]) for r in records))
    else:
        for k in pending:
            rec = make_shard(source, k, cfg)
            records.append(rec)
            bar.update(rec["scenes"][1] - rec["scenes"][0])
            bar.set_postfix(samples=sum(r["samples"] for r in records), failed=sum(len(r["failures"]) for r in records))
    bar.close()
    if failed_shards:
        raise RuntimeError(f"{len(failed_shards)} shard(s) failed after retries: {failed_shards}; rerun the same command to resume")
    return _assemble(cfg, records, source_info or {}, time.time() - t0)
