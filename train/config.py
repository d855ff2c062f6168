"""Training configuration: one dataclass, loadable from YAML/JSON with CLI overrides, saved per run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# From-scratch sizes; "L" is the released TRELLIS flow configuration (use --init to load weights).
MODEL_SIZES = {
    # tiny: 2x2x2 patches (512 tokens) so CPU tests and smoke runs take seconds per step
    "tiny": dict(model_channels=64, num_blocks=2, num_heads=4, cond_channels=32, patch_size=2),
    "small": dict(model_channels=256, num_blocks=6, num_heads=4, cond_channels=1024, patch_size=1),
    "L": dict(model_channels=1024, num_blocks=24, num_heads=16, cond_channels=1024, patch_size=1),
}


@dataclass
class TrainConfig:
    out: str = "runs/iscene"
    mix: str = "3dfront,rand15k"
    space: str = "view"  # view (I-Scene) | world (ablation without view-centric space)
    sca: bool = True  # Scene Context Attention (ablation: --no-sca)
    init: str | None = None  # TRELLIS-image-large folder (released weights); None = from scratch
    model_size: str = "tiny"
    dinov2: str | None = None  # local DINOv2 (transformers folder or torch.hub repo folder)
    steps: int = 1000
    batch_size: int = 2  # scenes per step per rank
    max_instances: int = 6
    image_size: int = 518
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    p_uncond: float = 0.1
    sigma_min: float = 1e-5
    bf16: bool = True  # autocast on CUDA
    grad_checkpointing: bool = False
    num_workers: int = 2
    shuffle_buffer: int = 64
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    sample_every: int = 0  # 0 = never render samples to TensorBoard
    sample_steps: int = 12
    resume: bool = False
    encoder: str | None = None  # ss encoder checkpoint prefix if not in --init

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}")
        return cls(**data)

    def validate(self) -> None:
        if self.space not in ("view", "world"):
            raise ValueError(f"--space must be view or world, got {self.space!r}")
        if self.init is None and self.model_size not in MODEL_SIZES:
            raise ValueError(f"--model-size must be one of {sorted(MODEL_SIZES)}")
        if self.batch_size < 1 or self.steps < 1 or self.max_instances < 1:
            raise ValueError("--batch-size, --steps and --max-instances must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)
