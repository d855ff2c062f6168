"""The models of a training run: the trained flow, and the frozen encoder and image conditioner.

The frozen parts run in fp32 outside any autocast (``encode_latents`` here, ``DinoConditioner.encode``
in ``iscene_core.conditioning``), exactly as ``iscene-infer`` runs them, so a model is trained on
the features it will see at inference. Only the flow transformer runs under bf16 autocast.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from iscene_core.trellis import (SparseStructureDecoder, SparseStructureEncoder, build_flow, load_model, load_pipeline)
from train.config import TrainConfig

VAE_SCRATCH = dict(latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1)


# flow sizes trained from scratch on the seeded tiny DINOv2 when no --dinov2 is given (32-channel tokens)
TINY_CONDITIONED = ("tiny", "nano")


def tiny_dinov2(channels: int, image_size: int, seed: int = 0):
    """A small random DINOv2-with-registers (for tests and nano runs without downloaded weights),
    frozen, with its patch positions set to a unit-scale 2D sin-cos table.

    Why the positions: at the random init (0.02-scale position noise next to O(1) patch embeddings)
    every black patch of a masked-frame view came out the same token (pairwise cosine 0.999), so the
    flow saw what an instance looks like but not where it is in the image, and could not learn
    placement from it (studies/ablation-nano/DISCUSSION.md). Pretrained DINOv2 has learned positions.
    """
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from iscene_core.conditioning import DinoConditioner, sincos_2d_positions

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = Dinov2WithRegistersConfig(hidden_size=channels, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * channels,
                                        patch_size=14, image_size=image_size, num_register_tokens=4)
        model = Dinov2WithRegistersModel(cfg)
    with torch.no_grad():
        model.embeddings.position_embeddings.copy_(sincos_2d_positions(image_size // 14, channels)[None])
    return DinoConditioner(model, "transformers")


def build_encoder(cfg: TrainConfig) -> torch.nn.Module:
    """The frozen sparse-structure encoder (fp32): --encoder, --init's, or a seeded random one from scratch."""
    if cfg.encoder:
        return load_model(cfg.encoder, use_fp16=False)
    if cfg.init:
        prefix = Path(cfg.init) / "ckpts" / "ss_enc_conv3d_16l8_fp16"
        if not Path(f"{prefix}.json").is_file():
            raise FileNotFoundError(f"{cfg.init}: no ckpts/ss_enc_conv3d_16l8_fp16.* and no --encoder given; the encoder makes training latents")
        return load_model(prefix, use_fp16=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 7919)
        return SparseStructureEncoder(in_channels=1, channels=[8, 16, 32], **VAE_SCRATCH)


def build_models(cfg: TrainConfig, device: torch.device, encoder: torch.nn.Module | None = None):
    """(flow, encoder, decoder, conditioner); flow weights stay fp32 (autocast does bf16).

    ``encoder``: one already built by :func:`build_encoder` (the trainer builds it first when it
    needs its identity to find a latent cache).
    """
    if cfg.init:
        # fp32 master weights: fine-tuning the released fp16 weights directly gave NaNs upstream
        pipe = load_pipeline(cfg.init, use_fp16=False)
        flow, decoder = pipe["flow"], pipe["decoder"]
        encoder = encoder or (load_model(cfg.encoder, use_fp16=False) if cfg.encoder else pipe["encoder"])
        if encoder is None:
            raise FileNotFoundError(f"{cfg.init}: no ckpts/ss_enc_conv3d_16l8_fp16.* and no --encoder given; the encoder makes training latents")
    else:
        torch.manual_seed(cfg.seed)
        flow = build_flow(cfg.model_size)
        encoder = encoder or build_encoder(cfg)
        decoder = SparseStructureDecoder(out_channels=1, channels=[32, 16, 8], **VAE_SCRATCH)
    cond = build_conditioner(cfg, int(flow.blocks[0].cross_attn.to_kv.in_features))
    flow.sca_enabled = cfg.sca
    flow.use_checkpoint = cfg.use_grad_checkpointing
    for m in (encoder, decoder) if cfg.conditioner == "learned" else (encoder, decoder, cond):
        m.eval().requires_grad_(False)
    return flow.to(device), encoder.to(device), decoder.to(device), cond.to(device)


def build_conditioner(cfg: TrainConfig, channels: int):
    """DINOv2 from --dinov2 (width checked against the flow), a tiny random one for tiny runs, or a
    trained-from-scratch :class:`~iscene_core.conditioning.LearnedConditioner` (``--conditioner learned``)."""
    if cfg.conditioner == "learned":
        from iscene_core.conditioning import LearnedConditioner

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 104729)
            return LearnedConditioner(channels, cfg.crop_size)
    if cfg.dinov2:
        from iscene_core.conditioning import DinoConditioner

        cond = DinoConditioner.from_pretrained(cfg.dinov2)
        if cond.out_channels != channels:
            raise ValueError(f"--dinov2 {cfg.dinov2} gives {cond.out_channels}-channel tokens, the flow expects {channels}")
        return cond
    if cfg.init is None and cfg.model_size in TINY_CONDITIONED:
        return tiny_dinov2(channels, cfg.crop_size, cfg.seed)
    raise ValueError("--dinov2 PATH is required (a local DINOv2 ViT-L/14-reg: transformers folder, or a torch.hub repo you trust)")


@torch.no_grad()
def encode_latents(encoder: torch.nn.Module, occ: torch.Tensor) -> torch.Tensor:
    """(B, 1, 64, 64, 64) occupancy -> (B, 8, 16, 16, 16) latent means, fp32 with autocast off."""
    with torch.autocast(device_type=occ.device.type, enabled=False):
        return encoder(occ.float(), sample_posterior=False).float()


def encoder_id(encoder: torch.nn.Module) -> str:
    """A short hash of the encoder's weights: names a latent cache, so another encoder never reads it."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
