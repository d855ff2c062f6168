"""A study's results: one table (cells x metrics, seeds' spread), plots, the scaling fit, REPORT.md.

Everything is read from the stage records, so the report can be rebuilt at any time (also from a
half-finished sweep: missing cells are listed with their status, never silently dropped).
Compute per cell is an estimate: 3 x the analytic forward matmul FLOPs of ``bench/bench_model.py``
(forward + backward) per scene group, times batch size and steps, counting every group as a scene
plus ``max_instances`` instances (an upper bound: views with fewer visible instances cost less).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from iscene_core.shards import write_bytes_atomic, write_json_atomic
from train.study import Study
from train.study_run import record_seconds

DEFAULT_METRICS = ("iou_b", "f_s", "cd_s", "f_o", "cd_o")
HIGHER_IS_BETTER = {"iou_b", "f_s", "f_o", "voxel_iou"}


def _bench_model():
    """``bench/bench_model.py`` (the repository's FLOP counter), importable from any working directory."""
    import sys

    try:
        import bench.bench_model as bm

        return bm
    except ImportError:
        root = str(Path(__file__).resolve().parents[1])
        if root not in sys.path:
            sys.path.insert(0, root)
        import bench.bench_model as bm

        return bm


def train_flops(train_cfg: dict) -> float | None:
    """Estimated training FLOPs of a run (see module docs); None when the estimator is unavailable."""
    try:
        bench_model = _bench_model()
        from train.study_stages import flow_args
    except (ImportError, OSError):
        return None
    forward_flops = bench_model.forward_flops
    if train_cfg.get("init"):
        args = bench_model.CONFIGS["L"]
    else:
        try:
            args = flow_args(train_cfg)
        except KeyError:
            return None
    image = int(train_cfg.get("image_size") or 518)
    cond_tokens = 5 + (image // 14) ** 2
    inst = int(train_cfg.get("max_instances", 6))
    per_group = forward_flops(args, cond_tokens, 1 + inst, inst if train_cfg.get("sca", True) else 0)
    return 3.0 * per_group * int(train_cfg.get("batch_size", 2)) * int(train_cfg.get("steps", 0))


def cell_rows(study: Study, records: dict) -> list[dict]:
    """One row per cell (a seed of a group): status, data size, compute, metrics per bench."""
    rows = []
    for cell, info in study.cells.items():
        if info.get("train") is None:  # a baseline: no training stage, only its evals
            rows.append(_baseline_row(study, cell, info, records))
            continue
        tr = records.get(info["train"], {})
        train_stage = study.stages[info["train"]]
        samples = 0
        for d in train_stage.deps:
            if d.startswith("data/"):
                samples += int((records.get(d, {}).get("result") or {}).get("samples") or 0)
        res = tr.get("result") or {}
        row = {"cell": cell, "group": info["group"], "seed": info["seed"], "factors": dict(info["factors"]),
               "train_status": tr.get("status", "not run"), "samples": samples or None,
               "steps": res.get("steps"), "first_loss": res.get("first_loss"), "final_loss": res.get("final_loss"),
               "flops": train_flops(res["train_config"]) if res.get("train_config") else None, "metrics": {}, "errors": [],
               "image_gain": None}
        probe = records.get(info.get("probe") or "", {})
        if probe.get("status") in ("ok", "cached"):
            row["image_gain"] = probe["result"]["mean_image_gain"]
        for sid in [info["train"]] + info["evals"] + ([info["probe"]] if info.get("probe") else []):
            r = records.get(sid, {})
            if r.get("status") in ("failed", "blocked"):
                row["errors"].append({"stage": sid, "status": r["status"], "error": r.get("error"), "log": r.get("log")})
        for sid in info["evals"]:
            bench = study.stages[sid].config["bench"]
            r = records.get(sid, {})
            if r.get("status") in ("ok", "cached"):
                row["metrics"][bench] = r["result"]["summary"]
        rows.append(row)
    return rows


def _baseline_row(study: Study, cell: str, info: dict, records: dict) -> dict:
    """A baseline's row: no training (status ``baseline``), metrics per bench as a cell's."""
    row = {"cell": cell, "group": info["group"], "seed": info["seed"], "factors": dict(info["factors"]), "baseline": info["baseline"],
           "train_status": "baseline", "samples": None, "steps": 0, "first_loss": None, "final_loss": None, "flops": None,
           "metrics": {}, "errors": []}
    for sid in info["evals"]:
        r = records.get(sid, {})
        if r.get("status") in ("failed", "blocked"):
            row["errors"].append({"stage": sid, "status": r["status"], "error": r.get("error"), "log": r.get("log")})
        elif r.get("status") in ("ok", "cached"):
            row["metrics"][study.stages[sid].config["bench"]] = r["result"]["summary"]
    if any(r.get("status") in ("failed", "blocked") for r in (records.get(s, {}) for s in info["evals"])):
        row["train_status"] = "baseline (failed)"
    return row


def learns_task_check(spec: dict, rows: list[dict]) -> dict | None:
    """The spec's ``learns_task`` test: the cell's mean metric on the bench must beat every baseline
    by ``margin``. Returns the numbers and the verdict (None when the spec has no such test)."""
    lt = spec.get("learns_task")
    if not lt:
        return None
    cell, bench, metric, margin = lt.get("cell", "full"), lt.get("bench"), lt.get("metric", "iou_b"), float(lt.get("margin", 0.1))

    def value(rs: list[dict]) -> float | None:
        vals = [r["metrics"][bench][metric] for r in rs if bench in r["metrics"] and r["metrics"][bench].get(metric) is not None]
        return float(np.mean(vals)) if vals else None

    model = value([r for r in rows if not r.get("baseline") and r["factors"].get("cell") == cell])
    bases = {r["group"]: value([r]) for r in rows if r.get("baseline")}
    out = {"cell": cell, "bench": bench, "metric": metric, "margin": margin, "model": model, "baselines": bases}
    if model is None or not bases or any(v is None for v in bases.values()):
        out["verdict"] = "not measured"
        out["passed"] = None
    else:
        gaps = {g: model - v for g, v in bases.items()}
        out["gaps"] = gaps
        out["passed"] = all(gap >= margin for gap in gaps.values())
        out["verdict"] = "passes" if out["passed"] else "fails"
    return out


def _vae_summary(result: dict | None, root: Path) -> dict | None:
    """The VAE stage's result with its folder relative to the study (results.json is committed)."""
    return None if not result else {**result, "path": _rel(result.get("path"), root)}


def _rel(path: str | None, root: Path) -> str:
    """A path as the report shows it, relative to the study folder (``../ablation-nano/vae`` for a stage
    adopted from a sibling study): no machine paths in a committed report. Paths outside the study's
    parent folder (another disk, a cluster mount) are shown as given."""
    if not path:
        return "-"
    try:
        p, r = Path(path).resolve(), Path(root).resolve()
        return os.path.relpath(p, r) if p.is_relative_to(r.parent) else str(path)
    except (OSError, ValueError):
        return str(path)


def _fmt(v, spec=".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def group_table(rows: list[dict], benches: list[str], metrics: list[str]) -> tuple[list[dict], str]:
    """Seeds folded into mean ± std per group; returns (records, markdown)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out, lines = [], []
    head = ["cell", "seeds ok", "train samples", "train FLOPs (est.)", "loss first -> last", "image gain"] + \
           [f"{b}: {m}" for b in benches for m in metrics]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + " --- |" * len(head))
    for g, rs in groups.items():
        ok = [r for r in rs if r["train_status"] in ("ok", "cached", "baseline")]
        rec = {"group": g, "seeds": [r["seed"] for r in rs], "seeds_ok": len(ok), "samples": rs[0]["samples"],
               "flops": rs[0]["flops"], "metrics": {}}
        cells = [g, f"{len(ok)}/{len(rs)}", _fmt(rs[0]["samples"], "d") if rs[0]["samples"] else "-", _fmt(rs[0]["flops"], ".3g"),
                 f"{_fmt(np.mean([r['first_loss'] for r in ok]) if ok and all(r['first_loss'] is not None for r in ok) else None)} -> "
                 f"{_fmt(np.mean([r['final_loss'] for r in ok]) if ok and all(r['final_loss'] is not None for r in ok) else None)}"]
        gains = [r["image_gain"] for r in rs if r.get("image_gain") is not None]
        rec["image_gain"] = float(np.mean(gains)) if gains else None
        cells.append(_fmt(rec["image_gain"], ".3f"))
        for b in benches:
            for m in metrics:
                vals = [r["metrics"][b][m] for r in rs if b in r["metrics"] and r["metrics"][b].get(m) is not None]
                if vals:
                    mean, std = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
                    rec["metrics"][f"{b}/{m}"] = {"mean": mean, "std": std, "n": len(vals)}
                    cells.append(f"{mean:.4g} ± {std:.2g} (n={len(vals)})" if len(vals) > 1 else f"{mean:.4g}")
                else:
                    cells.append("-")
        out.append(rec)
        lines.append("| " + " | ".join(cells) + " |")
    return out, "\n".join(lines)


def _plot_metric(rows: list[dict], bench: str, metric: str, xkey: str, path: Path, xlabel: str) -> Path | None:
    pts = [(r[xkey], r["metrics"][bench][metric], r["factors_label"]) for r in rows
           if r.get(xkey) and bench in r["metrics"] and r["metrics"][bench].get(metric) is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for lab in sorted({p[2] for p in pts}):
        xs = [p[0] for p in pts if p[2] == lab]
        ys = [p[1] for p in pts if p[2] == lab]
        ax.scatter(xs, ys, label=lab)
    ax.set_xscale("log")
    if all(p[1] > 0 for p in pts):
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=f"{metric} ({bench})", title=f"{metric} vs {xlabel}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
    return path


def scaling_fit(rows: list[dict], spec: dict, benches: list[str], out: Path) -> dict:
    """Fit the spec's ``scaling`` section; returns the fit (or the reason there is none)."""
    from train.scaling_fit import FitError, fit_power_law, plot_fit

    sc = spec.get("scaling") or {}
    if not sc:
        return {}
    metric, xkey = sc.get("metric", "iou_b"), {"samples": "samples", "flops": "flops"}.get(sc.get("x", "samples"), "samples")
    bench = sc.get("bench") or (benches[0] if benches else None)
    transform = sc.get("transform", "one_minus" if metric in HIGHER_IS_BETTER else "identity")
    pts = [(r[xkey], r["metrics"][bench][metric]) for r in rows
           if r.get(xkey) and bench in r["metrics"] and r["metrics"][bench].get(metric) is not None]
    label = f"1 - {metric}" if transform == "one_minus" else metric
    info = {"x": xkey, "metric": metric, "bench": bench, "y": label, "points": len(pts)}
    if not pts:
        return {**info, "error": "no finished cell has this metric"}
    x = np.array([p[0] for p in pts], float)
    y = np.array([p[1] for p in pts], float)
    if transform == "one_minus":
        y = 1.0 - y
    try:
        try:
            fit = fit_power_law(x, y, offset=True, n_boot=int(sc.get("bootstrap", 500)))
        except FitError:
            fit = fit_power_law(x, y, offset=False, n_boot=int(sc.get("bootstrap", 500)))  # three sizes, one seed: the floor cannot be fitted too
    except FitError as exc:
        return {**info, "error": str(exc)}
    plot_fit(fit, out / "scaling_fit.png", xlabel=xkey, ylabel=label, title=f"{label} on {bench}")
    return {**info, **fit.to_dict(), "plot": "scaling_fit.png"}


def _seconds_by_kind(study: Study, records: dict) -> dict:
    """Seconds spent per stage kind over every run of the sweep (finished stages' own timings)."""
    out: dict[str, float] = {}
    for sid, r in records.items():
        if r.get("status") in ("ok", "cached", "failed") and sid in study.stages:
            k = study.stages[sid].kind
            out[k] = out.get(k, 0.0) + record_seconds(r)
    return out


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} CPU cores, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def write_report(study: Study, records: dict, wall_s: float) -> dict:
    """results.json, results.csv, plots/*.png, scaling_fit.png and REPORT.md in the study folder."""
    out = Path(study.out)
    spec = study.spec
    benches = list((spec.get("benches") or {}).keys())
    metrics = list((spec.get("eval") or {}).get("metrics") or DEFAULT_METRICS)
    rows = cell_rows(study, records)
    for r in rows:
        r["factors_label"] = r["factors"]["cell"]
    table_recs, table_md = group_table(rows, benches, metrics)
    plots = []
    for b in benches:
        for m in metrics:
            for xkey, xl in (("samples", "training samples"), ("flops", "training FLOPs (est.)")):
                p = _plot_metric(rows, b, m, xkey, out / "plots" / f"{b}_{m}_vs_{xkey}.png", xl)
                if p:
                    plots.append(str(p.relative_to(out)))
    fit = scaling_fit(rows, spec, benches, out)
    stage_counts: dict[str, int] = {}
    for r in records.values():
        stage_counts[r["status"]] = stage_counts.get(r["status"], 0) + 1
    stage_seconds = sum(float(r.get("seconds") or 0) for r in records.values() if r["status"] in ("ok", "failed"))
    stage_seconds_all = sum(record_seconds(r) for r in records.values() if r["status"] in ("ok", "cached", "failed"))
    doc = {"study": study.name, "smoke": study.smoke, "machine": _machine(), "wall_s": wall_s,
           "stage_seconds_this_run": stage_seconds, "stage_seconds_all_runs": stage_seconds_all, "stages": stage_counts,
           "learns_task": learns_task_check(spec, rows),
           "stage_seconds_by_kind": _seconds_by_kind(study, records), "cells": rows, "groups": table_recs, "fit": fit,
           "plots": plots, "vae": _vae_summary((records.get("vae") or {}).get("result"), study.out)}
    write_json_atomic(out / "results.json", doc)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["cell", "group", "seed", "train_status", "samples", "flops", "steps", "final_loss"] +
               [f"{b}/{m}" for b in benches for m in metrics])
    for r in rows:
        w.writerow([r["cell"], r["group"], r["seed"], r["train_status"], r["samples"], r["flops"], r["steps"], r["final_loss"]] +
                   [(r["metrics"].get(b) or {}).get(m) for b in benches for m in metrics])
    write_bytes_atomic(out / "results.csv", buf.getvalue().encode())
    write_bytes_atomic(out / "REPORT.md", _markdown(study, doc, table_md, rows, records).encode())
    return doc


def _markdown(study: Study, doc: dict, table_md: str, rows: list[dict], records: dict) -> str:
    spec = study.spec
    L = [f"# Study {study.name}{' (smoke run: every cell shrunk, numbers mean nothing)' if study.smoke else ''}", ""]
    if spec.get("description"):
        L += [str(spec["description"]).strip(), ""]
    by_kind = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(doc.get("stage_seconds_by_kind", {}).items(), key=lambda kv: -kv[1]))
    states = ", ".join(f"{k} {v}" for k, v in sorted(doc["stages"].items()))
    this_run = (f"- Wall time of this sweep run: {doc['wall_s'] / 60:.1f} min; stages run now: "
                f"{doc['stage_seconds_this_run'] / 60:.1f} min; stage states: {states}")
    if set(doc["stages"]) <= {"cached"}:  # --report-only, or a rerun of a finished study: say so, not "0.0 min"
        this_run = f"- Rebuilt from the stage records; no stage ran in this invocation (stage states: {states})"
    L += [f"- Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on: {doc['machine']}", this_run,
          f"- Compute of the whole study over all its runs (sum of every finished stage's own time): "
          f"{doc.get('stage_seconds_all_runs', 0) / 60:.1f} min ({by_kind} min)", ""]
    vae = doc.get("vae")
    if vae:
        L += [f"Sparse-structure VAE trained by the study: held-out reconstruction IoU {vae['held_out_iou']:.4f} "
              f"(train {vae['train_iou']:.4f}); weights in `{vae['path']}`.", ""]
    lt = doc.get("learns_task")
    if lt:
        L += ["## Does the model learn the task?", ""]
        if lt["passed"] is None:
            L += [f"Not measured: cell `{lt['cell']}` or a baseline has no {lt['metric']} on {lt['bench']}.", ""]
        else:
            parts = ", ".join(f"{g} {v:.4g} (gap {lt['gaps'][g]:+.4g})" for g, v in lt["baselines"].items())
            L += [f"**{lt['verdict'].upper()}**: cell `{lt['cell']}` reaches {lt['metric']} {lt['model']:.4g} on `{lt['bench']}`; "
                  f"{parts}; required gap >= {lt['margin']} over every baseline.", ""]
    L += ["## Results (mean ± std over seeds)", "", table_md, "",
          "*image gain*: `iscene-train probe` on the cell's last checkpoint, the share of the flow's instance "
          "loss that its image explains (1 - loss with the image / loss with it zeroed, mean over noise levels "
          "0.1-0.9). Near 0, the cell ignores its image and its metrics measure a shape prior, not how it "
          "uses the image.", ""]
    ref = spec.get("paper_reference") or {}
    if ref.get("rows"):
        L += [f"## Next to the paper: {ref.get('title', '')}", "", "| paper cell | paper | ours (cell) | ours |", "| --- | --- | --- | --- |"]
        groups = {g["group"]: g for g in doc["groups"]}
        for pr in ref["rows"]:
            ours = groups.get(pr.get("group", ""), {})
            vals_p = ", ".join(f"{k} {v}" for k, v in (pr.get("values") or {}).items())
            vals_o = ", ".join(f"{k.split('/')[-1]} {v['mean']:.4g}" for k, v in (ours.get("metrics") or {}).items()
                               if k.split("/")[-1] in (pr.get("values") or {}) and (not pr.get("bench") or k.startswith(pr["bench"] + "/")))
            L.append(f"| {pr.get('label', '')} | {vals_p} | {pr.get('group', '-')} | {vals_o or 'not available'} |")
        L.append("")
    fit = doc.get("fit") or {}
    if fit:
        L += ["## Scaling fit", ""]
        if fit.get("error"):
            L += [f"No fit of {fit.get('y')} vs {fit.get('x')} on {fit.get('bench')}: {fit['error']}", ""]
        else:
            e = fit["extrapolation"]
            L += [f"{fit['y']} on {fit['bench']} vs {fit['x']}: {fit['model']} with a = {fit['a']:.4g}, "
                  f"b = {fit['b']:.4g} [{fit['ci']['b'][0]:.4g}, {fit['ci']['b'][1]:.4g}], c = {fit['c']:.4g} "
                  f"({int(fit['level'] * 100)}% pairs-bootstrap intervals, {fit['bootstrap_fits']} refits, {fit['points']} points).",
                  f"Extrapolated to {fit['x']} = {e['x']:.4g}: {e['y']:.4g} [{e['lo']:.4g}, {e['hi']:.4g}].", "",
                  f"![scaling fit]({fit['plot']})", ""]
    discussion = Path(study.out) / "DISCUSSION.md"
    if discussion.is_file():  # a person's reading of the numbers, kept across report rebuilds
        L += ["## Discussion (written after the run, from the numbers above)", "", discussion.read_text().strip(), ""]
    if doc["plots"]:
        L += ["## Plots", ""] + [f"- [{p}]({p})" for p in doc["plots"]] + [""]
    failed = [(r["cell"], e) for r in rows for e in r["errors"]]
    shared = [r for sid, r in records.items() if r.get("status") in ("failed", "blocked") and not r.get("cell")]
    if failed or shared:
        L += ["## Failures", ""]
        for r in shared:
            L.append(f"- `{r['id']}` {r['status']}: {r.get('error')}" + (f" (log `{_rel(r['log'], study.out)}`)" if r.get("log") else ""))
        for cell, e in failed:
            L.append(f"- cell `{cell}`, `{e['stage']}` {e['status']}: {e['error']}" + (f" (log `{_rel(e['log'], study.out)}`)" if e.get("log") else ""))
        L.append("")
    return "\n".join(L)
