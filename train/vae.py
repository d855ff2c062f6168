"""`iscene-train vae`: train the sparse-structure VAE from nothing on a dataset's 64^3 grids.

    iscene-train vae --mix rand15k --out runs/vae [--channels 8,16,32] [--steps 2000] [--resume]

Why: the released TRELLIS encoder/decoder live on a hub many machines cannot reach; without them
there are no latents to train the flow on. This trains the SAME classes
(:class:`iscene_core.trellis.SparseStructureEncoder` / ``Decoder``, any channel widths) with
upstream's SS-VAE objective (``trellis/trainers/vae/sparse_structure_vae.py`` and
``configs/vae/ss_vae_conv3d_16l8_fp16.json``): the encoder's posterior is sampled, the decoder's
occupancy logits are scored with a soft Dice loss over the batch (``--loss dice``, the released
config; ``bce`` and ``dice+bce`` are offered), plus ``lambda_kl`` (1e-3 released) times the mean KL
to N(0, 1). Every scene grid and every instance grid of the chosen voxel frame(s) is a training
example, since the flow model encodes both.

Outputs in ``--out`` (upstream checkpoint layout, so ``iscene-train --encoder OUT/ckpts/ss_enc_...``,
``load_model`` and a TRELLIS-layout folder accept them)::

    ckpts/ss_enc_conv3d_16l8_fp16.json + .safetensors   encoder ({"name", "args"} + weights)
    ckpts/ss_dec_conv3d_16l8_fp16.json + .safetensors   decoder
    state/step_XXXXXXXX/                                  resumable state (weights, optimizer, RNG)
    split.json      held-out scene ids (grids of these scenes are never trained on)
    log.jsonl       loss terms per logged step; held-out IoU at each evaluation
    metrics.json    final held-out reconstruction IoU (mean over grids), train IoU, timing

Held-out split: a scene is held out when a hash of its scene id falls under ``--holdout``, so the
split does not depend on shard order or dataset size (a prefix ``name@N`` keeps its scenes' roles).
Differences from upstream, for small machines: no EMA (the 0.9999 EMA is meaningless over a few
thousand steps), a plain norm clip instead of the adaptive clipper, fp32 throughout, and a default
learning rate of 1e-3 (upstream 1e-4 at far longer schedules; set ``--lr 1e-4`` to match).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from train.lr_schedule import SCHEDULES, lr_at_step

ENC_NAME = "ss_enc_conv3d_16l8_fp16"
DEC_NAME = "ss_dec_conv3d_16l8_fp16"
RESOLUTION = 64


@dataclass
class VAEConfig:
    """Everything that determines a VAE run (saved as ``OUT/vae_config.json``)."""

    out: str = "runs/vae"
    mix: str = "rand15k"
    channels: list[int] = field(default_factory=lambda: [8, 16, 32])
    num_res_blocks: int = 1
    num_res_blocks_middle: int = 1
    latent_channels: int = 8
    steps: int = 2000
    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (to 1% of --lr at --steps; see lr_at)
    loss: str = "dice"  # dice (released) | bce | dice+bce
    lambda_kl: float = 1e-3
    grad_clip: float = 1.0
    space: str = "view"  # view | world | both
    holdout: float = 0.1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    ckpt_every: int = 250
    eval_max_grids: int = 256
    occupancy_prior: bool = True  # output bias starts at logit(mean occupancy); see prior_init_output
    resume: bool = False

    def validate(self) -> None:
        if len(self.channels) != 3 or any(c < 1 for c in self.channels):
            raise ValueError(f"--channels needs three positive widths (64^3 -> 32^3 -> 16^3), got {self.channels}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.loss not in ("dice", "bce", "dice+bce"):
            raise ValueError(f"--loss must be dice, bce or dice+bce, got {self.loss!r}")
        if self.space not in ("view", "world", "both"):
            raise ValueError(f"--space must be view, world or both, got {self.space!r}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"--holdout must be in (0, 1), got {self.holdout}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError("--steps and --batch-size must be >= 1 and --lr a finite number > 0")
        if self.lambda_kl < 0 or not math.isfinite(self.lambda_kl):
            raise ValueError("--lambda-kl must be a finite number >= 0")

    def model_args(self) -> tuple[dict, dict]:
        """Upstream ``args`` of the encoder and decoder (decoder channels reversed, as released)."""
        common = dict(latent_channels=self.latent_channels, num_res_blocks=self.num_res_blocks,
                      num_res_blocks_middle=self.num_res_blocks_middle, norm_type="layer", use_fp16=False)
        return ({"in_channels": 1, "channels": list(self.channels), **common},
                {"out_channels": 1, "channels": list(reversed(self.channels)), **common})


# ------------------------------------------------------------------------------------------- data --


def is_held_out(scene_id: str, fraction: float) -> bool:
    """Stable split by scene id: the same scene is held out whatever the dataset size or order."""
    h = int.from_bytes(hashlib.sha256(scene_id.encode()).digest()[:8], "little")
    return (h % 1_000_000) < fraction * 1_000_000


def _grids_of(vox: dict, space: str) -> list[np.ndarray]:
    from iscene_core.shards import scene_and_instance_coords

    scene, instances = scene_and_instance_coords(vox, space)
    return [scene, *instances]


def load_grids(mix: str, space: str, holdout: float) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Sparse (M, 3) uint8 grids of every sample of the mix's datasets -> (train, held-out, info).

    Datasets may be sized prefixes (``name@N``: the first N samples). Broken samples are skipped
    and counted (a validated sample is the only kind the model sees); empty grids are dropped.
    """
    from iscene_core.shards import SampleError, ShardReadError, iter_raw, parse_mix, resolve, validate_sample
    from train.study_data import parse_sized

    spaces = ("view", "world") if space == "both" else (space,)
    train, held, held_scenes, train_scenes = [], [], set(), set()
    skipped = 0
    for spec, _ in parse_mix(mix):
        name, limit = parse_sized(spec)
        entry = resolve(name)
        n = 0
        for shard in entry.shards:
            if limit is not None and n >= limit:
                break
            try:
                for key, files in iter_raw(shard):
                    if limit is not None and n >= limit:
                        break
                    n += 1
                    try:
                        s = validate_sample({"__key__": key, **files}, expected_resolution=RESOLUTION, spaces=spaces)
                    except SampleError as exc:
                        skipped += 1
                        print(f"iscene-train vae: skipped {exc}", file=sys.stderr)
                        continue
                    scene_id = f"{entry.name}/{s['meta'].get('scene_id', key.rsplit('_v', 1)[0])}"
                    out, ids = (held, held_scenes) if is_held_out(scene_id, holdout) else (train, train_scenes)
                    ids.add(scene_id)
                    for sp in spaces:
                        out.extend(g for g in _grids_of(s["vox"], sp) if len(g))
            except ShardReadError as exc:
                skipped += 1
                print(f"iscene-train vae: {exc}", file=sys.stderr)
    info = {"train_scenes": len(train_scenes), "held_out_scenes": sorted(held_scenes), "train_grids": len(train),
            "held_out_grids": len(held), "skipped": skipped}
    return train, held, info


def densify(grids: list[np.ndarray]):
    """Sparse coords -> (B, 1, 64, 64, 64) float tensor of 0/1."""
    import torch

    x = torch.zeros(len(grids), 1, RESOLUTION, RESOLUTION, RESOLUTION)
    for b, c in enumerate(grids):
        c = torch.from_numpy(np.asarray(c, dtype=np.int64))
        x[b, 0, c[:, 0], c[:, 1], c[:, 2]] = 1.0
    return x


# ------------------------------------------------------------------------------------------ model --


def build_vae(cfg: VAEConfig):
    from iscene_core.trellis import SparseStructureDecoder, SparseStructureEncoder

    enc_args, dec_args = cfg.model_args()
    return SparseStructureEncoder(**enc_args), SparseStructureDecoder(**dec_args)


def lr_at(cfg: VAEConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): constant, or a cosine from ``lr`` to 1%
    of it at ``steps`` (``train.lr_schedule``)."""
    return lr_at_step(cfg.lr, step, cfg.steps, schedule=cfg.lr_schedule)


def prior_init_output(decoder, grids: list[np.ndarray]) -> float:
    """Start the decoder's occupancy logits at the data's prior, ``logit(mean occupancy)``; returns it.

    Why: 64^3 grids are ~1% occupied. From the default zero bias every voxel starts at p = 0.5, the
    Dice term is ~0.99 whatever the shape, and a from-scratch run spends its first hundreds of steps
    only learning to say "empty" (measured on the nano data: held-out IoU 0.006 after 50 steps at
    p = 0.5, 0.28 after 100 steps from the prior). This is the focal-loss paper's prior
    initialisation; it changes the starting point, not the objective.
    """
    import torch

    occ = float(np.mean([len(g) for g in grids])) / RESOLUTION ** 3 if grids else 0.01
    occ = min(max(occ, 1e-5), 0.5)
    bias = math.log(occ / (1.0 - occ))
    with torch.no_grad():
        decoder.out_layer[-1].bias.fill_(bias)
    return bias


def vae_losses(encoder, decoder, x, loss: str, lambda_kl: float, generator=None) -> dict:
    """Upstream SS-VAE terms: posterior sample -> logits; dice and/or BCE; + lambda_kl * KL."""
    import torch.nn.functional as F

    z, mean, logvar = encoder(x, sample_posterior=True, return_raw=True, generator=generator)
    logits = decoder(z)
    terms = {}
    total = 0.0
    if "bce" in loss:
        terms["bce"] = F.binary_cross_entropy_with_logits(logits, x)
        total = total + terms["bce"]
    if "dice" in loss:
        p = logits.sigmoid()
        terms["dice"] = 1 - (2 * (p * x).sum() + 1) / (p.sum() + x.sum() + 1)
        total = total + terms["dice"]
    terms["kl"] = 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1).mean()
    terms["loss"] = total + lambda_kl * terms["kl"]
    return terms


def reconstruction_iou(encoder, decoder, grids: list[np.ndarray], batch_size: int = 8) -> np.ndarray:
    """Per-grid IoU of ``decoder(encoder.mean) > 0`` against the input occupancy."""
    import torch

    ious = []
    encoder.eval()
    decoder.eval()
    with torch.no_grad():
        for i in range(0, len(grids), batch_size):
            x = densify(grids[i:i + batch_size]) > 0.5
            pred = decoder(encoder(x.float())) > 0
            inter = (pred & x).flatten(1).sum(1).float()
            union = (pred | x).flatten(1).sum(1).float().clamp(min=1)
            ious.append((inter / union).numpy())
    encoder.train()
    decoder.train()
    return np.concatenate(ious) if ious else np.zeros(0)


# ------------------------------------------------------------------------------------ checkpoints --


def publish_upstream(out: Path, encoder, decoder, cfg: VAEConfig) -> None:
    """Write ``ckpts/ss_{enc,dec}_*.json/.safetensors`` (each file through a temp name)."""
    from safetensors.torch import save_file

    from iscene_core.shards import write_json_atomic

    ckpts = out / "ckpts"
    ckpts.mkdir(parents=True, exist_ok=True)
    enc_args, dec_args = cfg.model_args()
    for name, cls, args, model in ((ENC_NAME, "SparseStructureEncoder", enc_args, encoder),
                                   (DEC_NAME, "SparseStructureDecoder", dec_args, decoder)):
        tmp = ckpts / f".{name}.safetensors.tmp{os.getpid()}"
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, ckpts / f"{name}.safetensors")
        write_json_atomic(ckpts / f"{name}.json", {"name": cls, "args": args})


def save_state(out: Path, step: int, encoder, decoder, opt, gen, keep: int = 2) -> Path:
    """Resumable state folder, written under a temp name and renamed (never seen half-written)."""
    import torch
    from safetensors.torch import save_file

    root = out / "state"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step_{step:08d}", root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp / "encoder.safetensors"))
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(tmp / "decoder.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "gen": gen.get_state(), "torch": torch.get_rng_state()}, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_state(out: Path) -> Path | None:
    found = sorted(p for p in (out / "state").glob("step_*") if (p / "meta.json").is_file())
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------ train --


def train_vae(cfg: VAEConfig, progress: bool = True) -> dict:
    """Train (or resume) and return the final metrics (also written to ``OUT/metrics.json``)."""
    import torch
    from safetensors.torch import load_file
    from tqdm import tqdm

    from iscene_core.shards import write_json_atomic

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_grids, held_grids, info = load_grids(cfg.mix, cfg.space, cfg.holdout)
    if not train_grids:
        raise ValueError(f"--mix {cfg.mix}: no training grids (every scene held out or every sample skipped)")
    if not held_grids:
        raise ValueError(f"--mix {cfg.mix}: no held-out scene at --holdout {cfg.holdout} "
                         f"({info['train_scenes']} scenes); use more scenes or a larger --holdout")
    write_json_atomic(out / "split.json", {"holdout": cfg.holdout, "held_out_scenes": info["held_out_scenes"]})
    write_json_atomic(out / "vae_config.json", asdict(cfg))
    torch.manual_seed(cfg.seed)
    encoder, decoder = build_vae(cfg)
    if cfg.occupancy_prior:
        prior_init_output(decoder, train_grids)  # a resumed run overwrites it with its saved weights
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    state = latest_state(out) if cfg.resume else None
    if state is not None:
        encoder.load_state_dict(load_file(str(state / "encoder.safetensors")), strict=True)
        decoder.load_state_dict(load_file(str(state / "decoder.safetensors")), strict=True)
        st = torch.load(state / "state.pt", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch"])
        step = json.loads((state / "meta.json").read_text())["step"]
        print(f"iscene-train vae: resumed from {state} at step {step}", file=sys.stderr)
    elif cfg.resume is False and (out / "log.jsonl").exists():
        (out / "log.jsonl").unlink()  # a fresh run starts a fresh log
    eval_grids = held_grids[: cfg.eval_max_grids]
    log_path = out / "log.jsonl"
    t_start, t_log = time.perf_counter(), time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="vae", disable=not progress, dynamic_ncols=True)
    last_iou = None
    while step < cfg.steps:
        idx = torch.randint(len(train_grids), (cfg.batch_size,), generator=gen).tolist()
        x = densify([train_grids[i] for i in idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        terms = vae_losses(encoder, decoder, x, cfg.loss, cfg.lambda_kl, generator=gen)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"step {step}: VAE loss is {terms['loss'].item()}")
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        record = None
        if step % cfg.log_every == 0 or step == cfg.steps:
            dt = time.perf_counter() - t_log
            record = {"step": step, **{k: float(v.detach()) for k, v in terms.items()}, "lr": lr_at(cfg, step - 1), "s_per_step": dt / cfg.log_every}
            t_log = time.perf_counter()
            bar.set_postfix(loss=f"{record['loss']:.4f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_iou = float(reconstruction_iou(encoder, decoder, eval_grids).mean())
            record = {**(record or {"step": step}), "held_out_iou": last_iou}
        if record is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_state(out, step, encoder, decoder, opt, gen)
            publish_upstream(out, encoder, decoder, cfg)
    bar.close()
    held_iou = reconstruction_iou(encoder, decoder, held_grids)
    train_iou = reconstruction_iou(encoder, decoder, train_grids[: cfg.eval_max_grids])
    metrics = {"step": step, "held_out_iou": float(held_iou.mean()), "held_out_iou_min": float(held_iou.min()),
               "held_out_grids": len(held_grids), "train_iou": float(train_iou.mean()), "train_grids": len(train_grids),
               "held_out_scenes": len(info["held_out_scenes"]), "train_scenes": info["train_scenes"],
               "skipped_samples": info["skipped"], "wall_s_this_run": time.perf_counter() - t_start,
               "encoder": str(out / "ckpts" / ENC_NAME), "decoder": str(out / "ckpts" / DEC_NAME)}
    if not (out / "ckpts" / f"{ENC_NAME}.json").is_file():
        publish_upstream(out, encoder, decoder, cfg)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


# -------------------------------------------------------------------------------------------- cli --


def build_parser() -> argparse.ArgumentParser:
    d = VAEConfig()
    p = argparse.ArgumentParser(prog="iscene-train vae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mix", required=True, help="datasets whose grids train the VAE: registered names or folders, comma-separated; "
                                                "name@N takes the first N samples (weights are ignored: grids are pooled)")
    p.add_argument("--out", required=True, help="run folder (ckpts/ in the upstream layout, state/, log.jsonl, metrics.json)")
    p.add_argument("--channels", default="8,16,32", help="encoder widths at 64^3, 32^3, 16^3 (released: 32,128,512); decoder reversed")
    p.add_argument("--num-res-blocks", type=int, default=d.num_res_blocks, help="residual blocks per level (released: 2)")
    p.add_argument("--num-res-blocks-middle", type=int, default=d.num_res_blocks_middle, help="middle residual blocks (released: 2)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in total (a resumed run continues to this)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="grids per step (released: 4 per GPU)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (released: 1e-4)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=list(SCHEDULES),
                   help="constant (default) or cosine decay to 1%% of --lr at --steps (sharper reconstructions at the end)")
    p.add_argument("--loss", default=d.loss, choices=["dice", "bce", "dice+bce"], help="reconstruction loss (released: dice)")
    p.add_argument("--lambda-kl", type=float, default=d.lambda_kl, help="weight of the KL term (released: 1e-3)")
    p.add_argument("--space", default=d.space, choices=["view", "world", "both"], help="voxel frame(s) whose grids are used")
    p.add_argument("--holdout", type=float, default=d.holdout, help="fraction of scenes held out for the reconstruction IoU")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation, batches and posterior noise")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between held-out IoU evaluations")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines")
    p.add_argument("--eval-max-grids", type=int, default=d.eval_max_grids, help="held-out grids scored at intermediate evaluations")
    p.add_argument("--no-occupancy-prior", action="store_true",
                   help="start the decoder's output bias at 0 (p = 0.5 everywhere) instead of logit(mean occupancy), "
                        "as an untuned from-scratch run would; converges far slower (docs/STUDIES.md)")
    p.add_argument("--resume", action="store_true", help="continue from the latest state in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        channels = [int(c) for c in args.channels.split(",")]
    except ValueError:
        print(f"iscene-train vae: --channels must be comma-separated integers, got {args.channels!r}", file=sys.stderr)
        return 2
    cfg = VAEConfig(out=args.out, mix=args.mix, channels=channels, num_res_blocks=args.num_res_blocks,
                    num_res_blocks_middle=args.num_res_blocks_middle, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    lr_schedule=args.lr_schedule,
                    loss=args.loss, lambda_kl=args.lambda_kl, space=args.space, holdout=args.holdout, seed=args.seed,
                    eval_every=args.eval_every, ckpt_every=args.ckpt_every, log_every=args.log_every,
                    eval_max_grids=args.eval_max_grids, occupancy_prior=not args.no_occupancy_prior, resume=args.resume)
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"iscene-train vae: {exc}", file=sys.stderr)
        return 2
    try:
        metrics = train_vae(cfg, progress=not args.no_progress and sys.stderr.isatty())
    except (KeyError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            raise
        print(f"iscene-train vae: {str(exc).strip(chr(34))}", file=sys.stderr)
        return 2
    except (FloatingPointError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"iscene-train vae: run failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: metrics[k] for k in ("step", "held_out_iou", "train_iou", "held_out_grids", "train_grids")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
