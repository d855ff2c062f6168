"""iscene-sweep: stage graph, resume after SIGKILL without redoing finished stages, failure isolation,
report (table with seeds' spread, fit), dataset prefixes, and the legacy grid expander.

Most tests inject tiny stage functions (the real chain takes minutes); they behave like the real
tools where it matters: outputs in the stage folder, the trainer resumes from its own progress.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

STUDY = textwrap.dedent("""
    name: toy
    datasets:
      d: {procedural: true, n: 40, seed: 0}
      held: {procedural: true, n: 10, seed: 5}
    benches:
      b: {from: held, n: 4}
    vae: {mix: d, args: {steps: 5}}
    base: {steps: 6, model_size: tiny}
    cells:
      full: {}
      nosca: {sca: false}
    grid:
      mix: ['d@10', 'd@20', 'd@40']
    seeds: [0, 1]
    eval: {metrics: [iou_b], probe: false}
    scaling: {x: samples, metric: iou_b, bootstrap: 100}
""")


def _log_call(out: str, sid: str, **kw) -> None:
    with open(Path(out) / "calls.jsonl", "a") as f:
        f.write(json.dumps({"id": sid, **kw}) + "\n")


def _calls(out: Path) -> list[dict]:
    p = out / "calls.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def fake_data(stage, deps, ctx):
    _log_call(ctx.out, stage.id)
    Path(stage.out).mkdir(parents=True, exist_ok=True)
    n = stage.config.get("n", 0)
    return {"path": stage.out, "samples": n}


def fake_vae(stage, deps, ctx):
    _log_call(ctx.out, stage.id)
    return {"path": stage.out, "encoder": "enc", "decoder": "dec", "held_out_iou": 0.9, "train_iou": 0.95}


def fake_train(stage, deps, ctx):
    """Resumable like iscene-train: progress.txt holds the last finished step; slow enough to be killed."""
    out = Path(stage.out)
    out.mkdir(parents=True, exist_ok=True)
    prog = out / "progress.txt"
    start = int(prog.read_text()) if prog.exists() else 0
    _log_call(ctx.out, stage.id, start=start)
    if stage.config.get("sca") is False and os.environ.get("TOY_FAIL_NOSCA"):
        raise RuntimeError("CUDA out of memory (injected)")
    delay = float(os.environ.get("TOY_STEP_S", "0"))
    for step in range(start, stage.config["steps"]):
        time.sleep(delay)
        prog.write_text(str(step + 1))
    samples = sum(deps[d]["samples"] for d in stage.deps if d.startswith("data/"))
    return {"path": str(out), "checkpoint": str(out), "steps": stage.config["steps"], "first_loss": 1.0, "final_loss": 0.5,
            "train_config": {"seed": stage.config["seed"], "samples": samples, "sca": stage.config.get("sca", True)}}


def fake_eval(stage, deps, ctx):
    _log_call(ctx.out, stage.id)
    train = deps[stage.deps[0]]["train_config"]
    # a known law: error = 2 * samples^-0.5 + 0.05, seeds differ slightly, no-SCA worse
    err = 2.0 * train["samples"] ** -0.5 + 0.05 + 0.001 * train["seed"] + (0.0 if train["sca"] else 0.1)
    return {"summary": {"iou_b": 1.0 - err, "n_scored": 4}}


def fake_latents(stage, deps, ctx):
    _log_call(ctx.out, stage.id)
    return {"path": deps[stage.deps[0]]["path"], "space": stage.config["space"]}


def fake_baseline(stage, deps, ctx):
    _log_call(ctx.out, stage.id)
    floor = {"untrained": 0.05, "mean-box": 0.2}[stage.config["kind"]]
    return {"summary": {"iou_b": floor}}


def fake_probe(stage, deps, ctx):
    _log_call(ctx.out, stage.id)
    train = deps[stage.deps[0]]["train_config"]
    return {"probe": stage.out, "mean_image_gain": 0.25 if train["sca"] else 0.05, "per_t": []}


FAKE = {"catalog": fake_data, "datagen": fake_data, "reuse": fake_data, "prefix": fake_data, "bench": fake_data,
        "vae": fake_vae, "latents": fake_latents, "train": fake_train, "probe": fake_probe, "eval": fake_eval,
        "baseline": fake_baseline}


def _train_dir(out: Path, stage_id: str) -> Path:
    from train.study import _safe

    return out / "cells" / _safe(stage_id.split("/")[1]) / "train"


def _child(study: str, out: str, executor: str = "local") -> None:
    """Entry point of the subprocess that the kill test SIGKILLs."""
    sys.path.insert(0, str(REPO))
    from train.sweep import run_study

    run_study(Path(study), Path(out), runners=FAKE, executor=executor, report=False)


@pytest.fixture
def study(tmp_path) -> Path:
    p = tmp_path / "toy.yaml"
    p.write_text(STUDY)
    return p


def test_expand_graph(study, tmp_path):
    from train.study import expand, load_spec

    s = expand(load_spec(study), tmp_path / "o")
    assert len(s.cells) == 2 * 3 * 2  # cells x sizes x seeds
    kinds = {}
    for st in s.stages.values():
        kinds[st.kind] = kinds.get(st.kind, 0) + 1
    # one latent cache per training set (the VAE encodes each once), shared by every cell training on it
    assert kinds == {"datagen": 2, "prefix": 3, "bench": 1, "vae": 1, "latents": 3, "train": 12, "eval": 12}
    order = s.order()
    for sid, st in s.stages.items():
        assert all(order.index(d) < order.index(sid) for d in st.deps)
    tr = s.stages["cell/nosca-mix=d@20-s1/train"]
    assert tr.config["sca"] is False and tr.config["seed"] == 1 and "vae" in tr.deps and "data/d@20" in tr.deps
    assert "latents/d@20/view" in tr.deps and s.stages["latents/d@20/view"].deps == ["data/d@20", "vae"]
    smoke = expand(load_spec(study), tmp_path / "o", smoke=True)
    assert smoke.stages["cell/full-mix=d@40-s0/train"].config["steps"] == 3
    assert {st.config["n"] for st in smoke.stages.values() if st.kind == "prefix"} == {1, 2, 4}  # sizes stay distinct


def test_a_cell_can_set_its_own_sampler_without_touching_the_others(study, tmp_path):
    """cells.NAME.eval.predict (e.g. no guidance for one cell) reaches only that cell's eval stages and
    is not a training flag (the trainer would refuse an unknown field)."""
    from train.study import StudyError, expand, load_spec

    spec = load_spec(study)
    spec["eval"]["predict"] = {"steps": 12}
    spec["cells"]["nosca"] = {"sca": False, "eval": {"predict": {"cfg": 0}}}
    spec["baselines"] = {"untrained": {"cell": "nosca"}, "mean-box": {"from": "d"}}
    s = expand(spec, tmp_path / "o")
    for st in s.stages.values():
        if st.kind == "eval":
            want = {"steps": 12, "cfg": 0} if "/nosca-" in st.id else {"steps": 12}
            assert st.config["predict"] == want, st.id
        if st.kind == "baseline":  # the untrained floor is sampled as its cell is
            want = {"steps": 12, "cfg": 0} if "/untrained/" in st.id else {"steps": 12}
            assert st.config["predict"] == want, st.id
        if st.kind == "train":
            assert "eval" not in st.config
    spec["cells"]["nosca"]["eval"] = {"cfg": 0}  # predict forgotten: refused, not silently ignored
    with pytest.raises(StudyError, match="cell nosca: eval may only hold predict"):
        expand(spec, tmp_path / "o")


def test_bad_spec_is_a_one_line_error(tmp_path, capsys):
    from train.sweep import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncels: {}\n")
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown keys ['cels']" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2


def test_killed_sweep_resumes_without_redoing_finished_stages(study, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "TOY_STEP_S": "0.3"}
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_sweep as t; t._child({str(study)!r}, {str(out)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    # kill in the middle of the third training stage (the first two cells' trains finished by then)
    deadline = time.time() + 400  # a loaded 2-core machine starts Python slowly
    target, reached = None, False
    while time.time() < deadline and proc.poll() is None and not reached:
        trains = [c for c in _calls(out) if c["id"].endswith("/train")]
        if len(trains) >= 3:
            target = trains[2]["id"]
            prog = _train_dir(out, target) / "progress.txt"
            reached = prog.exists() and prog.read_text().strip() != "" and int(prog.read_text()) >= 2
        time.sleep(0.02)
    assert reached, "the sweep never got two steps into a third training stage"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int((_train_dir(out, target) / "progress.txt").read_text())
    assert 2 <= killed_at < 6
    before = _calls(out)
    done_before = {c["id"] for c in before} - {target}

    from train.sweep import run_study

    res = run_study(study, out, runners=FAKE, executor="local")
    after = _calls(out)[len(before):]
    rerun = {c["id"] for c in after}
    assert not (rerun & done_before), f"finished stages were redone: {sorted(rerun & done_before)}"
    resumed = [c for c in after if c["id"] == target]
    assert len(resumed) == 1 and resumed[0]["start"] == killed_at  # continued, not restarted
    assert all(r["status"] in ("ok", "cached") for r in res["records"].values())
    assert sum(r["status"] == "cached" for r in res["records"].values()) == len(done_before)
    # a third run does nothing at all
    res3 = run_study(study, out, runners=FAKE, executor="local")
    assert len(_calls(out)) == len(before) + len(after)
    assert all(r["status"] == "cached" for r in res3["records"].values())


def test_changed_inputs_rerun_only_what_depends_on_them(study, tmp_path):
    from train.sweep import run_study

    out = tmp_path / "out"
    run_study(study, out, runners=FAKE, executor="local", report=False)
    n0 = len(_calls(out))
    study.write_text(STUDY.replace("nosca: {sca: false}", "nosca: {sca: false, lr: 0.001}"))
    run_study(study, out, runners=FAKE, executor="local", report=False)
    redone = {c["id"] for c in _calls(out)[n0:]}
    assert redone and all(i.startswith("cell/nosca-") for i in redone)
    assert len(redone) == 12  # 6 nosca cells x (train + eval)


def test_failing_cell_is_reported_and_others_finish(study, tmp_path, monkeypatch):
    from train.sweep import run_study

    monkeypatch.setenv("TOY_FAIL_NOSCA", "1")
    out = tmp_path / "out"
    res = run_study(study, out, runners=FAKE, executor="local")
    recs = res["records"]
    failed = [r for r in recs.values() if r["status"] == "failed"]
    blocked = [r for r in recs.values() if r["status"] == "blocked"]
    assert len(failed) == 6 and all("/nosca-" in r["id"] and "out of memory" in r["error"] for r in failed)
    assert len(blocked) == 6 and all(r["id"].endswith("/eval/b") for r in blocked)
    assert all(Path(r["log"]).read_text().count("RuntimeError") for r in failed)  # traceback kept in the stage log
    full_evals = [r for sid, r in recs.items() if sid.startswith("cell/full-") and sid.endswith("/eval/b")]
    assert len(full_evals) == 6 and all(r["status"] == "ok" for r in full_evals)
    report = (out / "REPORT.md").read_text()
    assert "## Failures" in report and "out of memory" in report and "nosca-mix=d@10-s0" in report
    # the fit used the 6 finished cells: error = 2 x^-0.5 + 0.05 (+ seed jitter)
    fit = json.loads((out / "results.json").read_text())["fit"]
    assert fit["points"] == 6 and abs(fit["b"] - 0.5) < 0.05
    # rerun without the fault: only the failed chains run
    monkeypatch.delenv("TOY_FAIL_NOSCA")
    n0 = len(_calls(out))
    res2 = run_study(study, out, runners=FAKE, executor="local")
    assert {c["id"].split("/")[1].split("-")[0] for c in _calls(out)[n0:]} == {"nosca"}
    assert all(r["status"] in ("ok", "cached") for r in res2["records"].values())


def test_report_table_has_seed_spread_and_plots(study, tmp_path):
    from train.sweep import run_study

    out = tmp_path / "out"
    run_study(study, out, runners=FAKE, executor="local")
    doc = json.loads((out / "results.json").read_text())
    g = {x["group"]: x for x in doc["groups"]}["full-mix=d@20"]
    m = g["metrics"]["b/iou_b"]
    assert m["n"] == 2 and m["std"] == pytest.approx(0.000707, rel=0.01)  # seeds 0 and 1 differ by 0.001
    assert m["mean"] == pytest.approx(1 - (2 * 20 ** -0.5 + 0.05 + 0.0005), abs=1e-9)
    report = (out / "REPORT.md").read_text()
    assert "± " in report and "## Scaling fit" in report and "Extrapolated to samples = 400" in report
    assert (out / "scaling_fit.png").is_file() and (out / "plots" / "b_iou_b_vs_samples.png").is_file()
    assert (out / "results.csv").read_text().count("\n") == 13


def test_ray_executor_runs_the_graph_and_isolates_failures(study, tmp_path, monkeypatch):
    """The same graph as Ray tasks on a local Ray (stage functions shipped by value)."""
    from train.sweep import run_study

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("TOY_FAIL_NOSCA", "1")
    out = tmp_path / "out"
    res = run_study(study, out, runners=FAKE, executor="ray")
    st = {sid: r["status"] for sid, r in res["records"].items()}
    assert sum(s == "failed" for s in st.values()) == 6 and sum(s == "blocked" for s in st.values()) == 6
    assert all(s == "ok" for sid, s in st.items() if sid.startswith("cell/full-"))
    assert (out / "REPORT.md").is_file()


def test_legacy_grid_file_still_expands(tmp_path):
    from train.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {steps: 10}\ngrid:\n  mix: [big, 'big,small']\n  sca: [true, false]\n")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "sweep")]) == 0
    lines = (tmp_path / "sweep" / "commands.sh").read_text().splitlines()[2:]
    assert len(lines) == 4 and all("--config" in l for l in lines)


# ------------------------------------------------------------------ prefixes of a real dataset --


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    pytest.importorskip("bpy")
    from datagen.cli import main as datagen_main

    root = tmp_path_factory.mktemp("sweepdata")
    os.environ.setdefault("ISCENE_CACHE", str(root / "cache"))
    assert datagen_main(["--procedural", "--procedural-n", "20", "--n", "6", "--seed", "3", "--views-per-scene", "1",
                         "--resolution", "64", "--samples", "2", "--no-denoise", "--min-visible-pixels", "2",
                         "--scenes-per-shard", "2", "--out", str(root / "d"), "--no-ray", "--name", "sweepd"]) == 0
    return root / "d"


@pytest.mark.blender
def test_prefix_dataset_holds_the_first_samples(small_dataset, tmp_path):
    from iscene_core.shards import iter_samples, load_dataset_json, resolve
    from train.study_data import materialize_prefix, parse_sized

    full = [k for k, _ in iter_samples(small_dataset)]
    assert len(full) >= 3
    n = len(full) - 1  # cuts the last shard (or leaves one out)
    out = materialize_prefix(f"{small_dataset}@{n}", tmp_path / "p")
    keys = [k for k, _ in iter_samples(out)]
    assert keys == full[:n]
    info = load_dataset_json(out)
    assert info["counts"]["samples"] == n and info["prefix_of"]["samples"] == n
    assert resolve(str(out)).samples == n  # the trainer reads it like any dataset
    assert materialize_prefix(f"{small_dataset}@{n}", tmp_path / "p") == out  # finished: kept
    with pytest.raises(ValueError, match="has only"):
        materialize_prefix(f"{small_dataset}@{len(full) + 5}", tmp_path / "q")
    assert parse_sized("rand25k@5000") == ("rand25k", 5000) and parse_sized("x") == ("x", None)
    with pytest.raises(ValueError):
        parse_sized("x@abc")


@pytest.mark.slow
@pytest.mark.blender
def test_smoke_of_the_nano_recipe_runs_the_real_chain(tmp_path, monkeypatch):
    """studies/ablation-nano.yaml --smoke with two of its cells (the learns-task cell, which the
    untrained baseline refers to, and no-sca): catalogs, datagen, prefix, benches, VAE, training,
    baselines and iscene-eval predict + score all run for real (~10-20 min on a loaded 2-core CPU)."""
    import yaml

    from train.sweep import run_study

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("ISCENE_CACHE", str(tmp_path / "cache"))
    spec = yaml.safe_load((REPO / "studies" / "ablation-nano.yaml").read_text())
    spec["cells"] = {k: spec["cells"][k] for k in ("full-long", "no-sca")}
    study = tmp_path / "nano.yaml"
    study.write_text(yaml.safe_dump(spec))
    res = run_study(study, tmp_path / "out", executor="local", smoke=True)
    bad = {sid: r.get("error") for sid, r in res["records"].items() if r["status"] not in ("ok", "cached")}
    assert not bad, bad
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    groups = {g["group"]: g for g in doc["groups"]}
    for g in ("full-long", "no-sca"):
        for bench in ("ood-rand", "train-fit"):
            m = groups[g]["metrics"][f"{bench}/iou_b"]["mean"]
            assert 0.0 <= m <= 1.0
        assert -1.0 <= groups[g]["image_gain"] <= 1.0  # the real probe ran on the cell's checkpoint
    assert doc["vae"]["held_out_iou"] >= 0.0
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "smoke run" in report and "| full-long |" in report and "| no-sca |" in report and "image gain" in report
    assert "| baseline: untrained |" in report and doc["learns_task"]["verdict"] in ("passes", "fails")


def test_each_cell_is_probed_and_its_image_gain_is_in_the_report(tmp_path):
    from train.study import expand, load_spec
    from train.sweep import run_study

    study = tmp_path / "toy.yaml"
    study.write_text(STUDY.replace("probe: false", "probe: {batches: 2}"))
    s = expand(load_spec(study), tmp_path / "out")
    probes = [st for st in s.stages.values() if st.kind == "probe"]
    assert len(probes) == len(s.cells) and all(st.deps == [st.id.replace("/probe", "/train")] for st in probes)
    assert all(st.config["batches"] == 2 for st in probes)
    assert all(st.config["batches"] == 1 for st in expand(load_spec(study), tmp_path / "o", smoke=True).stages.values()
               if st.kind == "probe")
    run_study(study, tmp_path / "out", runners=FAKE, executor="local")
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    gains = {g["group"].split("-")[0]: g["image_gain"] for g in doc["groups"]}
    assert gains == {"full": 0.25, "nosca": 0.05}
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "| image gain |" in report and "| 0.250 |" in report and "ignores its image" in report


BASELINE_STUDY = STUDY.replace("    scaling: {x: samples, metric: iou_b, bootstrap: 100}\n", "") + textwrap.dedent("""
    baselines:
      untrained: {cell: full}
      mean-box: {from: d}
    learns_task: {cell: full, bench: b, metric: iou_b, margin: 0.1}
""")


def test_baselines_are_scored_and_the_learns_task_check_is_reported(tmp_path):
    """Baselines run as stages like cells; the report says whether the model beats every one by the margin."""
    from train.study import expand, load_spec
    from train.study_report import learns_task_check
    from train.sweep import run_study

    spec_path = tmp_path / "b.yaml"
    spec_path.write_text(BASELINE_STUDY)
    s = expand(load_spec(spec_path), tmp_path / "o")
    assert {sid for sid in s.stages if sid.startswith("baseline/")} == {"baseline/untrained/eval/b", "baseline/mean-box/eval/b"}
    assert "data/d" in s.stages["baseline/mean-box/eval/b"].deps
    untrained = s.stages["baseline/untrained/eval/b"]
    assert "vae" in untrained.deps and untrained.config["train_config"]["model_size"] == "tiny"
    out = tmp_path / "o"
    run_study(spec_path, out, runners=FAKE, executor="local")
    doc = json.loads((out / "results.json").read_text())
    lt = doc["learns_task"]
    assert set(lt["baselines"]) == {"baseline: untrained", "baseline: mean-box"}
    assert lt["passed"] == (lt["model"] - 0.2 >= 0.1)
    report = (out / "REPORT.md").read_text()
    assert "Does the model learn the task?" in report and lt["verdict"].upper() in report
    # the verdict logic itself: a gap below the margin over any baseline fails
    rows = [{"factors": {"cell": "full"}, "metrics": {"b": {"iou_b": 0.35}}},
            {"baseline": "mean-box", "group": "baseline: mean-box", "factors": {}, "metrics": {"b": {"iou_b": 0.3}}},
            {"baseline": "untrained", "group": "baseline: untrained", "factors": {}, "metrics": {"b": {"iou_b": 0.0}}}]
    spec = {"learns_task": {"cell": "full", "bench": "b", "metric": "iou_b", "margin": 0.1}}
    assert learns_task_check(spec, rows)["passed"] is False
    rows[1]["metrics"]["b"]["iou_b"] = 0.2
    assert learns_task_check(spec, rows)["passed"] is True
    rows[2]["metrics"] = {}
    assert learns_task_check(spec, rows)["verdict"] == "not measured"


def test_a_stage_started_with_other_inputs_restarts_instead_of_resuming(tmp_path):
    """A trainer resumes from its folder; after the cell's config changed, that folder is another run's."""
    from train.study import Stage
    from train.study_run import RunContext, restart_if_inputs_changed

    ctx = RunContext(out=str(tmp_path))
    st = Stage("cell/x/train", "train", str(tmp_path / "cells" / "x" / "train"), {"steps": 5})
    restart_if_inputs_changed(st, "h1", ctx)
    Path(st.out).mkdir(parents=True)
    (Path(st.out) / "progress").write_text("step 3")
    restart_if_inputs_changed(st, "h1", ctx)  # killed and rerun with the same inputs: keep
    assert (Path(st.out) / "progress").is_file()
    restart_if_inputs_changed(st, "h2", ctx)  # inputs changed: start afresh
    assert not Path(st.out).exists()
    outside = Stage("data/d", "reuse", str(tmp_path.parent), {})
    restart_if_inputs_changed(outside, "h3", ctx)  # never touches a reused dataset
    assert tmp_path.parent.is_dir()


def test_a_train_stage_given_more_steps_continues_its_run(tmp_path):
    """Raising a cell's ``steps`` continues its trainer (exact: tests/test_trainer.py resumes 4 -> 8 steps);
    any other change, different inputs, or fewer steps start the run afresh."""
    import json

    from train.study import Stage, config_hash
    from train.study_run import RunContext, record_path, restart_if_inputs_changed

    ctx = RunContext(out=str(tmp_path))
    out = tmp_path / "cells" / "x" / "train"

    def started(steps: int, deps: list[str], **extra) -> Stage:
        st = Stage("cell/x/train", "train", str(out), {"steps": steps, "lr": 0.001, **extra})
        restart_if_inputs_changed(st, config_hash("train", st.config, deps), ctx, deps)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"steps": steps, "lr": 0.001, **extra}))
        (out / "ckpt").mkdir(exist_ok=True)
        return st

    four = started(4, ["vae1"])
    h4 = config_hash("train", four.config, ["vae1"])
    record_path(tmp_path, four.id).write_text(json.dumps({"hash": h4, "status": "ok", "seconds": 10.0}))  # it finished
    longer = Stage("cell/x/train", "train", str(out), {"steps": 6, "lr": 0.001})
    h6 = config_hash("train", longer.config, ["vae1"])
    restart_if_inputs_changed(longer, h6, ctx, ["vae1"])
    assert (out / "ckpt").is_dir()  # continued
    # and the continued run's record will count the 4-step run's 10 s (the report sums both)
    assert json.loads(record_path(tmp_path, four.id).with_suffix(".earlier.json").read_text()) == {"for_hash": h6, "seconds": 10.0}
    for other, deps in (({"steps": 8, "lr": 0.002}, ["vae1"]),   # another learning rate
                        ({"steps": 8, "lr": 0.001}, ["vae2"]),   # another VAE (same folder path, other weights)
                        ({"steps": 3, "lr": 0.001}, ["vae1"])):  # fewer steps
        started(4, ["vae1"])
        st = Stage("cell/x/train", "train", str(out), other)
        restart_if_inputs_changed(st, config_hash("train", other, deps), ctx, deps)
        assert not out.exists(), other
    started(4, ["vae1"], lr_schedule="cosine")  # its curve decays towards 4 steps: 6 steps is another run
    cos = {"steps": 6, "lr": 0.001, "lr_schedule": "cosine"}
    restart_if_inputs_changed(Stage("cell/x/train", "train", str(out), cos), config_hash("train", cos, ["vae1"]), ctx, ["vae1"])
    assert not out.exists()
    started(4, ["vae1"])
    vae = Stage("cell/x/train", "vae", str(out), {"steps": 6})  # the VAE's cosine schedule depends on the total
    restart_if_inputs_changed(vae, config_hash("vae", vae.config, ["vae1"]), ctx, ["vae1"])
    assert not out.exists()


def test_reuse_adopts_identical_stages_of_another_study(tmp_path):
    """Two studies sharing data and a cell: the second adopts what the first finished and runs only the rest."""
    from train.sweep import run_study

    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(STUDY.replace("      nosca: {sca: false}\n", "").replace("['d@10', 'd@20', 'd@40']", "['d@40']")
                     .replace("seeds: [0, 1]", "seeds: [0]").replace("    scaling: {x: samples, metric: iou_b, bootstrap: 100}\n", ""))
    second.write_text(STUDY.replace("      nosca: {sca: false}\n", "").replace("['d@10', 'd@20', 'd@40']", "['d@20', 'd@40']")
                      .replace("seeds: [0, 1]", "seeds: [0]").replace("    scaling: {x: samples, metric: iou_b, bootstrap: 100}\n", ""))
    run_study(first, tmp_path / "A", runners=FAKE, executor="local", report=False)
    res = run_study(second, tmp_path / "B", runners=FAKE, executor="local", report=False, reuse=[tmp_path / "A"])
    ran = {c["id"] for c in _calls(tmp_path / "B")}
    adopted = {sid for sid, r in res["records"].items() if r.get("adopted_from")}
    # the datasets, bench, VAE and the whole d@40 cell come from A; only the d@20 chain runs
    assert {"data/d", "data/held", "bench/b", "vae", "cell/full-mix=d@40-s0/train", "cell/full-mix=d@40-s0/eval/b"} <= adopted
    assert ran and all("d@20" in sid for sid in ran), ran
    with pytest.raises(FileNotFoundError):
        run_study(second, tmp_path / "C", runners=FAKE, executor="local", report=False, reuse=[tmp_path / "nope"])
