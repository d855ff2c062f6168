"""Fine-tune TRELLIS's sparse-structure flow transformer with Scene Context Attention.

Read top to bottom: setup -> models -> data -> loop (rows, latents, condition, loss, step, EMA,
log, checkpoint). Each batch holds B scenes; they become rows ``[scene_b, its instances...]`` with
``scene_index`` pointing each instance at its scene's row, so one forward pass trains the scene
branch and every instance branch with shared weights (SCA lets instances attend to their scene).
One t is drawn per scene group: a scene and its instances sit at the same noise level, as in joint
sampling at inference.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from iscene_core.flow import euler_sample, flow_matching_loss
from iscene_core.trellis import (SparseStructureDecoder, SparseStructureEncoder, SparseStructureFlowModel, load_model,
                                 load_pipeline)
from train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from train.config import MODEL_SIZES, TrainConfig
from train.data import DataConfig, build_loader

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


def tiny_dinov2(channels: int, image_size: int, seed: int = 0):
    """A small random DINOv2-with-registers (for tests and smoke runs without downloaded weights)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from iscene_core.conditioning import DinoConditioner

    torch.manual_seed(seed)
    cfg = Dinov2WithRegistersConfig(hidden_size=channels, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * channels,
                                    patch_size=14, image_size=image_size, num_register_tokens=4)
    return DinoConditioner(Dinov2WithRegistersModel(cfg), "transformers")


def build_models(cfg: TrainConfig, device: torch.device):
    """(flow, encoder, decoder, conditioner); flow weights stay fp32 (autocast does bf16)."""
    if cfg.init:
        # fp32 master weights: fine-tuning the released fp16 weights directly gave NaNs upstream
        pipe = load_pipeline(cfg.init, use_fp16=False)
        flow, decoder, encoder = pipe["flow"], pipe["decoder"], pipe["encoder"]
        if encoder is None and cfg.encoder:
            encoder = load_model(cfg.encoder)
        if encoder is None:
            raise FileNotFoundError(f"{cfg.init}: no ckpts/ss_enc_conv3d_16l8_fp16.* and no --encoder given; the encoder makes training latents")
    else:
        torch.manual_seed(cfg.seed)
        size = MODEL_SIZES[cfg.model_size]
        flow = SparseStructureFlowModel(resolution=16, in_channels=8, out_channels=8, pe_mode="ape",
                                        qk_rms_norm=True, mlp_ratio=4, **size)
        vae = dict(latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1)
        encoder = load_model(cfg.encoder) if cfg.encoder else SparseStructureEncoder(in_channels=1, channels=[8, 16, 32], **vae)
        decoder = SparseStructureDecoder(out_channels=1, channels=[32, 16, 8], **vae)
    if cfg.dinov2:
        from iscene_core.conditioning import DinoConditioner

        cond = DinoConditioner.from_pretrained(cfg.dinov2)
    elif cfg.init is None and cfg.model_size == "tiny":
        cond = tiny_dinov2(flow.blocks[0].cross_attn.to_kv.in_features, cfg.image_size, cfg.seed)
    else:
        raise ValueError("--dinov2 PATH is required (a local DINOv2 ViT-L/14-reg: transformers folder or torch.hub repo)")
    flow.sca_enabled = cfg.sca
    flow.use_checkpoint = cfg.grad_checkpointing
    for m in (encoder, decoder, cond):
        m.eval().requires_grad_(False)
    return flow.to(device), encoder.to(device), decoder.to(device), cond.to(device)


# ---------------------------------------------------------------------------------- one step --


def batch_to_rows(batch: dict, device: torch.device):
    """Scenes and their valid instances as rows: occupancy, images, scene_index, is_scene."""
    occ, img, scene_index, is_scene = [], [], [], []
    for b in range(batch["scene_occ"].shape[0]):
        row = len(occ)
        occ.append(batch["scene_occ"][b])
        img.append(batch["scene_image"][b])
        scene_index.append(row)
        is_scene.append(True)
        for j in torch.nonzero(batch["inst_valid"][b]).flatten().tolist():
            occ.append(batch["inst_occ"][b, j])
            img.append(batch["inst_images"][b, j])
            scene_index.append(row)
            is_scene.append(False)
    return (torch.stack(occ).to(device), torch.stack(img).to(device),
            torch.tensor(scene_index, device=device), torch.tensor(is_scene, device=device))


def lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)


def render_voxels_png(occ: torch.Tensor) -> torch.Tensor:
    """(64, 64, 64) bool -> (3, H, W) uint8 image of the occupied voxels (for TensorBoard)."""
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
    ax.set(xlim=(0, 64), ylim=(0, 64), zlim=(0, 64))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1)


# -------------------------------------------------------------------------------------- train --


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns final metrics. Rank 0 logs and writes checkpoints."""
    cfg.validate()
    rank, world, device = setup_distributed()
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    flow, encoder, decoder, cond_model = build_models(cfg, device)
    ema = copy.deepcopy(flow).requires_grad_(False)
    opt = torch.optim.AdamW(flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    step = 0
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        meta = load_checkpoint(ckpt, flow, ema, opt, gen)
        step = meta["step"]
        if rank == 0:
            print(f"resumed from {ckpt} at step {step}")
    model = torch.nn.parallel.DistributedDataParallel(flow) if world > 1 else flow
    data_cfg = DataConfig(mix=cfg.mix, batch_size=cfg.batch_size, max_instances=cfg.max_instances, image_size=cfg.image_size,
                          space=cfg.space, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, num_workers=cfg.num_workers)
    loader = iter(build_loader(cfg.mix, data_cfg, rank=rank, world_size=world, start_batch=step))
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    log_path = out / "log.jsonl"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    metrics = {}
    t_last, wait_acc, rows_acc, steps_acc = time.perf_counter(), 0.0, 0, 0
    while step < cfg.steps:
        t0 = time.perf_counter()
        batch = next(loader)
        wait_acc += time.perf_counter() - t0
        occ, images, scene_index, is_scene = batch_to_rows(batch, device)
        with torch.no_grad(), autocast:
            x0 = encoder(occ, sample_posterior=False).float()
            cond = cond_model(images).float()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with autocast:
            loss, per_row = flow_matching_loss(model, x0, cond, scene_index=scene_index, p_uncond=cfg.p_uncond,
                                               sigma_min=cfg.sigma_min, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss.item()} (batch keys {batch['key']})")
        opt.step()
        ema_update(ema, flow, cfg.ema_decay)
        step += 1
        rows_acc += len(is_scene)
        steps_acc += 1
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            dt = time.perf_counter() - t_last
            inst_rows = ~is_scene
            metrics = {
                "step": step,
                "loss": loss.item(),
                "loss_scene": per_row[is_scene].mean().item(),
                "loss_instance": per_row[inst_rows].mean().item() if inst_rows.any() else float("nan"),
                "grad_norm": float(grad_norm),
                "lr": lr_at(step - 1, cfg),
                "rows_per_s": rows_acc / dt,
                "steps_per_s": steps_acc / dt,
                "data_wait_fraction": wait_acc / dt,
                "sources": batch["source"],
            }
            for k, v in metrics.items():
                if isinstance(v, float) and math.isfinite(v):
                    writer.add_scalar(f"train/{k}", v, step)
            with open(log_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            t_last, wait_acc, rows_acc, steps_acc = time.perf_counter(), 0.0, 0, 0
        if rank == 0 and cfg.sample_every and step % cfg.sample_every == 0:
            n = int((scene_index == 0).sum())
            noise = torch.randn(x0[:n].shape, generator=gen, device=device)
            z = euler_sample(ema, noise, cond[:n], None, scene_index=scene_index[:n], steps=cfg.sample_steps)["samples"]
            logits = decoder(z)
            for r in range(min(n, 3)):
                writer.add_image(f"samples/{'scene' if r == 0 else f'instance{r}'}", render_voxels_png(logits[r, 0] > 0), step)
        if rank == 0 and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            save_checkpoint(out, step, flow, ema, opt, data_position=step, generator=gen, extra={"world_size": world})
    if writer is not None:
        writer.close()
    if world > 1:
        dist.barrier()
    return metrics
