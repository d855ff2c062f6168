"""`iscene-train`: fine-tune TRELLIS stage 1 with SCA on mixed shard datasets.

    iscene-train --mix 3dfront,rand15k --init TRELLIS-image-large --dinov2 dinov2-with-registers-large --out runs/main
    iscene-train --mix 3dfront:0.3,rand15k:0.7 ...         mix by weight (each source resampled)
    iscene-train --no-sca ...  |  --space world ...          ablations of the paper's table
    iscene-train --config run.yaml --lr 5e-5                 config file + CLI overrides
    iscene-train --out runs/main --resume                    continue exactly where it stopped
    torchrun --nproc_per_node 8 -m train.cli ...             DDP on a node (or several)
    iscene-train --ray-workers 16 --ray-address auto ...     the same training under Ray Train
    iscene-train cache-latents --mix 3dfront,rand15k --init TRELLIS-image-large   encode every grid once
    iscene-train sweep grid.yaml --out runs/sweep            scaling-law sweep (see train/sweep.py)
    iscene-train probe runs/main                             does the model use its image? (train/probe.py)

Datasets are registered names (``iscene-datagen --name``) or dataset folders. Exit codes: 0 done,
2 bad arguments or paths (one line on stderr), 1 the run failed (one line; --debug shows the
traceback).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from train.config import TrainConfig

PROG = "iscene-train"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (and exit 2), without the usage block."""

    def error(self, message: str):  # noqa: D401
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _add_config_flags(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per TrainConfig field, its help taken from the field (every flag says what it does)."""
    for f in fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"].replace("%", "%%")
        if str(f.type).startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help_text} (default: {'auto' if f.default is None else ('on' if f.default else 'off')})")
            continue
        kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
        choices = f.metadata.get("choices")
        default = "" if f.default is None else f" (default: {f.default})"
        p.add_argument(flag, type=kind, default=None, choices=choices, metavar=None if choices else f.name.upper(),
                       help=help_text + default)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML or JSON file of the fields below; flags given on the command line override it")
    _add_config_flags(p)
    p.add_argument("--ray-workers", type=int, default=0, help="run under Ray Train with this many worker processes (0: no Ray)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address for --ray-workers (default: start or join a local one)")
    p.add_argument("--ray-gpu", action="store_true", help="give each Ray Train worker one GPU")
    p.add_argument("--debug", action="store_true", help="show the full traceback when the run fails")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.from_file(args.config) if getattr(args, "config", None) else TrainConfig()
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    cfg.validate()
    return cfg


def check_paths(cfg: TrainConfig) -> None:
    """Paths the user named must exist before anything heavy starts (exit 2 otherwise)."""
    for flag, value in (("--init", cfg.init), ("--dinov2", cfg.dinov2)):
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{flag} {value}: no such file or folder")
    if cfg.encoder is not None and not Path(f"{cfg.encoder}.json").is_file():
        raise FileNotFoundError(f"--encoder {cfg.encoder}: {cfg.encoder}.json not found (give the prefix of X.json + X.safetensors)")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FileNotFoundError(f"--out {out}: is a file, expected a run folder")


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'your arguments, paths or data index are wrong' (exit 2)."""
    from iscene_core.shards import DatasetError
    from train.checkpoint import ResumeMismatch, RunExistsError

    return (KeyError, FileNotFoundError, NotADirectoryError, PermissionError, DatasetError, RunExistsError, ResumeMismatch,
            ValueError)


def _run(fn, debug: bool) -> int:
    """Call ``fn``; map failures to one line + exit code (2 bad input, 1 failed run, 130 interrupted)."""
    try:
        fn()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (rerun with --resume to continue from the last checkpoint)", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        from iscene_core.shards import LockedError
        from train.data import worker_message
        from train.shard_io import DataError

        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else worker_message(exc)
        if isinstance(exc, (DataError, LockedError)) or "DataError" in str(exc).split("\n")[0]:
            print(f"{PROG}: {msg}", file=sys.stderr)
            return 1
        if isinstance(exc, _bad_input_errors()):
            print(f"{PROG}: {msg}", file=sys.stderr)
            return 2
        print(f"{PROG}: failed: {type(exc).__name__}: {msg} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------- subcommands --

CACHE_FLAGS = ("mix", "init", "encoder", "model_size", "seed", "space", "verify")


def cache_latents_main(argv: list[str]) -> int:
    """``iscene-train cache-latents``: encode every grid of --mix once, beside its shard."""
    p = _Parser(prog=f"{PROG} cache-latents", description=__doc__.split("\n\n")[0] + "\n\n" + _cache_doc(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML or JSON TrainConfig of the run that will read the cache (its model flags are used)")
    _add_config_flags(p, CACHE_FLAGS)
    p.add_argument("--device", default=None, help="torch device for the encoder (default: cuda if available, else cpu)")
    p.add_argument("--debug", action="store_true", help="show the full traceback when caching fails")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 2:
            return 2
        raise
    try:
        cfg = config_from_args(args)
        check_paths(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{PROG} cache-latents: {exc}", file=sys.stderr)
        return 2

    def go():
        import torch

        from train.latent_cache import cache_latents

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        r = cache_latents(cfg, device=device)
        print(f"{r['shards_written']} shard caches written ({r['shards_already_cached']} already there), {r['samples']} samples, "
              f"{r['invalid_skipped']} invalid skipped; encoder {r['encoder_id']}")

    return _run(go, args.debug)


def _cache_doc() -> str:
    return ("Writes <shard>.latents-<space>-<encoder id>.npz beside every shard of --mix (resumable: existing caches are "
            "kept). Train from them with `iscene-train --latents cache` (or the default --latents auto) and the same model flags.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sweep":
        from train.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "vae":
        from train.vae import main as vae_main

        return vae_main(argv[1:])
    if argv and argv[0] == "cache-latents":
        return cache_latents_main(argv[1:])
    if argv and argv[0] == "probe":
        from train.probe import main as probe_main

        return probe_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # bad arguments were reported in one line; return the code to callers of main()
        if exc.code == 2:
            return 2
        raise
    try:
        cfg = config_from_args(args)
        check_paths(cfg)
        if args.ray_workers < 0:
            raise ValueError(f"--ray-workers must be >= 0, got {args.ray_workers}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.ray_workers:
        def go():
            from train.ray_train import train_with_ray

            train_with_ray(cfg, args.ray_workers, use_gpu=args.ray_gpu, address=args.ray_address)
    else:
        def go():
            from train.trainer import train

            train(cfg)
    return _run(go, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
