"""`iscene-sweep`: run a study (data -> VAE -> train -> eval per cell) and write its report.

    iscene-sweep studies/ablation-nano.yaml --out studies/ablation-nano          # local Ray
    iscene-sweep studies/scaling-L.yaml --out studies/scaling-L --address auto   # a Ray cluster
    iscene-sweep studies/ablation-nano.yaml --out /tmp/smoke --smoke             # every cell shrunk
    iscene-sweep STUDY.yaml --out DIR --report-only                              # rebuild REPORT.md
    iscene-train sweep ...                                                       # the same command

A study is a YAML spec (docs/STUDIES.md): datasets (made or reused; sizes as prefixes such as
``rand25k@5000``), benches, an optional VAE, and a grid of cells (ablation flags, data mixes and
sizes, model sizes, steps, seeds). Each stage is a Ray task (``--executor local`` runs them in this
process). A finished stage is recognised by its done record in ``OUT/state/`` and never redone, so
rerunning a killed sweep continues where it stopped; a failing stage stops only the stages that
need it, and is reported with its log. Results: ``OUT/REPORT.md``, ``results.json``/``.csv``,
``plots/``, ``scaling_fit.png``. Exit code 0 when every stage finished, 1 when some failed,
2 for a bad spec or arguments.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iscene-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", type=Path, help="study spec (YAML), e.g. studies/ablation-nano.yaml")
    p.add_argument("--out", type=Path, required=True, help="study folder: data/, vae/, cells/, state/, logs/, REPORT.md")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: a local Ray started here")
    p.add_argument("--executor", choices=["ray", "local"], default="ray", help="ray: every stage a Ray task; local: in this process, in order")
    p.add_argument("--smoke", action="store_true", help="shrink every cell to a few scenes and a few steps (checks the chain runs)")
    p.add_argument("--dry-run", action="store_true", help="list the stages and whether each is already done; run nothing")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the stage records; run nothing")
    p.add_argument("--reuse", type=Path, action="append", default=[],
                   help="another study folder whose finished stages with identical inputs are adopted instead of rerun "
                        "(same data, VAE or cell in two studies; repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _print_progress(sid: str, rec: dict) -> None:
    extra = f": {rec.get('error')}" if rec["status"] in ("failed", "blocked") else ""
    secs = f" ({rec['seconds']:.0f} s)" if rec["status"] == "ok" and rec.get("seconds") is not None else ""
    print(f"[{rec['status']:>7}] {sid}{secs}{extra}", flush=True)


def run_study(study_path: Path, out: Path, *, runners: dict | None = None, executor: str = "ray", address: str | None = None,
              smoke: bool = False, report: bool = True, progress=_print_progress, reuse: list[Path] | None = None) -> dict:
    """Expand, run (skipping finished stages), report; returns ``{"records", "report"}``."""
    from train.study import expand, load_spec
    from train.study_run import RunContext, import_finished, run_local, run_ray
    from train.study_stages import RUNNERS

    spec = load_spec(study_path)
    study = expand(spec, out, smoke=smoke)
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(out=str(out.resolve()), smoke=smoke, address=address, spec=spec)
    runners = {**RUNNERS, **(runners or {})}
    for sid in import_finished(study, out, list(reuse or [])):
        print(f"[adopted] {sid} (finished with identical inputs in a --reuse study)", flush=True)
    t0 = time.time()
    if executor == "local":
        records = run_local(study, runners, ctx, progress=progress)
    else:
        records = run_ray(study, runners, ctx, address=address, progress=progress)
    doc = None
    if report:
        from train.study_report import write_report

        doc = write_report(study, records, time.time() - t0)
    return {"records": records, "report": doc, "study": study}


def _is_legacy_grid(argv: list[str]) -> bool:
    """A YAML holding only ``base``/``grid`` (or ``--launch``): the original grid expander's input."""
    if "--launch" in argv:
        return True
    path = next((a for a in argv if not a.startswith("-")), None)
    if not path or not Path(path).is_file():
        return False
    import yaml

    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        return False
    return isinstance(spec, dict) and bool(spec) and set(spec) <= {"base", "grid"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _is_legacy_grid(argv):
        return legacy_grid_main(argv)
    args = build_parser().parse_args(argv)
    from train.study import StudyError, expand, load_spec, stage_hash
    from train.study_run import read_done

    try:
        spec = load_spec(args.study)
        study = expand(spec, args.out, smoke=args.smoke)
    except (StudyError, ValueError) as exc:
        if args.debug:
            raise
        print(f"iscene-sweep: {exc}", file=sys.stderr)
        return 2
    if args.dry_run or args.report_only:
        memo: dict = {}
        records = {}
        for sid in study.order():
            st = study.stages[sid]
            rec = read_done(args.out, st, stage_hash(st, study.stages, memo))
            records[sid] = {**rec, "status": "cached"} if rec else {"id": sid, "status": "not run", "cell": st.cell}
            if args.dry_run:
                print(f"[{'done' if rec else 'todo':>4}] {sid} ({st.kind}) -> {st.out}")
        if args.report_only:
            from train.study_report import write_report

            write_report(study, records, 0.0)
            print(f"report: {args.out / 'REPORT.md'}")
        return 0
    try:
        res = run_study(args.study, args.out, executor=args.executor, address=args.address, smoke=args.smoke, reuse=args.reuse)
    except (StudyError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"iscene-sweep: {exc}", file=sys.stderr)
        return 2
    recs = res["records"]
    bad = [r for r in recs.values() if r["status"] in ("failed", "blocked")]
    print(f"{len(recs) - len(bad)}/{len(recs)} stages finished; report: {args.out / 'REPORT.md'}")
    return 1 if bad else 0


# ---------------------------------------------------------------- legacy: plain grid of runs --

LEGACY_DOC = '''Scaling-law sweeps: a grid over data mixes, data sizes, model sizes and ablations -> runs.

    iscene-train sweep grid.yaml --out runs/sweep [--launch print|local]

``grid.yaml``: ``base:`` (TrainConfig fields shared by all runs) and ``grid:`` (field -> list of
values). Each combination gets a run folder with its config.yaml; ``commands.sh`` lists one
``iscene-train --config ...`` line per run (submit them to a scheduler, or torchrun each);
``--launch local`` runs them one after another here, skipping runs whose final checkpoint exists.
'''

def expand_grid(grid_file: Path, out: Path) -> list:
    import yaml

    from train.config import TrainConfig

    spec = yaml.safe_load(Path(grid_file).read_text()) or {}
    base, grid = spec.get("base", {}), spec.get("grid", {})
    keys = sorted(grid)
    runs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        name = "-".join(f"{k}={str(v).replace('/', '_').replace(',', '+')}" for k, v in combo.items()) or "base"
        cfg = TrainConfig(**{**base, **combo, "out": str(out / name)})
        cfg.validate()
        runs.append((name, cfg))
    return runs


def legacy_grid_main(argv: list[str] | None = None) -> int:
    """The original grid expander (a YAML of only ``base:`` and ``grid:``): one config per run + commands.sh."""
    p = argparse.ArgumentParser(prog="iscene-train sweep", description=LEGACY_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", type=Path, help="grid file: base (TrainConfig fields) and grid (field -> list)")
    p.add_argument("--out", type=Path, required=True, help="folder for one run folder per combination and commands.sh")
    p.add_argument("--launch", choices=["print", "local"], default="print", help="print: write commands.sh; local: also train each run here")
    args = p.parse_args(argv)
    runs = expand_grid(args.grid, args.out)
    lines = []
    for name, cfg in runs:
        run_dir = Path(cfg.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
        lines.append(f"iscene-train --config {shlex.quote(str(run_dir / 'config.yaml'))} --resume")
    (args.out / "commands.sh").write_text("#!/usr/bin/env bash\nset -e\n" + "\n".join(lines) + "\n")
    print(f"{len(runs)} runs; commands in {args.out / 'commands.sh'}")
    if args.launch == "local":
        from train.checkpoint import latest_checkpoint
        from train.trainer import train

        for name, cfg in runs:
            last = latest_checkpoint(Path(cfg.out))
            if last is not None and int(last.name.split("_")[1]) >= cfg.steps:
                print(f"{name}: done, skipped")
                continue
            cfg.resume = True
            print(f"{name}: training")
            train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
