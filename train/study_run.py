"""Run a study's stage graph: skip finished stages, isolate failures, locally or as Ray tasks.

A stage is finished when ``OUT/state/<stage id>.json`` exists and names the stage's current hash
(its kind, config and its inputs' hashes): the done record is written last, after the stage's own
outputs, so a kill at any moment leaves the stage unfinished and a rerun redoes (or, for resumable
tools such as datagen and the trainer, continues) exactly that stage. A stage whose inputs changed
is run again.

A runner is ``fn(stage, deps, ctx) -> dict``: ``deps`` maps each dependency's id to its result,
``ctx`` is a :class:`RunContext`. A runner that raises fails its stage only; the stages that need
it are recorded as ``blocked`` and every other chain goes on. Results, failures and logs are
collected in one dict per stage: ``{"status": ok|cached|failed|blocked, "result", "error", "log"}``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from iscene_core.shards import write_bytes_atomic, write_json_atomic
from train.study import Stage, Study, config_hash, stage_hash

Runner = Callable[[Stage, dict, "RunContext"], dict]


@dataclass
class RunContext:
    """What every runner may need besides its stage: the study folder, mode and Ray address."""

    out: str
    smoke: bool = False
    address: str | None = None
    spec: dict = field(default_factory=dict)

    def log_path(self, stage: Stage) -> Path:
        p = Path(self.out) / "logs" / (stage.id.replace("/", "__") + ".log")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def record_path(out: str | Path, stage_id: str) -> Path:
    return Path(out) / "state" / (stage_id.replace("/", "__") + ".json")


def read_done(out: str | Path, stage: Stage, h: str) -> dict | None:
    """The stage's done record if it names hash ``h`` (else None: not done, or done with other inputs)."""
    p = record_path(out, stage.id)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("hash") == h and rec.get("status") == "ok" else None


# Stages whose tool resumes from what it finds in the stage folder: after a change of inputs that
# folder holds another run's state, which must not be continued.
RESUME_IN_PLACE = ("vae", "train", "eval", "baseline")


def extends_earlier_run(stage: Stage, before: str, dep_hashes: list[str] | None) -> bool:
    """True when a train stage's folder holds the same run with fewer ``steps`` (all else, inputs
    included, equal): the trainer then continues it instead of starting over.

    Exact because a constant learning rate after warm-up does not depend on the total step count
    (``trainer.lr_at``) and resume restores weights, optimizer, EMA, random streams and data position:
    a run trained to N steps and resumed to M is the run trained to M (tests/test_trainer.py,
    ``test_kill_and_resume_reaches_the_same_weights`` resumes a 4-step run to 8). A cosine schedule
    decays towards its total, so a run with another total is another run: it starts afresh."""
    if stage.kind != "train" or dep_hashes is None or not isinstance(stage.config.get("steps"), int):
        return False
    if stage.config.get("lr_schedule", "constant") != "constant":
        return False
    try:
        earlier = int(json.loads((Path(stage.out) / "config.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if earlier > stage.config["steps"]:
        return False  # a shorter run is a prefix of the checkpoints, not a continuation: start afresh
    return config_hash(stage.kind, {**stage.config, "steps": earlier}, dep_hashes) == before


def record_seconds(rec: dict) -> float:
    """What a stage record cost: its own run plus the earlier runs it continued (``seconds_earlier``)."""
    return float(rec.get("seconds") or 0) + float(rec.get("seconds_earlier") or 0)


def _earlier_path(out: str | Path, stage_id: str) -> Path:
    return record_path(out, stage_id).with_suffix(".earlier.json")


def _carry_earlier_seconds(out: str | Path, stage_id: str, before: str, h: str) -> None:
    """A continued run's cost includes the run it continues: keep the finished earlier record's
    seconds (and what it carried itself) for the record of hash ``h`` (read by ``execute_stage``)."""
    try:
        old = json.loads(record_path(out, stage_id).read_text())
    except (OSError, ValueError):
        return
    if old.get("hash") == before and old.get("status") == "ok":
        write_json_atomic(_earlier_path(out, stage_id), {"for_hash": h, "seconds": record_seconds(old)})


def restart_if_inputs_changed(stage: Stage, h: str, ctx: RunContext, dep_hashes: list[str] | None = None) -> None:
    """Clear a resume-in-place stage's folder when it was started with other inputs (hash), then
    mark it started with this hash. A sweep killed mid-stage continues; one whose spec changed
    restarts, except a train stage whose only change is more ``steps``, which continues
    (:func:`extends_earlier_run`). ``dep_hashes``: the hashes of the stage's inputs, in ``deps`` order."""
    if stage.kind not in RESUME_IN_PLACE:
        return
    marker = record_path(ctx.out, stage.id).with_suffix(".started")
    try:
        before = marker.read_text().strip()
    except OSError:
        before = None
    inside = Path(stage.out).resolve().is_relative_to(Path(ctx.out).resolve())
    if before is not None and before != h and inside and Path(stage.out).is_dir():
        if extends_earlier_run(stage, before, dep_hashes):
            _carry_earlier_seconds(ctx.out, stage.id, before, h)
        else:
            shutil.rmtree(stage.out)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(marker, h.encode())


def import_finished(study: Study, out: str | Path, sources: list[str | Path]) -> list[str]:
    """Adopt stages already finished by other studies (``iscene-sweep --reuse DIR``): a stage whose
    hash (kind, config, inputs' hashes) equals a done record in a source study's ``state/`` gets
    that record, so identical data, VAEs, trainings and evals are computed once across studies.
    The adopted result keeps pointing at the source study's folders. Returns the adopted stage ids."""
    by_hash: dict[str, dict] = {}
    for src in sources:
        state = Path(src) / "state"
        if not state.is_dir():
            raise FileNotFoundError(f"--reuse {src}: no state/ folder (not a study folder)")
        for p in sorted(state.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("hash"):
                by_hash.setdefault(rec["hash"], rec)
    adopted, memo = [], {}
    for sid in study.order():
        st = study.stages[sid]
        h = stage_hash(st, study.stages, memo)
        if read_done(out, st, h) is not None or h not in by_hash:
            continue
        rec = {**by_hash[h], "id": sid, "cell": st.cell, "adopted_from": by_hash[h].get("id")}
        path = record_path(out, sid)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, rec)
        adopted.append(sid)
    return adopted


def execute_stage(stage: Stage, h: str, runner: Runner, ctx: RunContext, dep_records: dict[str, dict]) -> dict:
    """Run one stage unless finished; never raises for a failing runner (the error is the result)."""
    done = read_done(ctx.out, stage, h)
    if done is not None:
        return {**done, "status": "cached"}
    bad = {d: r["status"] for d, r in dep_records.items() if r.get("status") not in ("ok", "cached")}
    if bad:
        return {"id": stage.id, "status": "blocked", "error": "needs " + ", ".join(f"{d} ({s})" for d, s in bad.items()),
                "cell": stage.cell}
    restart_if_inputs_changed(stage, h, ctx, [dep_records[d].get("hash") for d in stage.deps])
    log = ctx.log_path(stage)
    t0 = time.time()
    try:
        result = runner(stage, {d: r.get("result", {}) for d, r in dep_records.items()}, ctx) or {}
    except Exception as exc:  # noqa: BLE001 - a failing stage is data for the report, not a crash of the sweep
        with open(log, "a") as f:
            f.write("\n" + traceback.format_exc())
        return {"id": stage.id, "status": "failed", "error": f"{type(exc).__name__}: {exc}".strip()[:2000], "log": str(log),
                "cell": stage.cell, "seconds": time.time() - t0}
    rec = {"id": stage.id, "kind": stage.kind, "hash": h, "status": "ok", "result": result, "cell": stage.cell,
           "seconds": time.time() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "log": str(log),
           "config": stage.config}
    try:  # a run that continued an earlier one (more steps) also cost that one's time
        earlier = json.loads(_earlier_path(ctx.out, stage.id).read_text())
        if earlier.get("for_hash") == h:
            rec["seconds_earlier"] = float(earlier["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    path = record_path(ctx.out, stage.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, rec)
    return rec


def run_local(study: Study, runners: dict[str, Runner], ctx: RunContext, progress: Callable[[str, dict], None] | None = None) -> dict:
    """Every stage in dependency order in this process."""
    memo: dict = {}
    records: dict[str, dict] = {}
    for sid in study.order():
        st = study.stages[sid]
        rec = execute_stage(st, stage_hash(st, study.stages, memo), runners[st.kind], ctx, {d: records[d] for d in st.deps})
        records[sid] = rec
        if progress:
            progress(sid, rec)
    return records


def _ray_execute(stage: Stage, h: str, runner: Runner, ctx: RunContext, dep_ids: list[str], *dep_recs: dict) -> dict:
    return execute_stage(stage, h, runner, ctx, dict(zip(dep_ids, dep_recs)))


def run_ray(study: Study, runners: dict[str, Runner], ctx: RunContext, address: str | None = None,
            progress: Callable[[str, dict], None] | None = None) -> dict:
    """Every stage a Ray task; a task's dependencies are its arguments, so Ray runs the graph.

    Stages ask for the CPUs/GPUs of ``resources`` in the spec (train stages on a 2-core machine ask
    for both cores, so two trainings never share them). Runner functions from outside the package
    (tests) are shipped by value.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        from ray import cloudpickle  # Ray's own copy: registering with the cloudpickle package does nothing

        for fn in runners.values():
            mod = getattr(fn, "__module__", "") or ""
            if mod and not mod.startswith("train.") and mod in __import__("sys").modules:
                cloudpickle.register_pickle_by_value(__import__("sys").modules[mod])
    except (ImportError, ValueError):
        pass
    started_here = False
    if not ray.is_initialized():
        # no --address: a Ray of our own ("local"), never a cluster someone else started on this machine
        kw = {"address": address} if address else {"address": "local", "num_cpus": os.cpu_count() or 1}
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **kw)
        started_here = True
    try:
        memo: dict = {}
        refs: dict = {}
        remote = ray.remote(max_retries=0)(_ray_execute)
        for sid in study.order():
            st = study.stages[sid]
            r = st.resources or {}
            task = remote.options(num_cpus=float(r.get("num_cpus", 1)), num_gpus=float(r.get("num_gpus", 0)), name=sid)
            refs[sid] = task.remote(st, stage_hash(st, study.stages, memo), runners[st.kind], ctx, list(st.deps),
                                    *[refs[d] for d in st.deps])
        records: dict[str, dict] = {}
        pending = {ref: sid for sid, ref in refs.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                sid = pending.pop(ref)
                try:
                    records[sid] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker that died (OOM, node lost)
                    records[sid] = {"id": sid, "status": "failed", "error": f"Ray task failed: {type(exc).__name__}: {exc}"[:2000],
                                    "cell": study.stages[sid].cell}
                if progress:
                    progress(sid, records[sid])
        return {sid: records[sid] for sid in study.order()}
    finally:
        if started_here:
            ray.shutdown()
