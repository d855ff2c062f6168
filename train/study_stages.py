"""The real stage runners of a study: each one CLI run (subprocess) with its log in ``OUT/logs/``.

Calling the command-line tools rather than their functions keeps the stages loosely coupled: the
data engine, the trainer and ``iscene-eval`` can change inside as long as their flags hold, a stage
crash cannot take the sweep down, and each log is exactly what a user would see running the step
by hand. Tools that resume by themselves (datagen, ``iscene-train``, ``iscene-train vae``,
``iscene-eval predict``) are rerun in the same folder after a kill; the others (catalog, bench) start
their folder afresh.

Every subprocess gets ``ISCENE_REGISTRY=OUT/registry.json``, so a study never writes into the
user's dataset registry; datasets are passed to the tools as folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from train.study import Stage
from train.study_run import RunContext

ENC = "ss_enc_conv3d_16l8_fp16"
DEC = "ss_dec_conv3d_16l8_fp16"
FLOW = "ss_flow_img_dit_L_16l8_fp16"


class StageError(RuntimeError):
    """A stage's command failed; the message carries the exit code and the log's last lines."""


def _flags(args: dict | None) -> list[str]:
    """``{"views-per-scene": 1, "no-denoise": True, "space": "both"}`` -> CLI flags (False/None omitted)."""
    out: list[str] = []
    for k, v in (args or {}).items():
        flag = "--" + str(k).replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is False or v is None:
            continue
        elif isinstance(v, (list, tuple)):
            out += [flag, ",".join(str(x) for x in v)]
        else:
            out += [flag, str(v)]
    return out


def _tool(name: str) -> list[str]:
    """Console script ``name`` from this environment's bin/ (falls back to PATH)."""
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found:
        return [found]
    raise StageError(f"{name} is not installed in this environment (pip install -e . in the repo gives it)")


def _die_with_parent() -> None:
    """Linux: the tool gets SIGTERM when the sweep dies (even by SIGKILL), so a rerun never finds an
    orphaned trainer still writing into the folder it resumes from."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_cmd(cmd: list[str], stage: Stage, ctx: RunContext, env: dict | None = None) -> None:
    """Run ``cmd`` with stdout+stderr appended to the stage's log; StageError on a non-zero exit."""
    log = ctx.log_path(stage)
    e = {**os.environ, "ISCENE_REGISTRY": str(Path(ctx.out).resolve() / "registry.json"), "RAY_AUTH_MODE": "disabled",
         "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=e,
                             preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise StageError(f"exit {rc} from {Path(cmd[0]).name}: " + " | ".join(tail))


def _fresh(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _mix(parts: list, deps: dict) -> str:
    return ",".join(deps[sid]["path"] + (f":{w}" if w else "") for sid, w in parts)


# ------------------------------------------------------------------------------------------- data --


def run_catalog(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    c = dict(stage.config)
    out = _fresh(stage.out)
    src = c.pop("source", "procedural")
    inp = c.pop("input", None)
    run_cmd(_tool("iscene-assets") + ["build", "--source", src, "--out", str(out)] + ([str(inp)] if inp else []) + _flags(c), stage, ctx)
    return {"path": str(out)}


def run_datagen(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    c = dict(stage.config)
    cmd = _tool("iscene-datagen") + ["--n", str(c["n"]), "--seed", str(c.get("seed", 0)), "--out", stage.out, "--name", c["name"]]
    if "catalog" in c:
        cmd += ["--assets", deps[f"catalog/{c['catalog']}"]["path"]]
    elif "assets" in c:
        cmd += ["--assets", str(c["assets"])]
    else:
        cmd += ["--procedural"]
    args = dict(c.get("args") or {})
    if ctx.address and "address" not in args:
        args["address"] = ctx.address
    elif not ctx.address and "address" not in args and "workers" not in args:
        args["no-ray"] = True  # inside a study task: the task is the unit of parallelism
    run_cmd(cmd + _flags(args), stage, ctx)  # rerun in place = datagen's own resume
    info = json.loads((Path(stage.out) / "dataset.json").read_text())
    return {"path": str(Path(stage.out).resolve()), "samples": int(info["counts"]["samples"])}


def run_reuse(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    from iscene_core.shards import load_dataset_json, resolve

    c = stage.config
    if c.get("path"):
        info = load_dataset_json(c["path"])
        return {"path": str(Path(c["path"]).resolve()), "samples": int(info["counts"]["samples"])}
    entry = resolve(c["registered"])  # the user's registry, read in the sweep's own environment
    root = entry.info.get("root")
    if not root:
        raise StageError(f"dataset {c['registered']!r} has no local folder (remote shards cannot be cut into prefixes)")
    return {"path": str(root), "samples": entry.samples}


def run_prefix(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    from train.study_data import materialize_prefix

    src = deps[f"data/{stage.config['of']}"]
    path = materialize_prefix(f"{src['path']}@{stage.config['n']}", Path(stage.out))
    return {"path": str(path.resolve()), "samples": int(stage.config["n"])}


def run_bench(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    c = dict(stage.config)
    out = _fresh(stage.out)
    src = deps[stage.deps[0]]["path"]
    cmd = _tool("iscene-eval") + ["make-bench", "--from", src, "--out", str(out), "--name", c["name"], "--no-progress"]
    if c.get("n"):
        cmd += ["--n", str(c["n"])]
    if c.get("catalog"):
        cmd += ["--assets", deps[f"catalog/{c['catalog']}"]["path"]]
    run_cmd(cmd + _flags(c.get("args")), stage, ctx)
    return {"path": str(out.resolve())}


# ------------------------------------------------------------------------------------ vae / train --


def run_vae(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    mix = _mix(stage.config["mix"], deps)
    cmd = _tool("iscene-train") + ["vae", "--mix", mix, "--out", stage.out, "--resume", "--no-progress"]
    run_cmd(cmd + _flags(stage.config.get("args")), stage, ctx)
    metrics = json.loads((Path(stage.out) / "metrics.json").read_text())
    return {"path": str(Path(stage.out).resolve()), "encoder": metrics["encoder"], "decoder": metrics["decoder"],
            "held_out_iou": metrics["held_out_iou"], "train_iou": metrics["train_iou"]}


def run_latents(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    """Encode a training set once with the study's VAE encoder (``iscene-train cache-latents``); the
    caches sit beside the dataset's shards and the trainer's ``--latents auto`` finds them."""
    data = deps[stage.deps[0]]
    vae = deps[stage.deps[1]]
    Path(stage.out).mkdir(parents=True, exist_ok=True)
    cmd = _tool("iscene-train") + ["cache-latents", "--mix", data["path"], "--space", stage.config["space"], "--encoder", vae["encoder"]]
    run_cmd(cmd, stage, ctx)
    return {"path": data["path"], "space": stage.config["space"]}


def train_config(stage: Stage, deps: dict) -> dict:
    """The TrainConfig fields of a cell, with datasets and the encoder turned into paths."""
    cfg = {k: v for k, v in stage.config.items() if k not in ("resources",)}
    cfg["mix"] = _mix(cfg["mix"], deps)
    if isinstance(cfg.get("encoder"), dict):
        cfg["encoder"] = deps[cfg["encoder"]["stage"]]["encoder"]
    cfg["out"] = str(Path(stage.out).resolve())
    cfg.pop("resume", None)
    return cfg


def run_train(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    cfg = train_config(stage, deps)
    out = Path(stage.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / "train_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    cmd = _tool("iscene-train") + ["--config", str(cfg_path), "--resume"]
    workers = int(stage.resources.get("ray_workers", 0) or 0)
    if workers:
        cmd += ["--ray-workers", str(workers)] + (["--ray-gpu"] if stage.resources.get("ray_gpu") else [])
        if ctx.address:
            cmd += ["--ray-address", ctx.address]
    run_cmd(cmd, stage, ctx)
    ckpts = sorted(p for p in (out / "ckpt").glob("step_*") if (p / "meta.json").is_file())
    if not ckpts:
        raise StageError(f"iscene-train exited 0 but wrote no checkpoint in {out / 'ckpt'}")
    last = ckpts[-1]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()] if (out / "log.jsonl").exists() else []
    run_cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else cfg
    return {"path": str(out.resolve()), "checkpoint": str(last), "steps": json.loads((last / "meta.json").read_text())["step"],
            "final_loss": log[-1]["loss"] if log else None, "first_loss": log[0]["loss"] if log else None,
            "train_config": run_cfg}


def run_probe(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    """``iscene-train probe`` on the cell's last checkpoint: how much of the flow's loss its image
    explains (a cell that ignores its image cannot be read as an ablation of how it uses it)."""
    train = deps[stage.deps[0]]
    out = Path(stage.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = _tool("iscene-train") + ["probe", train["path"], "--step", str(train["steps"]), "--out", str(out / "probe.json"),
                                   "--batches", str(int(stage.config.get("batches", 4)))]
    if stage.config.get("t"):
        cmd += ["--t", ",".join(str(float(t)) for t in stage.config["t"])]
    run_cmd(cmd, stage, ctx)
    doc = json.loads((out / "probe.json").read_text())
    return {"probe": str(out / "probe.json"), "mean_image_gain": doc["mean_image_gain"],
            "per_t": [{k: p[k] for k in ("t", "image_gain", "x0_iou")} for p in doc["per_t"]]}


# ------------------------------------------------------------------------------------------- eval --


def flow_args(train_cfg: dict) -> dict:
    """Upstream ``args`` of the trained flow (from-scratch presets), for its ckpts/*.json."""
    size = train_cfg.get("model_size", "tiny")
    from iscene_core.trellis import FLOW_COMMON, FLOW_PRESETS

    return {**FLOW_COMMON, **FLOW_PRESETS[size]}


def export_weights(train: dict, vae: dict | None, out: Path, sampler: dict | None = None) -> Path:
    """A TRELLIS-layout folder (pipeline.json + ckpts/) holding the cell's EMA flow and the study's decoder."""
    from iscene_core.shards import write_json_atomic

    cfg = train["train_config"]
    if cfg.get("init"):
        return Path(cfg["init"])  # fine-tuned from released weights: --flow-weights carries the change
    if vae is None:
        raise StageError("a flow trained from scratch needs the study's VAE (a vae: section) for its decoder")
    ckpts = out / "ckpts"
    ckpts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(train["checkpoint"]) / "ema.safetensors", ckpts / f"{FLOW}.safetensors")
    write_json_atomic(ckpts / f"{FLOW}.json", {"name": "SparseStructureFlowModel", "args": flow_args(cfg)})
    for name in (DEC, ENC):
        for ext in (".json", ".safetensors"):
            shutil.copyfile(Path(vae["path"]) / "ckpts" / f"{name}{ext}", ckpts / f"{name}{ext}")
    params = {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0, **(sampler or {})}
    write_json_atomic(out / "pipeline.json", {"name": "TrellisImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": f"ckpts/{FLOW}", "sparse_structure_decoder": f"ckpts/{DEC}"},
        "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5}, "params": params},
        "image_cond_model": "dinov2_vitl14_reg"}})
    return out


def export_tiny_conditioner(train_cfg: dict, out: Path) -> Path | None:
    """The seeded random tiny DINOv2 a ``model_size: tiny`` or ``nano`` run without --dinov2 was conditioned on,
    saved as a transformers folder so ``iscene-eval predict --dinov2`` feeds the model the same
    features it trained on (it is a pure function of width, crop size and seed)."""
    from train.models import TINY_CONDITIONED, tiny_dinov2

    if train_cfg.get("dinov2") or train_cfg.get("init") or train_cfg.get("model_size", "tiny") not in TINY_CONDITIONED:
        return None
    crop = int(train_cfg.get("crop_size") or train_cfg.get("image_size") or 518)
    cond = tiny_dinov2(int(flow_args(train_cfg)["cond_channels"]), crop, int(train_cfg.get("seed", 0)))
    cond.backbone.save_pretrained(str(out))
    return out


def conditioning_flags(train: dict, eval_cfg: dict, out: Path) -> list[str]:
    """The ``iscene-eval predict`` flags that feed the model what it was trained on: the same
    conditioner (study DINOv2, the seeded tiny one, or the learned encoder's EMA), instance view,
    crop size and voxel frame, and the SCA switch."""
    cfg = train["train_config"]
    flags: list[str] = []
    if cfg.get("conditioner") == "learned":
        flags += ["--conditioner-weights", str(Path(train["checkpoint"]) / "conditioner_ema.safetensors")]
    else:
        dino = eval_cfg.get("dinov2") or cfg.get("dinov2") or export_tiny_conditioner(cfg, out / "weights" / "tiny_dinov2")
        if dino:
            flags += ["--dinov2", str(dino)]
    if cfg.get("image_size"):
        flags += ["--image-size", str(cfg["image_size"])]
    flags += ["--instance-view", str(cfg.get("instance_view") or "crop"), "--space", str(cfg.get("space") or "view")]
    if not eval_cfg.get("sca", True):
        flags += ["--no-sca"]
    return flags


def run_eval(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    c = stage.config
    train = deps[stage.deps[0]]
    bench = deps[stage.deps[1]]["path"]
    vae = deps.get("vae")
    out = Path(stage.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = export_weights(train, vae, out / "weights")
    pred, scores = out / "pred", out / "scores"
    cmd = _tool("iscene-eval") + ["predict", "--bench", bench, "--weights", str(weights), "--out", str(pred), "--no-progress",
                                  "--flow-weights", str(Path(train["checkpoint"]) / "ema.safetensors")]
    cmd += conditioning_flags(train, c, out)
    run_cmd(cmd + _flags(c.get("predict")), stage, ctx)
    return score_prediction(stage, ctx, bench, pred, scores)


def untrained_flow(train_cfg: dict, out: Path) -> dict:
    """A cell's flow (and learned conditioner) at its seeded initialisation, saved as a checkpoint
    folder that ``export_weights``/``conditioning_flags`` read like a trained one."""
    import torch
    from safetensors.torch import save_file

    from train.config import TrainConfig
    from train.models import build_conditioner
    from iscene_core.trellis import build_flow
    from iscene_core.shards import write_json_atomic

    cfg = {k: v for k, v in train_cfg.items() if k in TrainConfig.__dataclass_fields__}
    tc = TrainConfig(**{**cfg, "mix": "unused", "out": str(out)})
    torch.manual_seed(tc.seed)  # as train.models.build_models seeds a from-scratch flow
    flow = build_flow(tc.model_size)
    ckpt = out / "init"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in flow.state_dict().items()}, str(ckpt / "ema.safetensors"))
    if tc.conditioner == "learned":
        cond = build_conditioner(tc, int(flow.blocks[0].cross_attn.to_kv.in_features))
        save_file({k: v.detach().contiguous() for k, v in cond.state_dict().items()}, str(ckpt / "conditioner_ema.safetensors"))
        write_json_atomic(ckpt / "conditioner_ema.json", {"name": type(cond).__name__, "args": cond.config()})
    return {"checkpoint": str(ckpt), "train_config": train_cfg}


def run_baseline(stage: Stage, deps: dict, ctx: RunContext) -> dict:
    """A floor the cells are compared with, scored exactly as a cell's eval: ``untrained`` (the
    cell's model at initialisation through ``iscene-eval predict``; for a cell fine-tuned from
    ``init``, the released model itself) or ``mean-box`` (``iscene-eval baseline``: every instance
    at the training set's mean box)."""
    c = stage.config
    bench = deps[f"bench/{c['bench']}"]["path"]
    out = Path(stage.out)
    out.mkdir(parents=True, exist_ok=True)
    pred, scores = out / "pred", out / "scores"
    if c["kind"] == "mean-box":
        data = deps[stage.deps[0]]["path"]
        shutil.rmtree(pred, ignore_errors=True)
        run_cmd(_tool("iscene-eval") + ["baseline", "--kind", "mean-box", "--from", data, "--bench", bench, "--out", str(pred)], stage, ctx)
    else:
        cfg = dict(c["train_config"])
        cfg["mix"] = "unused"
        if cfg.get("init"):  # a fine-tuning study: the floor is the released model, not fine-tuned
            train = {"checkpoint": "", "train_config": cfg}
            weights, flow = Path(cfg["init"]), []
        else:
            train = untrained_flow(cfg, out)
            weights = export_weights(train, deps.get("vae"), out / "weights")
            flow = ["--flow-weights", str(Path(train["checkpoint"]) / "ema.safetensors")]
        cmd = _tool("iscene-eval") + ["predict", "--bench", bench, "--weights", str(weights), "--out", str(pred), "--no-progress"] + flow
        run_cmd(cmd + conditioning_flags(train, c, out) + _flags(c.get("predict")), stage, ctx)
    return score_prediction(stage, ctx, bench, pred, scores)


def score_prediction(stage: Stage, ctx: RunContext, bench: str, pred: Path, scores: Path) -> dict:
    """``iscene-eval score`` on a prediction folder -> the stage result (summary per protocol)."""
    c = stage.config
    run_cmd(_tool("iscene-eval") + ["score", "--bench", bench, "--pred", str(pred), "--out", str(scores),
                                    "--protocol", str(c.get("protocol", "iscene")), "--no-progress"] + _flags(c.get("score")), stage, ctx)
    doc = json.loads((scores / "scores.json").read_text())
    results = doc.get("protocols", doc)
    summaries = {name: r["summary"] for name, r in results.items() if isinstance(r, dict) and "summary" in r}
    if not summaries:
        raise StageError(f"{scores / 'scores.json'} holds no protocol summary")
    proto = str(c.get("protocol", "iscene")).split(",")[0]
    return {"scores": str(scores / "scores.json"), "summary": summaries.get(proto) or next(iter(summaries.values())),
            "protocols": summaries}


RUNNERS = {"catalog": run_catalog, "datagen": run_datagen, "reuse": run_reuse, "prefix": run_prefix, "bench": run_bench,
           "vae": run_vae, "latents": run_latents, "train": run_train, "probe": run_probe, "eval": run_eval,
           "baseline": run_baseline}
