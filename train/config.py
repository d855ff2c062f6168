"""Training configuration: one dataclass, loadable from YAML/JSON with CLI overrides, saved per run.

Every field carries its own help text (``metadata["help"]``); ``iscene-train --help`` is generated
from it, so a flag cannot exist without saying what it does. The config tree is one-way:
model sizes are named presets next to the model (``iscene_core.trellis.FLOW_PRESETS``), the data
pipeline's ``DataConfig`` is derived from this class (``DataConfig.from_train``), the crop size is
``iscene_core.conditioning.IMAGE_SIZE`` and the voxel grid ``iscene_core.space.GRID_RESOLUTION``.
This module imports neither torch nor those modules at import time, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from train.lr_schedule import SCHEDULES


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    out: str = _f("runs/iscene", "run folder: config.json, log.jsonl, tb/ (TensorBoard), ckpt/step_*/")
    mix: str = _f("3dfront,rand15k", "datasets to train on: registered names or dataset folders, comma-separated; "
                  "name:weight draws each source by weight (a:0.3,b:0.7), each source resampled to keep its share")
    space: str = _f("view", "voxel frame: view (I-Scene's view-centric grid) or world (ablation; needs data made with --space both)",
                    choices=("view", "world"))
    sca: bool = _f(True, "Scene Context Attention: instances attend to their scene's keys/values (--no-sca: plain TRELLIS, ablation)")
    init: str | None = _f(None, "TRELLIS-image-large folder (pipeline.json + ckpts/) to fine-tune; default: train from scratch")
    model_size: str = _f("tiny", "flow size when training from scratch: tiny, nano, small or L (iscene_core.trellis.FLOW_PRESETS; tiny and nano use a seeded random tiny DINOv2 when no --dinov2 is given)")
    dinov2: str | None = _f(None, "local DINOv2 ViT-L/14-reg weights. A transformers folder (config.json) is preferred; a torch.hub "
                            "repo folder is also accepted but RUNS THAT FOLDER'S hubconf.py (only point it at code you trust). "
                            "Never read from the torch.hub cache unless given")
    steps: int = _f(1000, "optimizer steps to train (a resumed run stops at the same total)")
    batch_size: int = _f(2, "scene groups per step per process (each group = a scene row + up to --max-instances instance rows)")
    max_instances: int = _f(6, "instance rows per scene group; a view with more visible instances keeps a seeded random subset")
    image_size: int | None = _f(None, "side in pixels of the scene and instance crops fed to DINOv2 "
                                "(default iscene_core.conditioning.IMAGE_SIZE, TRELLIS's 518)")
    lr: float = _f(1e-4, "AdamW learning rate (after warm-up)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(0, "linear learning-rate warm-up over this many steps (0: none)")
    lr_schedule: str = _f("constant", "learning rate after warm-up: constant, or cosine decay to 1% of --lr at --steps "
                          "(a function of the step: --resume continues the same curve)", choices=SCHEDULES)
    grad_clip: float = _f(1.0, "clip the gradient's global norm to this value")
    ema_decay: float = _f(0.9999, "decay of the exponential moving average of the weights (ema.safetensors)")
    p_uncond: float = _f(0.1, "probability that a whole scene group (scene + its instances) is trained without its image "
                         "condition, for classifier-free guidance (docs/MODEL.md)")
    sigma_min: float = _f(1e-5, "rectified-flow sigma_min (TRELLIS: 1e-5)")
    loss_weighting: str = _f("groups", "how rows share the loss: groups = every scene group weighs the same, its scene row "
                             "--scene-weight and its instances the rest; rows = every row of the global batch weighs the same",
                             choices=("groups", "rows"))
    scene_weight: float = _f(0.5, "share of a scene group's loss given to its scene row under --loss-weighting groups")
    bf16: bool = _f(True, "bf16 autocast of the flow transformer on CUDA (--no-bf16: fp32); the frozen encoder and DINOv2 "
                    "always run in fp32, as at inference")
    cpu_bf16: bool = _f(False, "also autocast the flow to bf16 on CPU (with --bf16). On a 2-core avx512_bf16 CPU a nano step "
                        "took 397 ms instead of 505; off by default so CPU runs stay fp32 unless asked")
    grad_checkpointing: bool | None = _f(None, "recompute each transformer block in the backward pass to save memory "
                                         "(default: on for L and --init, off otherwise)")
    num_workers: int = _f(2, "data-loading worker processes per training process (a resume needs the same number)")
    shuffle_buffer: int = _f(64, "samples held per source in the seeded shuffle buffer")
    seed: int = _f(0, "seed of everything random: weights from scratch, data order, t, noise, condition dropout")
    log_every: int = _f(10, "write metrics to log.jsonl and TensorBoard every this many steps")
    ckpt_every: int = _f(500, "write a checkpoint every this many steps (and at the last step)")
    sample_every: int = _f(0, "render EMA samples to TensorBoard every this many steps (0: never)")
    sample_steps: int = _f(12, "sampler steps for those TensorBoard samples")
    resume: bool = _f(False, "continue from the latest checkpoint in --out (weights, EMA, optimizer, every rank's RNG, data position)")
    overwrite: bool = _f(False, "start afresh in an --out that holds a run, deleting its checkpoints, logs and TensorBoard files")
    encoder: str | None = _f(None, "sparse-structure encoder checkpoint prefix (X for X.json + X.safetensors) when --init has none")
    verify: bool = _f(True, "check each shard's sha256 against dataset.json when first opened (--no-verify skips it)")
    max_bad_fraction: float = _f(0.05, "stop when more than this fraction of the samples read so far (after the first 20) "
                                 "fail validation; bad samples below it are skipped and counted")
    conditioner: str = _f("dinov2", "image features: dinov2 = frozen DINOv2 (--dinov2, TRELLIS), learned = a small image encoder "
                          "trained jointly with the flow (runs without DINOv2 weights; saved as conditioner*.safetensors)",
                          choices=("dinov2", "learned"))
    instance_view: str = _f("crop", "instance conditioning image: crop = TRELLIS's crop (mask box x1.2, black outside the mask), "
                            "masked-frame = the whole view with everything but the instance blacked out (iscene-infer "
                            "--instance-view must match)", choices=("crop", "masked-frame"))
    latents: str = _f("auto", "where training latents come from: cache = precomputed by `iscene-train cache-latents` (required), "
                      "encode = the frozen encoder in every step, auto = the cache when every shard has one",
                      choices=("auto", "cache", "encode"))

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}")
        return cls(**data)

    def validate(self) -> None:
        """Refuse values that cannot work, with the flag's name in the message (checked before any work)."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if self.init is None:
            from iscene_core.trellis import FLOW_PRESETS

            if self.model_size not in FLOW_PRESETS:
                raise ValueError(f"--model-size must be one of {', '.join(FLOW_PRESETS)}, got {self.model_size!r}")
        for name in ("steps", "batch_size", "max_instances", "log_every", "ckpt_every", "shuffle_buffer", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "warmup_steps", "sample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.image_size is not None and (self.image_size < 14 or self.image_size % 14):
            raise ValueError(f"--image-size must be a multiple of 14 (DINOv2's patch), got {self.image_size}")
        for name, lo, hi in (("p_uncond", 0, 1), ("ema_decay", 0, 1), ("scene_weight", 0, 1), ("max_bad_fraction", 0, 1)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"--{name.replace('_', '-')} must be in [{lo}, {hi}], got {v!r}")
        for name in ("lr", "grad_clip", "sigma_min"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v!r}")
        if self.conditioner == "learned" and self.dinov2:
            raise ValueError("--conditioner learned trains its own image encoder: drop --dinov2")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: pick one")

    @property
    def crop_size(self) -> int:
        """The crop side actually used (``image_size`` or the conditioning module's IMAGE_SIZE)."""
        if self.image_size is not None:
            return int(self.image_size)
        from iscene_core.conditioning import IMAGE_SIZE

        return IMAGE_SIZE

    @property
    def use_grad_checkpointing(self) -> bool:
        """Explicit flag, else on for the L configuration (it does not fit 24 GB without it)."""
        if self.grad_checkpointing is not None:
            return bool(self.grad_checkpointing)
        return self.init is not None or self.model_size == "L"

    def to_dict(self) -> dict:
        return asdict(self)
