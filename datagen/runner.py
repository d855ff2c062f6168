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
from datagen.sample import FORMAT, MeshCache, SampleConfig, make_sample
from datagen.shard_writer import done_record_path, read_done_record, write_shard
from iscene_core.shards import DatasetError, config_sha256, load_dataset_json, write_dataset_json, write_json_atomic

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
        """What determines the samples (not where, how fast or how many are made).

        ``n`` is left out: scene ``i`` depends on (seed, i) only, so a larger ``--n`` with the same
        settings extends a dataset, and each shard's done record carries its own scene range.
        ``sample.generator`` is left out because it holds this very hash.
        """
        d = asdict(self)
        for k in ("out", "n", "workers", "address", "use_ray", "max_retries", "recycle_after"):
            d.pop(k)
        d["sample"].pop("generator", None)
        d["render"].pop("threads", None)
        d["render"].pop("device", None)
        d["render"].pop("crash_on_scene", None)
        return d

    def config_sha256(self) -> str:
        return config_sha256(self.identity())

    def shard_range(self, k: int) -> list[int]:
        return [k * self.scenes_per_shard, min(self.n, (k + 1) * self.scenes_per_shard)]


def shard_path(cfg: RunConfig, k: int) -> Path:
    return Path(cfg.out) / "shards" / f"{cfg.name}-{k:06d}.tar"


def make_shard(source, k: int, cfg: RunConfig) -> dict:
    """Render shard ``k`` (or return its done record if it is already complete and matches)."""
    path = shard_path(cfg, k)
    ident = cfg.config_sha256()
    done = _usable_done_record(cfg, k)
    if done is not None:
        return done
    start, stop = cfg.shard_range(k)
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


def _usable_done_record(cfg: RunConfig, k: int) -> dict | None:
    """Shard ``k``'s done record if its bytes, settings and scene range are what this run needs."""
    done = read_done_record(shard_path(cfg, k))
    if done is None or done.get("config_sha256") != cfg.config_sha256() or done.get("scenes") != cfg.shard_range(k):
        return None
    return done


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
        "generator": {"package": "iscene", "package_version": version, "config_sha256": cfg.config_sha256()},
        "config": cfg.identity(),
        "n": cfg.n,
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
    write_dataset_json(out, info)
    return info


def _init_ray(cfg: RunConfig) -> None:
    """Join the cluster the user named, or start a private local Ray.

    Without ``--address`` a private instance is started even on a node where ``ray start --head``
    already runs (``address="local"``): passing ``num_cpus`` to an existing cluster is refused by Ray,
    and joining one silently would share it with whatever else it runs. ``--address auto`` joins.
    """
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=max(1, cfg.workers), include_dashboard=False, log_to_driver=False)


def run_dataset(source, cfg: RunConfig, source_info: dict | None = None, progress: bool = True) -> dict:
    """Make (or finish, or extend) the dataset in ``cfg.out``; returns the content of dataset.json.

    Every shard ``0 .. ceil(n / S) - 1`` ends up either kept (its done record matches its bytes, the
    settings and its scene range) or made again; a shard that still fails after retries makes the
    run raise, after the shards that did finish are safely on disk.
    """
    from tqdm import tqdm

    out = Path(cfg.out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out)
    n_shards = (cfg.n + cfg.scenes_per_shard - 1) // cfg.scenes_per_shard
    records, pending = [], []
    for k in range(n_shards):
        done = _usable_done_record(cfg, k)
        if done is not None:
            records.append(done)
        else:
            pending.append(k)
    t0 = time.time()
    done_scenes = sum(r["scenes"][1] - r["scenes"][0] for r in records)
    bar = tqdm(total=cfg.n, initial=done_scenes, desc=f"datagen {cfg.name}", unit="scene", disable=not progress)

    def finished(rec: dict) -> None:
        records.append(rec)
        bar.update(rec["scenes"][1] - rec["scenes"][0])
        bar.set_postfix(samples=sum(r["samples"] for r in records), failed=sum(len(r["failures"]) for r in records))

    failed_shards = []
    if pending and cfg.use_ray:
        import ray

        _init_ray(cfg)
        task = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=True)(make_shard)
        src_ref = ray.put(source)
        refs = {task.remote(src_ref, k, cfg): k for k in pending}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            k = refs.pop(ready[0])
            try:
                finished(ray.get(ready[0]))
            except Exception as exc:  # retries exhausted: the shard is missing, the run is not lost
                log.error("shard %d failed after %d retries: %s", k, cfg.max_retries, exc)
                failed_shards.append({"shard": k, "reason": f"{type(exc).__name__}: {exc}"})
    else:
        for k in pending:
            finished(make_shard(source, k, cfg))
    bar.close()
    if failed_shards:
        raise RuntimeError(f"{len(failed_shards)} shard(s) failed after retries: {failed_shards}; rerun the same command to resume")
    return _assemble(cfg, records, source_info or {}, time.time() - t0)


# ------------------------------------------------------------------ the output folder's owner --

OWNED = ("shards", "dataset.json", "failures.jsonl", "run.json", "split.jsonl")


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _differences(a: dict, b: dict, limit: int = 6) -> str:
    fa, fb = _flat(a), _flat(b)
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    shown = ", ".join(f"{k}: {str(fa.get(k))[:40]} -> {str(fb.get(k))[:40]}" for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def claim_output(cfg: RunConfig, overwrite: bool = False) -> None:
    """Make ``cfg.out`` this run's, or refuse with a message that says why (``UsageError``).

    A rerun with the same settings continues or extends (a larger ``--n``). Other settings, or a
    smaller ``--n`` than the dataset already holds, would silently replace or shrink what is there:
    that needs ``--overwrite``, which removes only the files a dataset run owns. A non-empty folder
    that is not a dataset is never touched. Call with the folder's lock held.
    """
    import shutil

    from iscene_core.cli_family import UsageError

    out = Path(cfg.out)
    run_path = out / "run.json"
    current = json.loads(json.dumps(cfg.identity(), sort_keys=True, default=str))  # as it reads back from disk
    previous = None
    if run_path.is_file():
        try:
            previous = json.loads(run_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None  # written atomically, so only a hand edit breaks it; the done records decide
    elif (out / "dataset.json").is_file():  # a dataset made before run.json existed
        try:
            info = load_dataset_json(out, check_format=False)
            previous = {"identity": info.get("config"), "n": info.get("n", info["counts"].get("scenes_requested"))}
        except DatasetError:
            previous = None
    # "_*" are the run's own caches (3D-FRONT conversion), ".*" its lock and temporary files
    foreign = [p.name for p in out.iterdir() if p.name not in OWNED and not p.name.startswith((".", "_"))] if out.is_dir() else []
    ours = out.is_dir() and any((out / n).exists() for n in OWNED)
    if overwrite:
        if foreign and not ours:
            raise UsageError(f"{out} holds other files ({', '.join(sorted(foreign)[:4])}) and no dataset; refusing to --overwrite it")
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif previous is not None:
        if previous.get("identity") != current:
            raise UsageError(f"{out} holds a dataset made with other settings ({_differences(previous.get('identity') or {}, current)}); "
                             "rerun with the same settings to continue it, pass --overwrite to replace it, or use another --out")
        if isinstance(previous.get("n"), int) and previous["n"] > cfg.n:
            raise UsageError(f"{out} holds {previous['n']} scenes and --n {cfg.n} would drop {previous['n'] - cfg.n} of them; "
                             f"use --n {previous['n']} or more to continue or extend it, or --overwrite to replace it")
    elif foreign and not ours:
        raise UsageError(f"{out} is not empty and is not an iscene dataset ({', '.join(sorted(foreign)[:4])}); choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_path, {"identity": cfg.identity(), "n": cfg.n, "config_sha256": cfg.config_sha256()})
