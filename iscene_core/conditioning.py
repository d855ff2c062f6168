"""Image conditioning as TRELLIS does it: DINOv2 ViT-L/14 with registers at 518 px.

Features are the backbone's tokens *before* its final norm (class token, 4 registers, 37 x 37
patches = 1374 tokens), then a LayerNorm without affine. The unconditional / negative condition is
zeros of the same shape. Instance images are cropped TRELLIS-style: alpha from the mask, the mask's
box enlarged 1.2x around its centre (square), resized to 518 with Lanczos, RGB multiplied by alpha
(black background).

Weights load from local files only (Hugging Face and torch.hub servers are not needed):
- a ``transformers`` folder (``config.json`` + weights) of ``Dinov2WithRegistersModel``;
- a torch.hub repo folder (``hubconf.py``, e.g. ``$TORCH_HOME/hub/facebookresearch_dinov2_main``)
  whose entry point finds its checkpoint in ``$TORCH_HOME/hub/checkpoints``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 518


class DinoConditioner(nn.Module):
    """Frozen DINOv2 feature extractor: images (B, 3, S, S) in [0, 1] -> tokens (B, L, C)."""

    def __init__(self, backbone: nn.Module, kind: str):
        super().__init__()
        if kind not in ("transformers", "hub"):
            raise ValueError(f"unknown backbone kind {kind!r}")
        self.backbone = backbone.eval().requires_grad_(False)
        self.kind = kind
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | Path, hub_entry: str = "dinov2_vitl14_reg") -> "DinoConditioner":
        path = Path(path)
        if (path / "config.json").is_file():
            from transformers import AutoModel

            return cls(AutoModel.from_pretrained(str(path), local_files_only=True), "transformers")
        if (path / "hubconf.py").is_file():
            return cls(torch.hub.load(str(path), hub_entry, source="local", trust_repo=True), "hub")
        raise FileNotFoundError(
            f"{path}: not a DINOv2 folder (expected a transformers folder with config.json, or a torch.hub "
            f"repo folder with hubconf.py such as $TORCH_HOME/hub/facebookresearch_dinov2_main)"
        )

    @property
    def out_channels(self) -> int:
        if self.kind == "transformers":
            return int(self.backbone.config.hidden_size)
        return int(self.backbone.embed_dim)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        if self.kind == "transformers":
            tokens = self.backbone(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        else:
            tokens = self.backbone.forward_features(x)["x_prenorm"]
        return F.layer_norm(tokens, tokens.shape[-1:])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def crop_box(mask: np.ndarray, scale: float = 1.2) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the square crop around a mask's box enlarged by ``scale``."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("crop_instance: empty mask")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0) * scale


def crop_instance(rgb: np.ndarray, mask: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """TRELLIS-style instance crop: float (3, size, size) in [0, 1] on black."""
    cx, cy, side = crop_box(mask)
    rgba = np.concatenate([rgb[..., :3], (mask > 0).astype(np.uint8)[..., None] * 255], axis=-1)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    # cut the square box at native resolution (zero outside the image), then Lanczos to ``size``
    side_px = max(1, int(round(side)))
    crop = Image.fromarray(rgba, "RGBA").transform((side_px, side_px), Image.EXTENT, box, resample=Image.NEAREST, fillcolor=(0, 0, 0, 0))
    img = crop.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    rgb_f = arr[..., :3] * arr[..., 3:4]
    return torch.from_numpy(rgb_f).permute(2, 0, 1).contiguous()


def crop_scene(rgb: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """The whole view, padded to a square (black) and resized: float (3, size, size) in [0, 1]."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = rgb[..., :3]
    return _to_tensor(Image.fromarray(canvas).resize((size, size), Image.LANCZOS))
