"""Training correctness at scale (issue 11): exact DDP resume, resume guards, fp32 frozen features, loss weighting.

Datasets are written directly in the shard format (tests/train_shards.py).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train_shards import make_dataset
from train.config import TrainConfig


def _cfg(out: Path, mix: str, **kw) -> TrainConfig:
    base = dict(out=str(out), mix=mix, steps=4, batch_size=2, image_size=28, max_instances=3, num_workers=0, lr=3e-3,
                log_every=1, ckpt_every=1000, seed=0, shuffle_buffer=4)
    return TrainConfig(**{**base, **kw})


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, registry: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      ISCENE_REGISTRY=registry)
    import torch.distributed as dist

    from train.trainer import train

    try:
        train(TrainConfig(**cfg_dict))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _ddp(cfg: TrainConfig, registry: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, cfg.to_dict(), str(registry))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


@pytest.mark.slow
def test_ddp_kill_and_resume_restores_every_ranks_random_stream(tmp_path, private_registry):
    """Two gloo processes: 4 steps straight vs 2 steps, 'kill', resume to 4. Every rank's loss
    generator (t, noise, dropout draws) and the final weights must equal the uninterrupted run.
    (Before: only rank 0's generator was saved, and after a resume every rank replayed it.)"""
    root = make_dataset(tmp_path / "ds", "ddp", 16, per_shard=2)
    full = _cfg(tmp_path / "full", str(root), steps=4, ckpt_every=4)
    _ddp(full, private_registry)
    _ddp(_cfg(tmp_path / "part", str(root), steps=2, ckpt_every=2), private_registry)
    _ddp(_cfg(tmp_path / "part", str(root), steps=4, ckpt_every=2, resume=True), private_registry)
    a_dir, b_dir = tmp_path / "full" / "ckpt" / "step_00000004", tmp_path / "part" / "ckpt" / "step_00000004"
    sa = torch.load(a_dir / "state.pt", weights_only=True)["ranks"]
    sb = torch.load(b_dir / "state.pt", weights_only=True)["ranks"]
    assert len(sa) == len(sb) == 2
    assert not torch.equal(sa[0]["loss"], sa[1]["loss"])  # ranks draw different t / noise / dropout
    for r in range(2):
        assert torch.equal(sa[r]["loss"], sb[r]["loss"]), f"rank {r}'s draws differ after the resume"
    wa, wb = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    da, db = json.loads((a_dir / "data.json").read_text()), json.loads((b_dir / "data.json").read_text())
    assert da == db and len(da["ranks"]) == 2 and da["ranks"][0] != da["ranks"][1]


def test_resume_with_another_worker_count_or_world_size_stops_clearly(tmp_path):
    from train.checkpoint import ResumeMismatch, read_resume
    from train.trainer import train

    root = make_dataset(tmp_path / "ds", "mismatch", 8)
    train(_cfg(tmp_path / "run", str(root), steps=2, ckpt_every=2))
    with pytest.raises(ResumeMismatch, match="--num-workers 0"):
        train(_cfg(tmp_path / "run", str(root), steps=4, resume=True, num_workers=2))
    ckpt = tmp_path / "run" / "ckpt" / "step_00000002"
    with pytest.raises(ResumeMismatch, match="1 training process"):
        read_resume(ckpt, rank=0, world_size=2, num_workers=0)
    meta, rng, positions = read_resume(ckpt, rank=0, world_size=1, num_workers=1)  # 0 and 1 workers read the same part
    assert meta["step"] == 2 and positions is not None and len(positions) == 1


@pytest.mark.slow
def test_kill_and_resume_with_data_workers_equals_uninterrupted(tmp_path):
    from train.trainer import train

    root = make_dataset(tmp_path / "ds", "workers", 12)
    train(_cfg(tmp_path / "a", str(root), steps=6, ckpt_every=6, num_workers=2))
    train(_cfg(tmp_path / "b", str(root), steps=3, ckpt_every=3, num_workers=2))
    train(_cfg(tmp_path / "b", str(root), steps=6, ckpt_every=3, num_workers=2, resume=True))
    wa = load_file(str(tmp_path / "a" / "ckpt" / "step_00000006" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "ckpt" / "step_00000006" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)


def test_frozen_encoder_and_dinov2_compute_in_fp32_under_training_autocast(tmp_path):
    """Training runs the flow under bf16 autocast; the frozen encoder and DINOv2 must not follow it,
    so training sees the features inference computes (fp32)."""
    from iscene_core.trellis import SparseStructureEncoder
    from train.models import encode_latents, tiny_dinov2
    from train.trainer import Rows, condition_of, latents_of

    torch.manual_seed(0)
    enc = SparseStructureEncoder(in_channels=1, channels=[8, 16, 32], latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1).eval()
    dino = tiny_dinov2(32, 28).eval()
    occ = (torch.rand(2, 1, 64, 64, 64) > 0.97).float()
    images = torch.rand(2, 3, 28, 28)
    ref_lat = enc(occ)
    ref_cond = dino.backbone(pixel_values=(images - dino.mean) / dino.std, output_hidden_states=True).hidden_states[-1]
    ref_cond = torch.nn.functional.layer_norm(ref_cond, ref_cond.shape[-1:])
    rows = Rows(occ, False, images, torch.tensor([0, 0]), torch.tensor([True, False]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lat, lat2 = latents_of(rows, enc), encode_latents(enc, occ)
        cond, cond2 = condition_of(rows, dino), dino.encode(images)  # the trainer's path and iscene-infer's path
    for got, ref in ((lat, ref_lat), (lat2, ref_lat), (cond, ref_cond), (cond2, ref_cond)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_loss_weighting_flag_balances_groups_and_ranks():
    from iscene_core.flow import loss_row_weights

    # two scene groups: one with 3 instances, one with 1
    si = torch.tensor([0, 0, 0, 0, 4, 4])
    is_scene = torch.tensor([True, False, False, False, True, False])
    w = loss_row_weights(is_scene, si, "groups", scene_weight=0.5)
    torch.testing.assert_close(w, torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6, 0.5, 0.5]))
    assert abs(w[:4].sum() - w[4:].sum()) < 1e-6  # each scene group weighs the same
    torch.testing.assert_close(loss_row_weights(torch.tensor([True]), torch.tensor([0]), "groups", 0.3), torch.tensor([1.0]))
    assert torch.equal(loss_row_weights(is_scene, si, "rows"), torch.ones(6))
    with pytest.raises(ValueError):
        loss_row_weights(is_scene, si, "bogus")


def test_loss_weighting_is_a_training_flag(tmp_path):
    """--loss-weighting groups vs rows changes the trained weights (and rows = plain mean on one rank)."""
    from train.trainer import train

    root = make_dataset(tmp_path / "ds", "weighting", 6)
    train(_cfg(tmp_path / "g", str(root), steps=2, ckpt_every=2, loss_weighting="groups"))
    train(_cfg(tmp_path / "r", str(root), steps=2, ckpt_every=2, loss_weighting="rows"))
    log_g = [json.loads(l) for l in (tmp_path / "g" / "log.jsonl").read_text().splitlines()]
    log_r = [json.loads(l) for l in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log_g[0]["loss"] != log_r[0]["loss"]
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["loss_weighting"] == "groups" and cfg["scene_weight"] == 0.5


def test_instance_view_crop_or_masked_frame(tmp_path):
    """--instance-view masked-frame: the whole view, black except the instance, framed like the scene image."""
    import numpy as np

    from iscene_core.conditioning import crop_instance, crop_scene, masked_frame
    from iscene_core.shards import iter_raw, validate_sample
    from train.data import DataConfig, decode_sample

    root = make_dataset(tmp_path / "ds", "views", 2, per_shard=2, register=False)
    key, files = next(iter_raw(sorted((root / "shards").glob("*.tar"))[0]))
    sample = validate_sample({"__key__": key, **files}, expected_resolution=64)
    sample["__shard__"] = "x"
    rgb, inst = sample["rgb"], sample["inst"]
    ids = [int(i) for i in np.unique(inst) if i]
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    crop = decode_sample(sample, DataConfig(mix="x", image_size=56, instance_view="crop"), rng())
    frame = decode_sample(sample, DataConfig(mix="x", image_size=56, instance_view="masked-frame"), rng())
    for j, i in enumerate(ids):
        torch.testing.assert_close(crop["inst_images"][j], crop_instance(rgb, inst == i, 56))
        expected = crop_scene(rgb * (inst == i)[..., None].astype(np.uint8), 56)
        torch.testing.assert_close(frame["inst_images"][j], expected)
        torch.testing.assert_close(masked_frame(rgb, inst == i, 56), expected)
        outside = crop_scene(np.repeat(((inst != i) * 255).astype(np.uint8)[..., None], 3, -1), 56)[0] > 0.999
        assert frame["inst_images"][j][:, outside].abs().max() < 1e-6  # black wherever the instance is not
    assert TrainConfig(instance_view="masked-frame").instance_view == "masked-frame"
    with pytest.raises(ValueError, match="--instance-view"):
        TrainConfig(instance_view="whole").validate()


def test_learned_conditioner_trains_jointly_and_serves_inference(tmp_path):
    """--conditioner learned: no DINOv2 needed; its weights train, are checkpointed (+ EMA, + config) and
    load in iscene-infer's loader into the same encoder."""
    from safetensors.torch import load_file

    from iscene_core.infer import load_learned_conditioner
    from train.models import build_conditioner
    from train.trainer import train

    root = make_dataset(tmp_path / "ds", "learned", 6)
    cfg = _cfg(tmp_path / "run", str(root), steps=2, ckpt_every=2, conditioner="learned")
    train(cfg)
    ck = tmp_path / "run" / "ckpt" / "step_00000002"
    init = build_conditioner(cfg, 32).state_dict()
    trained = load_file(str(ck / "conditioner.safetensors"))
    assert trained.keys() == init.keys() and not torch.equal(trained["proj.weight"], init["proj.weight"])
    model = load_learned_conditioner(ck / "conditioner_ema.safetensors")
    img = torch.rand(1, 3, 28, 28)
    assert model.encode(img).shape == (1, 1 + 4, 32)
    with pytest.raises(ValueError, match="drop --dinov2"):
        TrainConfig(conditioner="learned", dinov2="x").validate()


def test_lr_schedule_cosine_logs_its_curve_and_resume_continues_it(tmp_path):
    """--lr-schedule cosine: warm-up, then a decay to 1% of --lr at --steps, logged per step; a run
    killed after its step-3 checkpoint and resumed logs the same rates and ends with the same weights."""
    import shutil

    from train.lr_schedule import lr_at_step
    from train.trainer import train

    root = make_dataset(tmp_path / "ds", "cosine", 6)
    kw = dict(lr_schedule="cosine", warmup_steps=2, steps=6, ckpt_every=3)
    train(_cfg(tmp_path / "a", str(root), **kw))
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # as if killed after step 3's checkpoint
    shutil.rmtree(tmp_path / "b" / "ckpt" / "step_00000006")
    train(_cfg(tmp_path / "b", str(root), **kw, resume=True))
    logs = {k: [json.loads(l) for l in (tmp_path / k / "log.jsonl").read_text().splitlines()] for k in "ab"}
    lrs = [r["lr"] for r in logs["a"]]
    assert lrs == [lr_at_step(3e-3, s, 6, warmup=2, schedule="cosine") for s in range(6)]
    assert lrs[0] == 1.5e-3 and lrs[1] == max(lrs) and lrs[-1] < 0.1 * lrs[1]
    assert [r["lr"] for r in logs["b"]][-3:] == lrs[-3:]
    wa = load_file(str(tmp_path / "a" / "ckpt" / "step_00000006" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "ckpt" / "step_00000006" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)


def test_lr_at_step_shapes():
    from train.lr_schedule import lr_at_step
    from train.vae import VAEConfig, lr_at

    assert [lr_at_step(1.0, s, 10) for s in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert lr_at_step(1.0, 0, 10, warmup=4) == 0.25 and lr_at_step(1.0, 3, 10, warmup=4) == 1.0
    cos = [lr_at_step(1.0, s, 100, schedule="cosine") for s in range(101)]
    assert cos[0] == 1.0 and abs(cos[50] - 0.505) < 1e-12 and abs(cos[100] - 0.01) < 1e-12
    assert all(a >= b for a, b in zip(cos, cos[1:]))
    assert lr_at(VAEConfig(lr=2.0, steps=100, lr_schedule="cosine"), 50) == 2.0 * cos[50]
    with pytest.raises(ValueError, match="schedule"):
        lr_at_step(1.0, 0, 10, schedule="linear")


def test_cpu_bf16_autocasts_the_flow_on_cpu_only_when_asked(tmp_path):
    """--cpu-bf16 runs the flow under bf16 autocast on a CPU (the default stays fp32 there)."""
    from train.trainer import train

    root = make_dataset(tmp_path / "ds", "cpubf16", 6)
    train(_cfg(tmp_path / "fp32", str(root), steps=2, ckpt_every=2))
    train(_cfg(tmp_path / "fp32b", str(root), steps=2, ckpt_every=2, cpu_bf16=True, bf16=False))
    train(_cfg(tmp_path / "bf16", str(root), steps=2, ckpt_every=2, cpu_bf16=True))
    loss = {k: [json.loads(l)["loss"] for l in (tmp_path / k / "log.jsonl").read_text().splitlines()] for k in ("fp32", "fp32b", "bf16")}
    assert loss["fp32"] == loss["fp32b"]  # --no-bf16 wins
    # step 1 cannot tell: the flow's output layer starts at zero, in any precision
    assert loss["bf16"][1] != loss["fp32"][1] and abs(loss["bf16"][1] - loss["fp32"][1]) < 0.05 * abs(loss["fp32"][1])
