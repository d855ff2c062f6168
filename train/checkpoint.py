"""Checkpoints: safetensors weights + EMA, optimizer, step, every rank's RNG and data position.

Each checkpoint is a folder ``ckpt/step_XXXXXXXX`` written as ``.tmp-...`` and renamed, so a crash
never leaves a half-written checkpoint (stale ``.tmp-*`` folders of a killed run are removed when
the next run starts); ``latest`` is found by listing, not by a pointer file.

- ``model.safetensors``, ``ema.safetensors``: weights (loadable anywhere without pickle);
- ``state.pt``: optimizer state and, *per rank*, the torch / CUDA / loss-generator RNG states
  (tensors and plain numbers, read back with ``weights_only=True``). Every rank draws its own t,
  noise and condition dropout, so every rank's generator is saved and restored;
- ``data.json``: the data stream position of every data worker of every rank (``train.data``),
  with the world size and worker count it belongs to;
- ``meta.json``: step, world size, workers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from iscene_core.shards import write_json_atomic

RUN_FILES = ("config.json", "log.jsonl")
RUN_DIRS = ("ckpt", "tb")


class RunExistsError(ValueError):
    """--out holds a run and neither --resume nor --overwrite was given."""


class ResumeMismatch(ValueError):
    """A checkpoint that this run cannot continue exactly (another world size or worker count)."""


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def rng_state(generator: torch.Generator) -> dict:
    """This process's RNG states: torch CPU, CUDA (all devices) and the loss generator."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loss": generator.get_state().cpu()}


def holds_run(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return any((run_dir / f).exists() for f in RUN_FILES) or any(p for p in (run_dir / "ckpt").glob("step_*"))


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one; clear it with ``overwrite``; drop stale temp checkpoints."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"--out {run_dir} is a file, expected a run folder")
    if holds_run(run_dir) and not resume:
        if not overwrite:
            raise RunExistsError(f"--out {run_dir} already holds a run: pass --resume to continue it or --overwrite to replace it")
        for f in RUN_FILES:
            (run_dir / f).unlink(missing_ok=True)
        for d in RUN_DIRS:
            shutil.rmtree(run_dir / d, ignore_errors=True)
    for stale in (run_dir / "ckpt").glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, model, ema, optimizer, rank_rng: list[dict], data: dict,
                    extra: dict | None = None, modules: dict[str, torch.nn.Module] | None = None) -> Path:
    """Write ``ckpt/step_<step>``; ``rank_rng[r]`` = rank r's :func:`rng_state`, ``data`` = positions.

    ``modules``: further trained modules saved as ``<name>.safetensors`` (e.g. a learned conditioner
    and its EMA); a module with a ``config()`` also gets ``<name>.json`` to rebuild it from.
    """
    ckpt_root = Path(run_dir) / "ckpt"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_state(model), str(tmp / "model.safetensors"))
    save_file(_state(ema), str(tmp / "ema.safetensors"))
    for name, module in (modules or {}).items():
        save_file(_state(module), str(tmp / f"{name}.safetensors"))
        if hasattr(module, "config"):
            write_json_atomic(tmp / f"{name}.json", {"name": type(module).__name__, "args": module.config()})
    torch.save({"optimizer": optimizer.state_dict(), "ranks": rank_rng}, tmp / "state.pt")
    write_json_atomic(tmp / "data.json", data)
    write_json_atomic(tmp / "meta.json", {"step": step, "world_size": len(rank_rng), "num_workers": data.get("num_workers"),
                                          **(extra or {})})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (Path(run_dir) / "ckpt").glob("step_*") if (p / "meta.json").is_file())
    return found[-1] if found else None


def read_resume(path: Path, *, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> tuple[dict, dict, list | None]:
    """(meta, this rank's RNG states, this rank's data positions) of a checkpoint, checked first.

    Raises :class:`ResumeMismatch` when the checkpoint was written by another number of processes
    or data workers: the data partition and the per-rank random streams would not continue.
    """
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    state = torch.load(path / "state.pt", weights_only=True)
    ranks = state.get("ranks") or [state["rng"]]  # checkpoints before per-rank states held one
    if len(ranks) != world_size:
        raise ResumeMismatch(f"{path} was written by {len(ranks)} training process(es), this run has {world_size}: resume with "
                             f"the same number of processes (the data split and every rank's random stream depend on it)")
    positions = None
    if (path / "data.json").is_file():
        data = json.loads((path / "data.json").read_text())
        if max(1, int(data.get("num_workers", 0))) != max(1, num_workers):
            raise ResumeMismatch(f"{path} was written with --num-workers {data.get('num_workers')}, this run has {num_workers}: "
                                 f"resume with --num-workers {data.get('num_workers')} (each worker reads its own part of the data)")
        positions = data["ranks"][rank]
    return meta, ranks[rank], positions


def load_weights(path: Path, model, ema, optimizer, modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Model and EMA weights (strict), further ``modules`` and the optimizer state of a checkpoint."""
    path = Path(path)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    ema.load_state_dict(load_file(str(path / "ema.safetensors")), strict=True)
    for name, module in (modules or {}).items():
        if not (path / f"{name}.safetensors").is_file():
            raise ResumeMismatch(f"{path} has no {name}.safetensors: it was trained with another --conditioner")
        module.load_state_dict(load_file(str(path / f"{name}.safetensors")), strict=True)
    optimizer.load_state_dict(torch.load(path / "state.pt", weights_only=True)["optimizer"])


def restore_rng(states: dict, generator: torch.Generator) -> None:
    """Set this process's torch / CUDA RNG and the loss generator to a saved :func:`rng_state`."""
    torch.set_rng_state(states["torch"])
    generator.set_state(states["loss"].to(generator.get_state().device))
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
