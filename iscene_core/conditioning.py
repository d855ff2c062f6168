"""Image conditioning as TRELLIS does it: DINOv2 ViT-L/14 with registers at 518 px.

Features are the backbone's tokens *before* its final norm (class token, 4 registers, 37 x 37
patches = 1374 tokens of 1024 for ViT-L), then a LayerNorm without affine. The unconditional /
negative condition is zeros of the same shape (``torch.zeros_like``). Instance images are cropped
TRELLIS-style: alpha from the mask, the mask's box enlarged 1.2x around its centre (square), resized
to 518 with Lanczos, RGB multiplied by alpha (black background).

Weights load from local files only (no Hugging Face or torch.hub server is contacted), from a path
the user gives (never silently from the user's torch.hub cache):
- preferred: a ``transformers`` folder (``config.json`` + weights) of ``Dinov2WithRegistersModel``. Its
  ``hidden_states[-1]`` (with ``output_hidden_states=True``) is the last block's output before the
  final ``layernorm`` -- the same tensor as the hub model's ``x_prenorm``; ``last_hidden_state`` is
  the *normed* one and is not what TRELLIS uses;
- the torch.hub cache layout -- which *executes the repo's hubconf.py*, so only for code the user
  trusts (a warning is logged each time): ``<hub>/facebookresearch_dinov2_main`` (the repo, with ``hubconf.py``)
  and ``<hub>/checkpoints/dinov2_vitl14_reg4_pretrain.pth``. ``path`` may be the repo folder, the
  ``<hub>`` folder or ``$TORCH_HOME`` (which holds ``hub/``). The hub directory is pointed at
  ``<hub>`` while loading so the repo's own loader finds the checkpoint there instead of downloading.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SIZE",
    "HUB_REPO_NAME",
    "HUB_ENTRY",
    "HUB_CHECKPOINT",
    "DinoConditioner",
    "LearnedConditioner",
    "find_hub_repo",
    "crop_box",
    "crop_instance",
    "crop_scene",
    "masked_frame",
    "instance_image",
    "INSTANCE_VIEWS",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 518
HUB_REPO_NAME = "facebookresearch_dinov2_main"
HUB_ENTRY = "dinov2_vitl14_reg"
HUB_CHECKPOINT = "dinov2_vitl14_reg4_pretrain.pth"


def find_hub_repo(path: str | Path) -> Path | None:
    """The torch.hub repo folder (with ``hubconf.py``) at ``path``, ``path/<repo>`` or ``path/hub/<repo>``."""
    path = Path(path)
    for cand in (path, path / HUB_REPO_NAME, path / "hub" / HUB_REPO_NAME):
        if (cand / "hubconf.py").is_file():
            return cand
    return None


def _load_hub(repo: Path, entry: str, checkpoint: str) -> nn.Module:
    """``torch.hub.load(repo, entry, source="local")`` with the hub dir set to the repo's parent.

    The upstream hubconf fetches its weights with ``load_state_dict_from_url``, which reads
    ``<hub dir>/checkpoints/<file>`` when present; pointing the hub dir at the folder holding the
    repo makes that lookup local. A missing checkpoint is reported here, by name, rather than as a
    network error from inside the hubconf.
    """
    hub_dir = repo.parent
    ckpt = hub_dir / "checkpoints" / checkpoint
    if checkpoint and not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: DINOv2 checkpoint missing next to the torch.hub repo {repo}")
    previous = getattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(hub_dir))
    try:
        return torch.hub.load(str(repo), entry, source="local", trust_repo=True)
    finally:
        torch.hub._hub_dir = previous  # restore exactly (None = follow $TORCH_HOME again)


class DinoConditioner(nn.Module):
    """Frozen DINOv2 feature extractor: images (B, 3, S, S) in [0, 1] -> tokens (B, L, C)."""

    def __init__(self, backbone: nn.Module, kind: str):
        super().__init__()
        if kind not in ("transformers", "hub"):
            raise ValueError(f"unknown backbone kind {kind!r}; expected 'transformers' or 'hub'")
        self.backbone = backbone.eval().requires_grad_(False)
        self.kind = kind
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, hub_entry: str = HUB_ENTRY, hub_checkpoint: str = HUB_CHECKPOINT
    ) -> "DinoConditioner":
        """Load local weights: a transformers folder, or the torch.hub cache layout (see module doc)."""
        path = Path(path)
        if (path / "config.json").is_file():
            import json

            from transformers import Dinov2WithRegistersModel

            model_type = json.loads((path / "config.json").read_text()).get("model_type")
            if model_type != "dinov2_with_registers":
                raise ValueError(
                    f"{path / 'config.json'}: model_type is {model_type!r}; TRELLIS conditions on DINOv2 "
                    f"*with registers* (model_type 'dinov2_with_registers')"
                )
            model = Dinov2WithRegistersModel.from_pretrained(str(path), local_files_only=True)
            return cls(model, "transformers")
        repo = find_hub_repo(path)
        if repo is not None:
            # torch.hub runs the repo's own Python: say so every time (docs: prefer the transformers layout)
            logging.getLogger("iscene.conditioning").warning(
                "DINOv2 from a torch.hub repo: running %s (Python code from that folder); a transformers folder avoids this",
                repo / "hubconf.py")
            return cls(_load_hub(repo, hub_entry, hub_checkpoint), "hub")
        raise FileNotFoundError(
            f"{path}: not a DINOv2 folder (expected a transformers folder with config.json, or the torch.hub "
            f"layout <hub>/{HUB_REPO_NAME}/hubconf.py + <hub>/checkpoints/{hub_checkpoint})"
        )

    @property
    def out_channels(self) -> int:
        """Token width C (1024 for ViT-L); must equal the flow model's ``cond_channels``."""
        if self.kind == "transformers":
            return int(self.backbone.config.hidden_size)
        return int(self.backbone.embed_dim)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> pre-norm tokens, layer-normed without affine (B, L, C), fp32.

        Always computed in fp32 with any surrounding autocast switched off, so training (which runs
        the flow under bf16 autocast) and inference see the same features for the same image.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects (B, 3, S, S) images, got {tuple(images.shape)}")
        with torch.autocast(device_type=self.mean.device.type, enabled=False):
            x = (images.to(self.mean.device, torch.float32) - self.mean.float()) / self.std.float()
            if self.kind == "transformers":
                tokens = self.backbone(pixel_values=x, output_hidden_states=True).hidden_states[-1]
            else:
                tokens = self.backbone.forward_features(x)["x_prenorm"]
            return F.layer_norm(tokens.float(), tokens.shape[-1:])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)


def sincos_2d_positions(grid: int, channels: int) -> torch.Tensor:
    """(1 + grid^2, channels) position table: a zero row for the class token, then per patch (row-major)
    sin/cos of its row and its column at ``channels // 4`` frequencies each (zero-padded to ``channels``)."""
    freq_dim = channels // 4
    freqs = 1.0 / (100.0 ** (torch.arange(freq_dim, dtype=torch.float32) / max(freq_dim, 1)))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    parts = [f(torch.outer(c.reshape(-1), freqs)) for c in (rows, cols) for f in (torch.sin, torch.cos)]
    emb = F.pad(torch.cat(parts, dim=1), (0, channels - 4 * freq_dim))
    return torch.cat([torch.zeros(1, channels), emb], dim=0)


class LearnedConditioner(nn.Module):
    """A small image encoder trained jointly with the flow, for runs without DINOv2 weights.

    ``iscene-train --conditioner learned``: 14-pixel patches (as DINOv2), a class token, learned
    positions (initialised as a 2D sin-cos table), ``depth`` pre-norm transformer layers of ``width`` channels, a projection to the
    flow's ``cond_channels`` and the same affine-free LayerNorm as the DINOv2 features, so the flow
    sees tokens of the same form. Unlike :class:`DinoConditioner` it is trained (``encode`` keeps
    gradients); like it, it runs in fp32 outside any autocast. ``config()`` gives the constructor
    arguments, saved beside its weights so ``iscene-infer --conditioner-weights`` can rebuild it.
    """

    kind = "learned"

    def __init__(self, out_channels: int, image_size: int = IMAGE_SIZE, width: int = 256, depth: int = 2, heads: int = 4,
                 patch: int = 14):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch {patch}")
        self._config = dict(out_channels=out_channels, image_size=image_size, width=width, depth=depth, heads=heads, patch=patch)
        self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        # positions start as a 2D sin-cos table (as MAE's ViT), not as 0.02-scale noise: with masked-frame
        # views the patch's place in the image is what says where the instance sits. Measured on the nano
        # data (one seed, `iscene-train probe`, same batches and noise): mean image gain 0.023 at 500
        # steps against 0.011 with the noise init -- small either way (studies/ablation-nano/DISCUSSION.md)
        self.pos_embed = nn.Parameter(sincos_2d_positions(image_size // patch, width)[None])
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.proj = nn.Linear(width, out_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def config(self) -> dict:
        return dict(self._config)

    @property
    def out_channels(self) -> int:
        return int(self._config["out_channels"])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, 1 + (S/14)^2, C) layer-normed tokens, fp32 (with gradients)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects (B, 3, S, S) images, got {tuple(images.shape)}")
        with torch.autocast(device_type=self.mean.device.type, enabled=False):
            x = (images.to(self.mean.device, torch.float32) - self.mean) / self.std
            t = self.patch_embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
            t = self.proj(self.blocks(t))
            return F.layer_norm(t, t.shape[-1:])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def crop_box(mask: np.ndarray, scale: float = 1.2) -> tuple[float, float, float]:
    """(centre x, centre y, side) in pixels of the square crop: the mask's box enlarged by ``scale``."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("crop_instance: empty mask (the instance has no pixel)")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0) * scale


def crop_instance(rgb: np.ndarray, mask: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """TRELLIS-style instance crop: float (3, size, size) in [0, 1], RGB x alpha (black outside).

    The square box is cut at native resolution (transparent outside the image, as PIL's crop
    pads), then the RGBA crop is resized with Lanczos and premultiplied -- TRELLIS's order, so the
    mask edge is antialiased the same way.
    """
    if rgb.shape[:2] != mask.shape[:2]:
        raise ValueError(f"crop_instance: image {rgb.shape[:2]} and mask {mask.shape[:2]} differ in size")
    cx, cy, side = crop_box(mask)
    rgba = np.concatenate([rgb[..., :3], (mask > 0).astype(np.uint8)[..., None] * 255], axis=-1)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    side_px = max(1, int(round(side)))
    crop = Image.fromarray(np.ascontiguousarray(rgba), "RGBA").transform(
        (side_px, side_px), Image.EXTENT, box, resample=Image.NEAREST, fillcolor=(0, 0, 0, 0)
    )
    arr = np.asarray(crop.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
    return torch.from_numpy(arr[..., :3] * arr[..., 3:4]).permute(2, 0, 1).contiguous()


def crop_scene(rgb: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """The whole view, centred on a black square and resized (Lanczos): float (3, size, size) in [0, 1]."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = rgb[..., :3]
    return _to_tensor(Image.fromarray(canvas).resize((size, size), Image.LANCZOS))


def masked_frame(rgb: np.ndarray, mask: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """The whole view with every pixel outside the instance's mask black, framed as :func:`crop_scene`.

    The alternative to TRELLIS's crop (``--instance-view masked-frame``): the instance keeps its
    position and scale in the frame, so the image itself says where it sits in the scene.
    """
    if rgb.shape[:2] != mask.shape[:2]:
        raise ValueError(f"masked_frame: image {rgb.shape[:2]} and mask {mask.shape[:2]} differ in size")
    if not mask.any():
        raise ValueError("masked_frame: empty mask (the instance has no pixel)")
    return crop_scene(rgb[..., :3] * (mask > 0)[..., None].astype(rgb.dtype), size)


INSTANCE_VIEWS = ("crop", "masked-frame")


def conditioner_image_size(cond_model) -> int:
    """The crop side a conditioner was built for: a learned encoder's own size, a transformers
    DINOv2's configured ``image_size`` (518 for the released ViT-L, smaller for a tiny seeded one),
    else TRELLIS's 518. Inference must feed the size training fed, or the features shift."""
    if hasattr(cond_model, "config") and callable(cond_model.config):
        return int(cond_model.config()["image_size"])
    backbone_cfg = getattr(getattr(cond_model, "backbone", None), "config", None)
    size = getattr(backbone_cfg, "image_size", None)
    return int(size) if size else IMAGE_SIZE


def instance_image(rgb: np.ndarray, mask: np.ndarray, size: int = IMAGE_SIZE, view: str = "crop") -> torch.Tensor:
    """An instance's conditioning image: TRELLIS's crop (``crop``) or the masked whole frame (``masked-frame``)."""
    if view == "crop":
        return crop_instance(rgb, mask, size)
    if view == "masked-frame":
        return masked_frame(rgb, mask, size)
    raise ValueError(f"instance view must be one of {INSTANCE_VIEWS}, got {view!r}")
