"""Fine-tune TRELLIS's sparse-structure flow transformer with Scene Context Attention.

Read top to bottom: setup -> one step's named parts -> ``train()``, whose loop is
rows -> latents -> condition -> loss -> step -> EMA -> log -> checkpoint. Each batch holds B
scenes; they become rows ``[scene_b, its instances...]`` with ``scene_index`` pointing each
instance at its scene's row, so one forward pass trains the scene branch and every instance branch
with shared weights (SCA lets instances attend to their scene). One t and one condition-dropout
draw per scene group: a scene and its instances sit at the same noise level and lose their images
together, as in joint guided sampling at inference.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from iscene_core.flow import euler_sample, flow_matching_loss, loss_row_weights
from iscene_core.shards import FolderLock, write_bytes_atomic
from train.checkpoint import (RunExistsError, latest_checkpoint, load_weights, prepare_run_dir, read_resume, restore_rng, rng_state,
                              save_checkpoint)
from train.config import TrainConfig
from train.data import DataConfig, build_loader, check_sources
from train.lr_schedule import lr_at_step
from train.models import build_encoder, build_models, encode_latents, encoder_id, tiny_dinov2  # noqa: F401 (re-export)

# ------------------------------------------------------------------------------------- setup --


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun, Ray Train, or a single process."""
    if dist.is_available() and dist.is_initialized():  # Ray Train sets the process group up itself
        rank, world = dist.get_rank(), dist.get_world_size()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _gather(obj, world: int) -> list:
    """Every rank's ``obj`` on every rank (a list in rank order); ``[obj]`` without DDP."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def choose_latents(cfg: TrainConfig, encoder: torch.nn.Module) -> tuple[str, str | None]:
    """("cache", id) when training reads cached latents, else ("encode", None), per ``--latents``."""
    if cfg.latents == "encode":
        return "encode", None
    from train.latent_cache import missing_caches

    eid = encoder_id(encoder)
    missing = missing_caches(check_sources(cfg.mix), cfg.space, eid)
    if not missing:
        return "cache", eid
    if cfg.latents == "cache":
        raise FileNotFoundError(f"--latents cache: {len(missing)} shard(s) have no latent cache for this encoder ({eid}), e.g. "
                                f"{missing[0]}; run `iscene-train cache-latents --mix {cfg.mix}` with the same model flags")
    return "encode", None


# ---------------------------------------------------------------------------------- one step --


@dataclass
class Rows:
    """One batch as rows (R = scenes + their valid instances).

    ``grids`` (R, 1, 64, 64, 64) occupancy, or (R, 8, 16, 16, 16) latents when ``are_latents``;
    ``images`` (R, 3, S, S); ``scene_index`` (R,) long, the row of each row's scene (scene rows
    point at themselves); ``is_scene`` (R,) bool.
    """

    grids: torch.Tensor
    are_latents: bool
    images: torch.Tensor
    scene_index: torch.Tensor
    is_scene: torch.Tensor


def batch_to_rows(batch: dict, device: torch.device) -> Rows:
    """Scenes and their valid instances as rows, in order ``[scene_0, inst_0.., scene_1, inst_1.., ...]``.

    ``batch`` (see ``train.data.collate``): B scene groups padded to N instance slots -> :class:`Rows`
    with R = B + number of valid instances, e.g. ``scene_occ`` (B, 1, 64, 64, 64) + ``inst_occ``
    (B, N, 1, 64, 64, 64) with ``inst_valid`` (B, N) -> ``grids`` (R, 1, 64, 64, 64).
    """
    are_latents = "scene_lat" in batch
    scene_g, inst_g = (batch["scene_lat"], batch["inst_lat"]) if are_latents else (batch["scene_occ"], batch["inst_occ"])
    grids, img, scene_index, is_scene = [], [], [], []
    for b in range(scene_g.shape[0]):
        row = len(grids)
        grids.append(scene_g[b])
        img.append(batch["scene_image"][b])
        scene_index.append(row)
        is_scene.append(True)
        for j in torch.nonzero(batch["inst_valid"][b]).flatten().tolist():
            grids.append(inst_g[b, j])
            img.append(batch["inst_images"][b, j])
            scene_index.append(row)
            is_scene.append(False)
    return Rows(torch.stack(grids).to(device), are_latents, torch.stack(img).to(device),
                torch.tensor(scene_index, device=device), torch.tensor(is_scene, device=device))


def latents_of(rows: Rows, encoder: torch.nn.Module) -> torch.Tensor:
    """(R, 8, 16, 16, 16) fp32: cached latents as they are, or the frozen encoder's (fp32, as inference)."""
    return rows.grids.float() if rows.are_latents else encode_latents(encoder, rows.grids)


def condition_of(rows: Rows, cond_model) -> torch.Tensor:
    """(R, L, C) fp32 image tokens, computed exactly as ``iscene-infer`` computes them (frozen DINOv2
    without gradients; a ``--conditioner learned`` encoder with them)."""
    return cond_model(rows.images)


def loss_of(model, x0: torch.Tensor, cond: torch.Tensor, rows: Rows, cfg: TrainConfig, gen: torch.Generator, world: int,
            autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-row MSE): rows weighted per ``--loss-weighting``, normalised over the global batch."""
    with autocast:
        _, per_row = flow_matching_loss(model, x0, cond, scene_index=rows.scene_index, p_uncond=cfg.p_uncond,
                                        sigma_min=cfg.sigma_min, generator=gen)
    w = loss_row_weights(rows.is_scene, rows.scene_index, cfg.loss_weighting, cfg.scene_weight)
    total = w.sum().detach()
    if world > 1:  # DDP averages the ranks' gradients: divide by the mean weight sum, not this rank's
        dist.all_reduce(total)
        total = total / world
    return (per_row * w).sum() / total, per_row


def lr_at(step: int, cfg: TrainConfig) -> float:
    return lr_at_step(cfg.lr, step, cfg.steps, warmup=cfg.warmup_steps, schedule=cfg.lr_schedule)


def optimizer_step(params: list[torch.nn.Parameter], opt, loss: torch.Tensor, step: int, cfg: TrainConfig, keys: list[str]) -> float:
    """Backward, clip, step; returns the gradient norm. A non-finite loss stops the run naming the batch."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"step {step}: loss is {loss.item()} (batch keys {keys})")
    opt.step()
    return float(grad_norm)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)


def render_voxels_png(occ: torch.Tensor) -> torch.Tensor:
    """(R, R, R) bool -> (3, H, W) uint8 image of the occupied voxels (for TensorBoard)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    idx = occ.nonzero().cpu().numpy()
    fig = plt.figure(figsize=(3, 3))
    ax = fig.add_subplot(projection="3d")
    if len(idx):
        ax.scatter(idx[:, 0], idx[:, 1], idx[:, 2], s=1, c=idx[:, 2], cmap="viridis")
    r = occ.shape[0]
    ax.set(xlim=(0, r), ylim=(0, r), zlim=(0, r))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1)


class RunLog:
    """log.jsonl + TensorBoard on rank 0; bad-sample warnings from every rank; throughput windows."""

    def __init__(self, out: Path, rank: int, world: int):
        self.out, self.rank, self.world = out, rank, world
        self.path = out / "log.jsonl"
        self.writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))
        self.bad_total, self.seen, self.seen_by_role = 0, 0, {}
        self.t_last, self.wait, self.rows, self.steps = time.perf_counter(), 0.0, 0, 0

    def _append(self, record: dict) -> None:
        with open(self.path, "a") as f:  # one short line per write: O_APPEND keeps lines whole across ranks
            f.write(json.dumps(record) + "\n")

    def data(self, batch: dict, step: int) -> None:
        """Count and report the samples the data pipeline rejected while making this batch."""
        self.seen_by_role[batch.get("role", 0)] = int(batch.get("seen", 0))  # each data worker counts its own reads
        self.seen = sum(self.seen_by_role.values())
        for ev in batch.get("bad", []):
            self.bad_total += 1
            print(f"iscene-train: warning: skipped bad sample {ev['key']} of {ev['shard']}: {ev['reason']}", file=sys.stderr)
            self._append({"event": "bad_sample", "step": step, "rank": self.rank, **ev})

    def step_done(self, rows: int, wait: float) -> None:
        self.rows, self.steps, self.wait = self.rows + rows, self.steps + 1, self.wait + wait

    def metrics(self, step: int, loss, per_row, rows: Rows, grad_norm: float, lr: float, sources: list[str]) -> dict:
        counts = torch.tensor([float(self.bad_total), float(self.seen)])
        if self.world > 1:
            dist.all_reduce(counts)
        if self.rank != 0:
            return {}
        dt = time.perf_counter() - self.t_last
        inst = ~rows.is_scene
        m = {"step": step, "loss": loss.item(), "loss_scene": per_row[rows.is_scene].mean().item(),
             "loss_instance": per_row[inst].mean().item() if inst.any() else float("nan"), "grad_norm": grad_norm, "lr": lr,
             "rows_per_s": self.rows / dt, "steps_per_s": self.steps / dt, "data_wait_fraction": self.wait / dt,
             "bad_samples": int(counts[0]), "samples_read": int(counts[1]), "sources": sources}
        for k, v in m.items():
            if isinstance(v, (int, float)) and math.isfinite(v) and k != "step":
                self.writer.add_scalar(f"train/{k}" if k not in ("bad_samples", "samples_read") else f"data/{k}", v, step)
        self._append(m)
        self.t_last, self.wait, self.rows, self.steps = time.perf_counter(), 0.0, 0, 0
        return m

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# -------------------------------------------------------------------------------------- train --


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the last logged metrics. Rank 0 logs and writes checkpoints."""
    cfg.validate()
    check_sources(cfg.mix)  # an unknown or empty dataset is reported before the run folder is touched
    rank, world, device = setup_distributed()
    out = Path(cfg.out)
    with ExitStack() as stack:
        # --- run folder: refuse to mix runs, clear on --overwrite, one trainer per folder
        refusal: BaseException | None = None
        if rank == 0:
            try:
                prepare_run_dir(out, cfg.resume, cfg.overwrite)
                stack.enter_context(FolderLock(out, "iscene-train", wait=False))
                write_bytes_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=1).encode())
            except Exception as exc:  # every rank must hear it, or the others wait at the next collective forever
                refusal = exc
        said = _gather(None if refusal is None else f"{type(refusal).__name__}: {refusal}", world)[0]
        if refusal is not None:
            raise refusal
        if said is not None:
            raise RunExistsError(f"rank 0 refused the run folder {out}: {said}")
        nw = max(1, cfg.num_workers)
        ckpt = latest_checkpoint(out) if cfg.resume else None
        meta, rng, positions = read_resume(ckpt, rank=rank, world_size=world, num_workers=cfg.num_workers) if ckpt else ({}, None, None)
        step = int(meta.get("step", 0))

        # --- data first: an empty or unusable dataset stops here, before any model is built
        encoder = build_encoder(cfg) if cfg.latents != "encode" else None
        latents, eid = choose_latents(cfg, encoder) if encoder is not None else ("encode", None)
        data_cfg = DataConfig.from_train(cfg, latents=latents, encoder_id=eid)
        loader = iter(build_loader(cfg.mix, data_cfg, rank=rank, world_size=world, start_batch=step, positions=positions))
        first = next(loader)

        # --- models, optimizer, this rank's random streams
        flow, encoder, decoder, cond_model = build_models(cfg, device, encoder=encoder)
        trained = {"flow": (flow, copy.deepcopy(flow).requires_grad_(False))}
        if cfg.conditioner == "learned":  # trained jointly, with its own EMA
            trained["conditioner"] = (cond_model, copy.deepcopy(cond_model).requires_grad_(False))
        ema = trained["flow"][1]
        params = [q for m, _ in trained.values() for q in m.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
        extra_modules = {"conditioner": cond_model, "conditioner_ema": trained["conditioner"][1]} if "conditioner" in trained else {}
        if ckpt is not None:
            load_weights(ckpt, flow, ema, opt, extra_modules)
            restore_rng(rng, gen)
            if rank == 0:
                print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
        model = torch.nn.parallel.DistributedDataParallel(flow) if world > 1 else flow
        if world > 1 and cfg.conditioner == "learned":
            cond_model = torch.nn.parallel.DistributedDataParallel(cond_model)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                  enabled=cfg.bf16 and (device.type == "cuda" or (device.type == "cpu" and cfg.cpu_bf16)))
        log = RunLog(out, rank, world)
        data_pos: list = list(positions) if positions is not None else [None] * nw
        metrics: dict = {}

        while step < cfg.steps:
            t0 = time.perf_counter()
            batch, first = (first, None) if first is not None else (next(loader), None)
            wait = time.perf_counter() - t0
            data_pos[batch["role"]] = batch["position"]
            log.data(batch, step)
            rows = batch_to_rows(batch, device)                                     # rows
            x0 = latents_of(rows, encoder)                                          # latents
            cond = condition_of(rows, cond_model)                                   # condition
            loss, per_row = loss_of(model, x0, cond, rows, cfg, gen, world, autocast)  # loss
            grad_norm = optimizer_step(params, opt, loss, step, cfg, batch["key"])  # step
            for m, m_ema in trained.values():                                       # EMA
                ema_update(m_ema, m, cfg.ema_decay)
            step += 1
            log.step_done(len(rows.is_scene), wait)
            if step % cfg.log_every == 0 or step == cfg.steps:                      # log
                metrics = log.metrics(step, loss, per_row, rows, grad_norm, lr_at(step - 1, cfg), batch["source"]) or metrics
            if rank == 0 and cfg.sample_every and step % cfg.sample_every == 0:
                _log_samples(log, ema, decoder, x0, cond, rows, gen, cfg, step)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:                     # checkpoint
                _checkpoint(out, step, flow, ema, opt, gen, data_pos, rank, world, cfg, extra_modules)
        log.close()
        _barrier(world)
    return metrics


def _checkpoint(out: Path, step: int, flow, ema, opt, gen, data_pos: list, rank: int, world: int, cfg: TrainConfig,
                modules: dict | None = None) -> None:
    """Every rank's RNG and data position gathered to rank 0, which writes the checkpoint."""
    rngs = _gather(rng_state(gen), world)
    positions = _gather(data_pos, world)
    if rank == 0:
        save_checkpoint(out, step, flow, ema, opt, rngs, {"world_size": world, "num_workers": cfg.num_workers, "ranks": positions},
                        extra={"sca": cfg.sca, "mix": cfg.mix, "conditioner": cfg.conditioner, "instance_view": cfg.instance_view},
                        modules=modules)


def _log_samples(log: RunLog, ema, decoder, x0, cond, rows: Rows, gen, cfg: TrainConfig, step: int) -> None:
    """EMA samples of the batch's first scene group, decoded and drawn to TensorBoard."""
    n = int((rows.scene_index == 0).sum())
    noise = torch.randn(x0[:n].shape, generator=gen, device=x0.device)
    z = euler_sample(ema, noise, cond[:n], None, scene_index=rows.scene_index[:n], steps=cfg.sample_steps)["samples"]
    logits = decoder(z)
    for r in range(min(n, 3)):
        log.writer.add_image(f"samples/{'scene' if r == 0 else f'instance{r}'}", render_voxels_png(logits[r, 0] > 0), step)
