"""Checkpoints: safetensors weights + EMA, optimizer, step, data position and RNG states.

Each checkpoint is a folder ``ckpt/step_XXXXXXXX`` written as ``.tmp-...`` and renamed, so a crash
never leaves a half-written checkpoint; ``latest`` is found by listing, not by a pointer file.
Weights are safetensors (loadable anywhere without pickle); the optimizer state and RNG states
are tensors and plain numbers saved with ``torch.save`` and read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, model, ema, optimizer, data_position: int, generator: torch.Generator,
                    extra: dict | None = None) -> Path:
    ckpt_root = Path(run_dir) / "ckpt"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_state(model), str(tmp / "model.safetensors"))
    save_file(_state(ema), str(tmp / "ema.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        "loss": generator.get_state()}},
               tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, "data_position": data_position, **(extra or {})}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (Path(run_dir) / "ckpt").glob("step_*") if (p / "meta.json").is_file())
    return found[-1] if found else None


def load_checkpoint(path: Path, model, ema, optimizer, generator: torch.Generator) -> dict:
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    ema.load_state_dict(load_file(str(path / "ema.safetensors")), strict=True)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    generator.set_state(state["rng"]["loss"])
    if torch.cuda.is_available() and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return json.loads((path / "meta.json").read_text())
