"""`iscene-train`: fine-tune TRELLIS stage 1 with SCA on mixed shard datasets.

    iscene-train --mix 3dfront,rand15k --init TRELLIS-image-large --dinov2 dinov2_vitl14_reg --out runs/main
    iscene-train --mix 3dfront:0.3,rand15k:0.7 ...         mix by weight (each source resampled)
    iscene-train --no-sca ...  |  --space world ...          ablations of the paper's table
    iscene-train --config run.yaml --lr 5e-5                 config file + CLI overrides
    iscene-train --out runs/main --resume                    continue exactly where it stopped
    torchrun --nproc_per_node 8 -m train.cli ...             DDP on a node (or several)
    iscene-train --ray-workers 16 --ray-address auto ...     the same training under Ray Train
    iscene-train sweep grid.yaml --out runs/sweep            scaling-law sweep (see train/sweep.py)

Datasets are registered names (``iscene-datagen --name``) or dataset folders.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from train.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iscene-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML or JSON with TrainConfig fields; CLI flags override it")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument(flag, type=kind, default=None, help=f"(default {f.default})")
    p.add_argument("--no-sca", dest="sca", action="store_false", default=None, help="ablation: plain TRELLIS self-attention")
    p.add_argument("--resume", dest="resume", action="store_true", default=None, help="continue from the latest checkpoint in --out")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="fp32 on GPU")
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", action="store_true", default=None)
    p.add_argument("--ray-workers", type=int, default=0, help="run under Ray Train with this many workers")
    p.add_argument("--ray-address", default=None, help="Ray cluster address for --ray-workers")
    p.add_argument("--ray-gpu", action="store_true", help="one GPU per Ray Train worker")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sweep":
        from train.sweep import main as sweep_main

        return sweep_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"iscene-train: {exc}", file=sys.stderr)
        return 2
    if args.ray_workers:
        from train.ray_train import train_with_ray

        train_with_ray(cfg, args.ray_workers, use_gpu=args.ray_gpu, address=args.ray_address)
        return 0
    from train.trainer import train

    try:
        train(cfg)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        print(f"iscene-train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
