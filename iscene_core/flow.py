"""Rectified flow with TRELLIS's conventions: the training loss and the Euler sampler.

- Path: ``x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps``; the model predicts the velocity
  ``v = (1 - sigma_min) eps - x0``; loss = MSE. ``t ~ sigmoid(N(mean, std))`` (logit-normal).
- The model receives ``1000 t``, as upstream.
- Sampling: Euler on ``t_i = linspace(1, 0, steps + 1)`` rescaled as ``r t / (1 + (r - 1) t)``,
  ``x_prev = x_t - (t - t_prev) v``; classifier-free guidance ``(1 + s) v_cond - s v_uncond`` only for
  t inside ``cfg_interval``.
- Joint scene + instance sampling: all rows (a scene and its instances) advance together on one time
  grid, so each instance attends (through SCA) to its scene at the same noise level. The same is done
  in training: one t per scene group (see ``group_t``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

__all__ = ["sample_t", "group_t", "noisy_sample", "velocity_target", "flow_matching_loss", "loss_row_weights", "time_grid",
           "euler_sample"]


def sample_t(n: int, *, mean: float = 1.0, std: float = 1.0, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """Logit-normal timesteps in (0, 1): TRELLIS's t-sampling (mean 1, std 1)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def group_t(t_scene: torch.Tensor, scene_index: torch.Tensor | None) -> torch.Tensor:
    """Broadcast one t per scene to every row of its group (rows index by ``scene_index``)."""
    return t_scene if scene_index is None else t_scene[scene_index]


def noisy_sample(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, sigma_min: float = 1e-5) -> torch.Tensor:
    t = t.view(-1, *[1] * (x0.dim() - 1))
    return (1 - t) * x0 + (sigma_min + (1 - sigma_min) * t) * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor, sigma_min: float = 1e-5) -> torch.Tensor:
    return (1 - sigma_min) * eps - x0


def flow_matching_loss(
    model: nn.Module,
    x0: torch.Tensor,
    cond: torch.Tensor,
    *,
    scene_index: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    neg_cond: torch.Tensor | None = None,
    p_uncond: float = 0.1,
    sigma_min: float = 1e-5,
    generator: torch.Generator | None = None,
    row_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional flow-matching loss. Returns (mean over weighted rows, per-row MSE (B,)).

    Shapes: ``x0`` (B, 8, 16, 16, 16) latents of B rows (scenes and instances), ``cond`` (B, L, C)
    image tokens, ``scene_index`` (B,) long (row of each row's scene), ``t`` (B,) in (0, 1).
    ``t`` defaults to logit-normal samples, one per scene group when ``scene_index`` is given.
    Condition dropout replaces conditions by ``neg_cond`` (zeros by default) with probability
    ``p_uncond`` per *scene group*: a scene and all its instances lose their images together, the
    joint state the guided sampler's unconditional pass uses (``euler_sample`` makes every row
    unconditional at once). Without ``scene_index`` each row is its own group.
    """
    b = x0.shape[0]
    device = x0.device
    if t is None:
        t = group_t(sample_t(b, generator=generator, device=device), scene_index)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    if p_uncond > 0:
        drop = group_t(torch.rand(b, generator=generator, device=device) < p_uncond, scene_index)  # the scene row's draw
        uncond = torch.zeros_like(cond) if neg_cond is None else neg_cond.expand_as(cond)
        cond = torch.where(drop.view(-1, *[1] * (cond.dim() - 1)), uncond, cond)
    x_t = noisy_sample(x0, noise, t, sigma_min)
    pred = model(x_t, t * 1000, cond, scene_index=scene_index)
    per_row = ((pred.float() - velocity_target(x0, noise, sigma_min).float()) ** 2).flatten(1).mean(dim=1)
    if row_weight is None:
        return per_row.mean(), per_row
    w = row_weight.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1e-12), per_row


def loss_row_weights(is_scene: torch.Tensor, scene_index: torch.Tensor, mode: str = "groups",
                     scene_weight: float = 0.5) -> torch.Tensor:
    """Per-row loss weights (B,) for rows made of scene groups.

    ``groups``: every scene group weighs 1 in total: its scene row ``scene_weight`` and its instance
    rows share ``1 - scene_weight`` equally (a group without instances gives its scene the whole 1),
    so a scene with six instances counts as much as one with a single instance. ``rows``: every row
    weighs 1. Normalise by the weights' sum over the *global* batch so that data-parallel ranks
    with fewer rows do not weigh more (see ``train.trainer``).
    """
    if mode == "rows":
        return torch.ones(is_scene.shape[0], device=is_scene.device)
    if mode != "groups":
        raise ValueError(f"loss weighting must be 'groups' or 'rows', got {mode!r}")
    n_inst = torch.zeros(is_scene.shape[0], device=is_scene.device).index_add_(
        0, scene_index, (~is_scene).float())  # instances per scene row
    inst_w = (1 - scene_weight) / n_inst[scene_index].clamp_min(1)
    scene_w = torch.where(n_inst > 0, torch.full_like(n_inst, scene_weight), torch.ones_like(n_inst))
    return torch.where(is_scene, scene_w, inst_w)


def time_grid(steps: int, rescale_t: float = 1.0) -> np.ndarray:
    """The sampler's time points from 1 down to 0 (``steps + 1`` values)."""
    t = np.linspace(1.0, 0.0, steps + 1)
    return rescale_t * t / (1 + (rescale_t - 1) * t)


@torch.no_grad()
def euler_sample(
    model: nn.Module | Callable,
    noise: torch.Tensor,
    cond: torch.Tensor,
    neg_cond: torch.Tensor | None,
    *,
    scene_index: torch.Tensor | None = None,
    steps: int = 25,
    cfg_strength: float = 5.0,
    cfg_interval: tuple[float, float] = (0.5, 1.0),
    rescale_t: float = 3.0,
    sigma_min: float = 1e-5,
    progress: bool = False,
) -> dict:
    """Euler sampling with guidance interval. Returns ``{"samples", "pred_x0": [...], "pred_x_t": [...]}``.

    Guided steps run the conditional and unconditional branches as one doubled batch (one model
    call per step rather than two), with ``scene_index`` offset for the second half so each copy
    attends to its own scene.
    """
    x = noise
    b = x.shape[0]
    if cond.shape[0] == 1 and b > 1:
        cond = cond.expand(b, *cond.shape[1:])
    if neg_cond is None:
        neg_cond = torch.zeros_like(cond)
    elif neg_cond.shape[0] == 1 and b > 1:
        neg_cond = neg_cond.expand(b, *neg_cond.shape[1:])
    grid = time_grid(steps, rescale_t)
    out = {"samples": None, "pred_x0": [], "pred_x_t": []}
    pairs = list(zip(grid[:-1], grid[1:]))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="sampling")
    for t, t_prev in pairs:
        tt = torch.full((b,), 1000.0 * float(t), device=x.device, dtype=torch.float32)
        if cfg_strength > 0 and cfg_interval[0] <= t <= cfg_interval[1]:
            si = None if scene_index is None else torch.cat([scene_index, scene_index + b])
            v_both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, neg_cond]), scene_index=si)
            v_c, v_u = v_both[:b], v_both[b:]
            v = (1 + cfg_strength) * v_c - cfg_strength * v_u
        else:
            v = model(x, tt, cond, scene_index=scene_index)
        out["pred_x0"].append((1 - sigma_min) * x - (sigma_min + (1 - sigma_min) * float(t)) * v)
        x = x - (float(t) - float(t_prev)) * v
        out["pred_x_t"].append(x)
    out["samples"] = x
    return out
