"""`iscene-train probe`: does a trained flow use its image, and how well does it denoise at each t?

    iscene-train probe runs/main [--step 4000] [--batches 8] [--t 0.1,0.3,0.5,0.7,0.9] [--out probe.json]

Why: a flow that ignores its image condition still lowers its loss (it learns an unconditional
prior of shapes, and through SCA the scene's layout), so a falling loss curve does not show that it
learned the task. The probe runs the run's own EMA weights on its own training batches at fixed
noise levels t, twice per batch with the same noise: once with the images and once with the
condition replaced by zeros (the unconditional input of classifier-free guidance). It reports per
t, over instance rows:

- ``loss_cond`` and ``loss_uncond``: the flow-matching MSE with and without images;
- ``image_gain``: ``1 - loss_cond / loss_uncond``, the share of the loss the image explains
  (0: the image is ignored);
- ``x0_iou``: the occupancy IoU between the decode of the one-step estimate
  ``x0 = x_t - t v`` (with images) and the decode of the true latent, when the run's decoder is
  found (beside ``--encoder``, or in ``--init``'s folder).

Everything is deterministic given ``--seed``; the batches are the run's first batches (its data
seed), so two runs on the same data are probed on the same samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

PROG = "iscene-train probe"
DEFAULT_TS = (0.1, 0.3, 0.5, 0.7, 0.9)


def decoder_path(cfg) -> Path | None:
    """The decoder that pairs with the run's encoder: ``ss_dec_*`` beside ``--encoder``, or ``--init``'s."""
    if cfg.encoder:
        enc = Path(cfg.encoder)
        dec = enc.with_name(enc.name.replace("ss_enc_", "ss_dec_"))
        return dec if Path(f"{dec}.json").is_file() else None
    if cfg.init:
        dec = Path(cfg.init) / "ckpts" / "ss_dec_conv3d_16l8_fp16"
        return dec if Path(f"{dec}.json").is_file() else None
    return None


def checkpoint_dir(run: Path, step: int | None) -> Path:
    """``run/ckpt/step_N`` (the latest when ``step`` is None); a clear error when there is none."""
    from train.checkpoint import latest_checkpoint

    if step is None:
        ck = latest_checkpoint(run)
        if ck is None:
            raise FileNotFoundError(f"{run}: no checkpoint under ckpt/ (train first, or pass the run folder)")
        return Path(ck)
    ck = run / "ckpt" / f"step_{step:08d}"
    if not (ck / "ema.safetensors").is_file():
        raise FileNotFoundError(f"{ck}: no ema.safetensors (steps with a checkpoint: see {run / 'ckpt'})")
    return ck


def one_step_x0(x_t: torch.Tensor, v: torch.Tensor, t: float, sigma_min: float) -> torch.Tensor:
    """The clean latent implied by a velocity: solves ``x_t = (1-t) x0 + s eps`` with ``v = (1-sigma_min) eps - x0``
    and ``s = sigma_min + (1 - sigma_min) t`` for x0 (``x_t - t v`` when sigma_min is 0)."""
    s = sigma_min + (1 - sigma_min) * t
    return (x_t - s * v / (1 - sigma_min)) / ((1 - t) + s / (1 - sigma_min))


@torch.no_grad()
def probe(run: str | Path, step: int | None = None, batches: int = 8, ts: tuple[float, ...] = DEFAULT_TS,
          seed: int = 0) -> dict:
    """Per-t conditional / unconditional loss, image gain and one-step decode IoU of a run (see module doc)."""
    from safetensors.torch import load_file

    from iscene_core.flow import noisy_sample, velocity_target
    from iscene_core.trellis import load_model
    from train.config import TrainConfig
    from train.data import DataConfig, build_loader
    from train.models import build_encoder, build_models
    from train.trainer import batch_to_rows, choose_latents, condition_of, latents_of

    run = Path(run)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}: not a training run folder (no config.json)")
    cfg = TrainConfig(**json.loads((run / "config.json").read_text()))
    ck = checkpoint_dir(run, step)
    device = torch.device("cpu")
    encoder = build_encoder(cfg)
    latents, eid = choose_latents(cfg, encoder)
    loader = iter(build_loader(cfg.mix, DataConfig.from_train(cfg, latents=latents, encoder_id=eid), rank=0, world_size=1,
                               start_batch=0, positions=None))
    flow, encoder, _, cond_model = build_models(cfg, device, encoder=encoder)
    flow.load_state_dict(load_file(str(ck / "ema.safetensors")))
    if cfg.conditioner == "learned":
        cond_model.load_state_dict(load_file(str(ck / "conditioner_ema.safetensors")))
    flow.eval()
    cond_model.eval()
    dec_prefix = decoder_path(cfg)
    decoder = load_model(dec_prefix, use_fp16=False).float().eval() if dec_prefix else None
    gen = torch.Generator().manual_seed(seed)
    acc: dict[float, dict[str, list[float]]] = {t: {"cond": [], "uncond": [], "iou": []} for t in ts}
    for _ in range(batches):
        rows = batch_to_rows(next(loader), device)
        x0 = latents_of(rows, encoder)
        cond = condition_of(rows, cond_model)
        inst = ~rows.is_scene
        if not bool(inst.any()):
            continue
        truth = decoder(x0[inst]) > 0 if decoder is not None else None
        for t in ts:
            eps = torch.randn(x0.shape, generator=gen)
            tt = torch.full((x0.shape[0],), float(t))
            xt = noisy_sample(x0, eps, tt, cfg.sigma_min)
            target = velocity_target(x0, eps, cfg.sigma_min)
            for name, c in (("cond", cond), ("uncond", torch.zeros_like(cond))):
                v = flow(xt, tt * 1000, c, scene_index=rows.scene_index).float()
                acc[t][name] += ((v - target) ** 2)[inst].flatten(1).mean(1).tolist()
                if name == "cond" and truth is not None:
                    est = decoder(one_step_x0(xt, v, t, cfg.sigma_min)[inst]) > 0
                    inter = (est & truth).flatten(1).sum(1).float()
                    union = (est | truth).flatten(1).sum(1).float().clamp_min(1)
                    acc[t]["iou"] += (inter / union).tolist()
    per_t = []
    for t in ts:
        a = acc[t]
        lc, lu = float(np.mean(a["cond"])), float(np.mean(a["uncond"]))
        per_t.append({"t": t, "loss_cond": lc, "loss_uncond": lu, "image_gain": 1.0 - lc / lu if lu > 0 else 0.0,
                      "x0_iou": float(np.mean(a["iou"])) if a["iou"] else None, "instances": len(a["cond"])})
    return {"run": str(run), "checkpoint": str(ck), "batches": batches, "seed": seed, "per_t": per_t,
            "mean_image_gain": float(np.mean([p["image_gain"] for p in per_t]))}


def format_probe(result: dict) -> str:
    lines = [f"probe of {result['checkpoint']} ({result['per_t'][0]['instances']} instance rows per t)",
             "     t   loss(image)  loss(no image)  image gain   one-step x0 IoU"]
    for p in result["per_t"]:
        iou = "-" if p["x0_iou"] is None else f"{p['x0_iou']:.3f}"
        lines.append(f"  {p['t']:4.2f}   {p['loss_cond']:10.4f}  {p['loss_uncond']:14.4f}  {p['image_gain']:10.3f}   {iou:>15}")
    lines.append(f"mean image gain {result['mean_image_gain']:.3f} (0 = the image is ignored)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="training run folder (holds config.json and ckpt/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--batches", type=int, default=8, help="training batches probed (default 8)")
    p.add_argument("--t", default=",".join(str(t) for t in DEFAULT_TS), help="noise levels in (0, 1), comma-separated")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    p.add_argument("--debug", action="store_true", help="show the traceback on failure")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        ts = tuple(float(x) for x in args.t.split(",") if x.strip())
        if not ts or any(not 0.0 < t < 1.0 for t in ts):
            raise ValueError(f"--t {args.t}: noise levels must lie in (0, 1)")
        if args.batches < 1:
            raise ValueError(f"--batches must be >= 1, got {args.batches}")
        if not args.run.is_dir():
            raise FileNotFoundError(f"{args.run}: not a folder (pass the training run folder)")
    except (ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    from iscene_core.shards import DatasetError

    try:
        result = probe(args.run, args.step, args.batches, ts, args.seed)
    except (FileNotFoundError, KeyError, ValueError, DatasetError, RuntimeError) as exc:  # RuntimeError: weights of another model
        if args.debug:
            raise
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(format_probe(result))
    if args.out:
        from iscene_core.shards import write_json_atomic

        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
