"""Scaling-law sweeps: a grid over data mixes, data sizes, model sizes and ablations -> runs.

    iscene-train sweep grid.yaml --out runs/sweep [--launch print|local]

``grid.yaml``: ``base:`` (TrainConfig fields shared by all runs) and ``grid:`` (field -> list of
values). Each combination gets a run folder with its config.yaml; ``commands.sh`` lists one
``iscene-train --config ...`` line per run (submit them to a scheduler, or torchrun each);
``--launch local`` runs them one after another here, skipping runs whose final checkpoint exists.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
from pathlib import Path

import yaml

from train.config import TrainConfig


def expand(grid_file: Path, out: Path) -> list[tuple[str, TrainConfig]]:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="iscene-train sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--launch", choices=["print", "local"], default="print")
    args = p.parse_args(argv)
    runs = expand(args.grid, args.out)
    lines = []
    for name, cfg in runs:
        run_dir = Path(cfg.out)
        run_dir.mkdir(parents=True, exist_ok=True)
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
