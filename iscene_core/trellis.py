"""TRELLIS stage 1 (sparse-structure VAE + flow transformer) with Scene Context Attention.

One readable file, written from the facts in ../shared/docs/TRELLIS_FACTS.md and checked against
the upstream test vectors in ../shared/reference/trellis_stage1. Parameter names and shapes equal
upstream's, so the released `TRELLIS-image-large/ckpts/ss_*` files load with ``strict=True``.

I-Scene's one architectural change is Scene Context Attention (SCA): in every self-attention layer
an instance's queries attend to ``[K_i; K_s]`` / ``[V_i; V_s]``, its own keys/values followed by its
scene's keys/values of the same layer. A batch holds scenes and their instances as rows; the
``scene_index`` tensor says which row is each row's scene (a scene row points to itself). Scene and
instance rows share every weight and run in one forward pass; the scene's K/V come out of the same
batched projection and are gathered for its instances, so they are computed once per layer.
With ``sca_enabled = False`` (or ``scene_index=None``) the model is plain TRELLIS.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "SparseStructureEncoder",
    "SparseStructureDecoder",
    "SparseStructureFlowModel",
    "MODEL_CLASSES",
    "FLOW_PRESETS",
    "build_flow",
    "build_model",
    "load_model",
    "load_pipeline",
]


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (upstream does this for stability)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel axis of a (B, C, D, H, W) volume."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _cast_linear_and_conv(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast Linear/Conv weights only (norms stay fp32), as upstream's ``convert_module_to_f16``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(dtype)


# ------------------------------------------------------------------------------------------------
# Sparse-structure VAE: 64^3 occupancy <-> 8 x 16^3 latent
# ------------------------------------------------------------------------------------------------


class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm32(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection = nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C*f^3, D, H, W) -> (B, C, D*f, H*f, W*f); sub-voxel offsets are the channel's (f, f, f)."""
    b, c, d, h, w = x.shape
    c_out = c // factor**3
    x = x.reshape(b, c_out, factor, factor, factor, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c_out, d * factor, h * factor, w * factor)


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


class _VAEBase(nn.Module):
    def __init__(self, use_fp16: bool, norm_type: str):
        super().__init__()
        if norm_type != "layer":
            raise ValueError(f"norm_type {norm_type!r}: only 'layer' (the released configuration) is implemented")
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32

    def convert_torso(self, dtype: torch.dtype) -> None:
        """Keep blocks in ``dtype`` (fp16/bf16/fp32); input and output layers stay fp32."""
        self.dtype = dtype
        _cast_linear_and_conv(self.blocks, dtype)
        _cast_linear_and_conv(self.middle_block, dtype)


class SparseStructureEncoder(_VAEBase):
    """Occupancy (B, 1, 64, 64, 64) -> latent mean (B, 8, 16, 16, 16) (or a posterior sample)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ):
        super().__init__(use_fp16, norm_type)
        self.latent_channels = latent_channels
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch) for _ in range(num_res_blocks)]
            if i < len(channels) - 1:
                blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[-1]) for _ in range(num_res_blocks_middle)])
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1)
        )
        if use_fp16:
            self.convert_torso(torch.float16)

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, return_raw: bool = False, generator=None):
        h = self.input_layer(x).type(self.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h).type(x.dtype)
        mean, logvar = self.out_layer(h).chunk(2, dim=1)
        z = mean
        if sample_posterior:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return (z, mean, logvar) if return_raw else z


class SparseStructureDecoder(_VAEBase):
    """Latent (B, 8, 16, 16, 16) -> occupancy logits (B, 1, 64, 64, 64); occupied where > 0."""

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ):
        super().__init__(use_fp16, norm_type)
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0]) for _ in range(num_res_blocks_middle)])
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch) for _ in range(num_res_blocks)]
            if i < len(channels) - 1:
                blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], out_channels, 3, padding=1)
        )
        if use_fp16:
            self.convert_torso(torch.float16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x).type(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.type(x.dtype))


# ------------------------------------------------------------------------------------------------
# Flow transformer
# ------------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (already x1000) timesteps; cos half first, then sin."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def absolute_position_embedding(resolution: int, channels: int) -> torch.Tensor:
    """Fixed sin-cos 3D embedding, (resolution^3, channels), tokens in 'ij' order.

    Upstream saves it as a buffer, so released checkpoints carry it; this only matters for models
    built from scratch.
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(resolution)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    freq_dim = channels // 3 // 2
    freqs = 1.0 / (10000 ** (torch.arange(freq_dim, dtype=torch.float32) / freq_dim))
    out = torch.outer(coords.reshape(-1).float(), freqs)
    emb = torch.cat([torch.sin(out), torch.cos(out)], dim=-1).reshape(coords.shape[0], -1)
    return F.pad(emb, (0, channels - emb.shape[1]))


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS norm with a learned (heads, head_dim) gain: normalize(x) * gamma * sqrt(dim)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale).to(x.dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, L, H, D) layout in and out; SDPA picks flash/memory-efficient kernels on GPU."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class SelfAttention(nn.Module):
    """Self-attention with optional QK RMS norm and Scene Context Attention."""

    def __init__(self, channels: int, num_heads: int, qk_rms_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.to_qkv = nn.Linear(channels, channels * 3)
        self.qk_rms_norm = qk_rms_norm
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, scene_index: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(dim=2)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        if scene_index is None:
            h = _sdpa(q, k, v)
        else:
            h = self._scene_context_attention(q, k, v, scene_index)
        return self.to_out(h.reshape(b, n, c))

    @staticmethod
    def _scene_context_attention(q, k, v, scene_index: torch.Tensor) -> torch.Tensor:
        """Instance rows attend to [own K; scene K]; scene rows (scene_index[b] == b) to their own K."""
        rows = torch.arange(q.shape[0], device=q.device)
        is_inst = scene_index != rows
        h = torch.empty_like(q)
        scene_rows = (~is_inst).nonzero(as_tuple=True)[0]
        inst_rows = is_inst.nonzero(as_tuple=True)[0]
        if len(scene_rows):
            h[scene_rows] = _sdpa(q[scene_rows], k[scene_rows], v[scene_rows])
        if len(inst_rows):
            ctx = scene_index[inst_rows]
            k_tilde = torch.cat([k[inst_rows], k[ctx]], dim=1)
            v_tilde = torch.cat([v[inst_rows], v[ctx]], dim=1)
            h[inst_rows] = _sdpa(q[inst_rows], k_tilde, v_tilde)
        return h


class CrossAttention(nn.Module):
    def __init__(self, channels: int, ctx_channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(ctx_channels, channels * 2)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.to_q(x).reshape(b, n, self.num_heads, self.head_dim)
        k, v = self.to_kv(context).reshape(b, context.shape[1], 2, self.num_heads, self.head_dim).unbind(dim=2)
        return self.to_out(_sdpa(q, k, v).reshape(b, n, c))


class FeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ModulatedTransformerCrossBlock(nn.Module):
    """adaLN-modulated self-attention (with SCA) -> cross-attention to image tokens -> MLP."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float, qk_rms_norm: bool):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(channels, num_heads, qk_rms_norm)
        self.cross_attn = CrossAttention(channels, ctx_channels, num_heads)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(self, x, t_emb, context, scene_index=None):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(t_emb).chunk(6, dim=1)
        h = self.norm1(x) * (1 + scale_msa.unsqueeze(1)) + shift_msa.unsqueeze(1)
        x = x + self.self_attn(h, scene_index) * gate_msa.unsqueeze(1)
        x = x + self.cross_attn(self.norm2(x), context)
        h = self.norm3(x) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        return x + self.mlp(h) * gate_mlp.unsqueeze(1)


class SparseStructureFlowModel(nn.Module):
    """Velocity field v(x_t, t, image tokens) on the 8 x 16^3 latent, with Scene Context Attention."""

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int | None = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        sca_enabled: bool = True,
    ):
        super().__init__()
        if pe_mode != "ape" or share_mod or qk_rms_norm_cross:
            raise ValueError("only the released configuration (pe_mode='ape', share_mod/qk_rms_norm_cross off) is implemented")
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.model_channels, self.patch_size = model_channels, patch_size
        self.num_heads = num_heads or model_channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.sca_enabled = sca_enabled
        self.dtype = torch.float32
        tokens_per_side = resolution // patch_size
        self.t_embedder = TimestepEmbedder(model_channels)
        self.register_buffer("pos_emb", absolute_position_embedding(tokens_per_side, model_channels))
        self.input_layer = nn.Linear(in_channels * patch_size**3, model_channels)
        self.blocks = nn.ModuleList(
            [
                ModulatedTransformerCrossBlock(model_channels, cond_channels, self.num_heads, mlp_ratio, qk_rms_norm)
                for _ in range(num_blocks)
            ]
        )
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size**3)
        self.initialize_weights()
        if use_fp16:
            self.convert_torso(torch.float16)

    def initialize_weights(self) -> None:
        """Upstream's init: xavier Linear, N(0, 0.02) timestep MLP, zero adaLN and output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def convert_torso(self, dtype: torch.dtype) -> None:
        """Keep the transformer blocks' Linear weights in ``dtype``; embedders, in/out layers fp32."""
        self.dtype = dtype
        _cast_linear_and_conv(self.blocks, dtype)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, r = x.shape[0], x.shape[1], self.resolution // self.patch_size
        p = self.patch_size
        x = x.reshape(b, c, r, p, r, p, r, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * p**3, r**3).transpose(1, 2)

    def _unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        b, r, p, c = h.shape[0], self.resolution // self.patch_size, self.patch_size, self.out_channels
        h = h.transpose(1, 2).reshape(b, c, p, p, p, r, r, r).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return h.reshape(b, c, r * p, r * p, r * p)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, scene_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, C, R, R, R), ``t`` (B,) already x1000, ``cond`` (B, L, C_cond).

        ``scene_index`` (B,) long: the row of each row's scene; None or ``sca_enabled=False`` gives
        plain TRELLIS self-attention.
        """
        if x.shape[1:] != (self.in_channels, *[self.resolution] * 3):
            raise ValueError(f"input shape {tuple(x.shape)}, expected (B, {self.in_channels}, {self.resolution}^3)")
        if scene_index is not None:
            scene_index = scene_index.to(device=x.device, dtype=torch.long)
            if scene_index.shape != (x.shape[0],):
                raise ValueError(f"scene_index must have shape ({x.shape[0]},), got {tuple(scene_index.shape)}")
            if not bool(torch.all(scene_index[scene_index] == scene_index)):
                raise ValueError("scene_index must point at scene rows (rows whose scene_index is themselves)")
        sca = scene_index if self.sca_enabled else None
        h = self.input_layer(self._patchify(x)) + self.pos_emb[None]
        t_emb = self.t_embedder(t).type(self.dtype)
        h, cond = h.type(self.dtype), cond.type(self.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                h = checkpoint(block, h, t_emb, cond, sca, use_reentrant=False)
            else:
                h = block(h, t_emb, cond, sca)
        h = F.layer_norm(h.type(x.dtype), h.shape[-1:])
        return self._unpatchify(self.out_layer(h))


# ------------------------------------------------------------------------------------------------
# Checkpoints (safetensors only: no pickle is ever loaded)
# ------------------------------------------------------------------------------------------------

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "SparseStructureEncoder": SparseStructureEncoder,
    "SparseStructureDecoder": SparseStructureDecoder,
    "SparseStructureFlowModel": SparseStructureFlowModel,
}


# Named flow sizes for runs from scratch. "L" is the released TRELLIS-image-large stage-1 flow (24 blocks of
# 1024 channels, 16 heads, 1024-channel DINOv2 ViT-L tokens); "tiny" uses 2x2x2 patches (512 tokens) so CPU
# tests and smoke runs take seconds per step. Every preset shares the released latent layout (8 x 16^3).
FLOW_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(model_channels=64, num_blocks=2, num_heads=4, cond_channels=32, patch_size=2),
    # tiny's tokens and condition, 2x wider and 2x deeper (1.4 M weights): the 64-channel flow took
    # 750 steps to reproduce one real instance latent (studies/ablation-nano/DISCUSSION.md)
    "nano": dict(model_channels=128, num_blocks=4, num_heads=4, cond_channels=32, patch_size=2),
    "small": dict(model_channels=256, num_blocks=6, num_heads=4, cond_channels=1024, patch_size=1),
    "L": dict(model_channels=1024, num_blocks=24, num_heads=16, cond_channels=1024, patch_size=1),
}
FLOW_COMMON = dict(resolution=16, in_channels=8, out_channels=8, pe_mode="ape", qk_rms_norm=True, mlp_ratio=4)


def build_flow(preset: str, **overrides: Any) -> "SparseStructureFlowModel":
    """A freshly initialised flow transformer of a named size (see ``FLOW_PRESETS``)."""
    if preset not in FLOW_PRESETS:
        raise ValueError(f"unknown model size {preset!r}; expected one of {sorted(FLOW_PRESETS)}")
    return SparseStructureFlowModel(**{**FLOW_COMMON, **FLOW_PRESETS[preset], **overrides})


def build_model(name: str, args: dict[str, Any], **overrides: Any) -> nn.Module:
    """Construct a model from an upstream checkpoint config ``{"name", "args"}``."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown stage-1 model class {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[name](**{**args, **overrides})


def load_model(prefix: str | Path, *, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Load ``{prefix}.json`` + ``{prefix}.safetensors`` (upstream layout) with ``strict=True``."""
    from safetensors.torch import load_file

    prefix = Path(prefix)
    cfg_path, weights_path = Path(f"{prefix}.json"), Path(f"{prefix}.safetensors")
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {p}")
    try:
        cfg = json.loads(cfg_path.read_text())
        name, args = cfg["name"], cfg["args"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{cfg_path}: not an upstream checkpoint config ({exc})") from None
    model = build_model(name, args, **overrides)
    state = load_file(str(weights_path), device=str(device))
    model.load_state_dict(state, strict=True)
    return model.to(device)


STAGE1_KEYS = ("sparse_structure_flow_model", "sparse_structure_decoder", "sparse_structure_encoder")


def load_pipeline(folder: str | Path, *, device: str | torch.device = "cpu", use_fp16: bool | None = None,
                  **flow_overrides: Any) -> dict[str, Any]:
    """Stage-1 models and sampler settings of a downloaded ``TRELLIS-image-large`` folder.

    Returns ``{"flow", "decoder", "encoder" (None if absent), "sampler": {...}, "image_cond_model"}``.
    The encoder is not listed in upstream's pipeline.json (inference does not need it); it is
    loaded from ``ckpts/ss_enc_conv3d_16l8_fp16`` when that file pair exists.
    ``use_fp16`` overrides the released ``use_fp16`` of all three models (None = as released):
    ``False`` gives fp32 everywhere, which training needs (fp32 master weights) and a CPU needs
    (fp16 convolutions on a CPU are ~60x slower than fp32).
    """
    folder = Path(folder)
    pipe_path = folder / "pipeline.json"
    if not pipe_path.is_file():
        raise FileNotFoundError(f"{pipe_path}: not a TRELLIS pipeline folder (pipeline.json missing)")
    cfg = json.loads(pipe_path.read_text())
    args = cfg.get("args", cfg)
    models = args.get("models", {})
    for key in ("sparse_structure_flow_model", "sparse_structure_decoder"):
        if key not in models:
            raise ValueError(f"{pipe_path}: args.models has no {key!r}")
    precision = {} if use_fp16 is None else {"use_fp16": use_fp16}
    out: dict[str, Any] = {
        "flow": load_model(folder / models["sparse_structure_flow_model"], device=device, **{**precision, **flow_overrides}),
        "decoder": load_model(folder / models["sparse_structure_decoder"], device=device, **precision),
        "encoder": None,
    }
    enc = models.get("sparse_structure_encoder", "ckpts/ss_enc_conv3d_16l8_fp16")
    if Path(f"{folder / enc}.json").is_file():
        out["encoder"] = load_model(folder / enc, device=device, **precision)
    sampler = args.get("sparse_structure_sampler", {})
    out["sampler"] = {**sampler.get("args", {}), **sampler.get("params", {})}
    out["image_cond_model"] = args.get("image_cond_model", "dinov2_vitl14_reg")
    return out
