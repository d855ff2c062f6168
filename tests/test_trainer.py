"""iscene-train on shards made by iscene-datagen: loss falls, exact resume, mixing ratio, DDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from train.config import TrainConfig
from iscene_core.shards import parse_mix, register_dataset, resolve

pytestmark = pytest.mark.blender  # the shards come from the real engine (Blender)


def _make(out: Path, name: str, n: int, seed: int) -> Path:
    from datagen.cli import main as datagen_main

    assert datagen_main(["--procedural", "--procedural-n", "40", "--n", str(n), "--seed", str(seed), "--views-per-scene", "2",
                         "--resolution", "112", "--samples", "2", "--no-denoise", "--min-visible-pixels", "4",
                         "--scenes-per-shard", "1", "--out", str(out), "--no-ray", "--name", name, "--space", "both"]) == 0
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    os.environ["ISCENE_CACHE"] = str(root / "cache")
    os.environ["ISCENE_REGISTRY"] = str(root / "registry.json")
    return {"big": _make(root / "big", "big", 4, 0), "small": _make(root / "small", "small", 2, 1)}


def _cfg(tmp_path: Path, mix: str, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "run"), mix=mix, steps=12, batch_size=2, image_size=56, max_instances=3,
                num_workers=0, lr=3e-3, log_every=1, ckpt_every=1000, seed=0, shuffle_buffer=4)
    return TrainConfig(**{**base, **kw})


def _losses(run: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (run / "log.jsonl").read_text().splitlines()]


def test_registry_resolves_names_and_folders(datasets):
    big = resolve("big")  # registered by iscene-datagen --name
    assert big.samples > 0 and all(Path(s).is_file() for s in big.shards)
    assert resolve(str(datasets["small"])).name == "small"
    with pytest.raises(KeyError, match="not registered"):
        resolve("rand15k-typo")
    assert parse_mix("a,b") == [("a", 0.5), ("b", 0.5)]
    assert parse_mix("a:0.3,b:0.7") == [("a", 0.3), ("b", 0.7)]
    with pytest.raises(ValueError):
        parse_mix("a:-1")


def test_loss_falls(datasets, tmp_path):
    from train.trainer import train

    cfg = _cfg(tmp_path, "big", steps=40, p_uncond=0.0)
    metrics = train(cfg)
    losses = _losses(Path(cfg.out))
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8]), losses
    assert metrics["loss_instance"] == metrics["loss_instance"] and metrics["rows_per_s"] > 0
    assert (Path(cfg.out) / "tb").is_dir() and (Path(cfg.out) / "config.json").is_file()


def test_kill_and_resume_reaches_the_same_weights(datasets, tmp_path):
    from train.trainer import train

    full = _cfg(tmp_path / "a", "big,small", steps=8)
    train(full)
    part = _cfg(tmp_path / "b", "big,small", steps=4, ckpt_every=4)
    train(part)  # "killed" after step 4 (its last checkpoint)
    train(_cfg(tmp_path / "b", "big,small", steps=8, ckpt_every=4, resume=True))
    a = load_file(str(Path(full.out) / "ckpt" / "step_00000008" / "model.safetensors"))
    b = load_file(str(Path(part.out) / "ckpt" / "step_00000008" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    ea = load_file(str(Path(full.out) / "ckpt" / "step_00000008" / "ema.safetensors"))
    eb = load_file(str(Path(part.out) / "ckpt" / "step_00000008" / "ema.safetensors"))
    torch.testing.assert_close(ea["out_layer.weight"], eb["out_layer.weight"], atol=1e-5, rtol=1e-4)


def test_mixing_ratio_holds_for_unequal_sizes(datasets):
    from train.data import DataConfig, mixed_stream

    cfg = DataConfig(mix="big:0.3,small:0.7", seed=3, shuffle_buffer=2)
    stream = mixed_stream(cfg, 0, 1)
    n = 1500
    small = sum(next(stream)[0] == "small" for _ in range(n))
    sd = np.sqrt(n * 0.7 * 0.3)
    assert abs(small - 0.7 * n) < 4 * sd, small  # the small dataset is resampled to keep its share


def test_stream_resume_and_rank_split(datasets):
    from train.data import DataConfig, batch_stream, source_stream

    cfg = DataConfig(mix="big", batch_size=2, image_size=28, max_instances=2, seed=1, shuffle_buffer=3)
    full = batch_stream(cfg, 0, 1)
    ref = [next(full)["key"] for _ in range(5)]
    resumed = batch_stream(cfg, 0, 1, start_batch=3)
    assert [next(resumed)["key"] for _ in range(2)] == ref[3:]
    shards = resolve("big").shards
    seen = [set(), set()]
    for part in (0, 1):
        st = source_stream(shards, "big", 0, part, 2, 1)
        for _ in range(len(shards)):
            seen[part].add(next(st)["__key__"].split("_")[0])
    assert not seen[0] & seen[1]  # ranks read disjoint shards within an epoch


def test_world_space_ablation_reads_world_grids(datasets, tmp_path):
    from train.data import DataConfig, batch_stream

    view = next(batch_stream(DataConfig(mix="big", batch_size=1, image_size=28, space="view"), 0, 1))
    world = next(batch_stream(DataConfig(mix="big", batch_size=1, image_size=28, space="world"), 0, 1))
    assert view["key"] == world["key"] and not torch.equal(view["scene_occ"], world["scene_occ"])


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from train.trainer import train

    try:
        train(TrainConfig(**cfg_dict))
    except Exception as exc:
        q.put((rank, f"{type(exc).__name__}: {exc}"))
        raise
    q.put(rank)


def _run_two_ranks(cfg: TrainConfig) -> tuple[list, list]:
    """Run ``cfg`` as two gloo ranks in spawned processes; (exit codes, what each rank put on the queue)."""
    import queue
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, cfg.to_dict(), q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    for p in procs:  # a rank still alive after 300 s is hung: fail the test, not the suite
        if p.is_alive():
            p.kill()
    said = []
    for _ in procs:
        try:
            said.append(q.get(timeout=5))
        except queue.Empty:
            break
    return [p.exitcode for p in procs], said


def test_ddp_ranks_all_stop_when_rank_zero_refuses_the_run_folder(datasets, tmp_path):
    """Rank 0 alone checks the run folder; when it refuses (here: an existing run, no --resume),
    rank 1 must stop with the same reason instead of waiting at a collective forever."""
    cfg = _cfg(tmp_path, "big", steps=1, ckpt_every=1)
    Path(cfg.out).mkdir(parents=True)
    (Path(cfg.out) / "config.json").write_text("{}")  # an earlier run's folder
    cfg.resume = False
    codes, said = _run_two_ranks(cfg)
    assert codes[0] != 0 and codes[1] != 0 and None not in codes  # both stopped, neither hangs
    reasons = dict(said)
    assert "already holds a run" in reasons[0] and "rank 0 refused" in reasons[1] and "already holds a run" in reasons[1]


def test_two_process_ddp_on_cpu(datasets, tmp_path):
    cfg = _cfg(tmp_path, "big", steps=3, ckpt_every=3)
    codes, done = _run_two_ranks(cfg)
    assert codes == [0, 0]
    assert sorted(done) == [0, 1]
    assert (Path(cfg.out) / "ckpt" / "step_00000003" / "model.safetensors").is_file()
    assert json.loads((Path(cfg.out) / "ckpt" / "step_00000003" / "meta.json").read_text())["world_size"] == 2


def test_cli_errors_are_clear(tmp_path, capsys):
    from train.cli import main

    assert main(["--mix", "no-such-dataset", "--out", str(tmp_path / "r"), "--steps", "1", "--image-size", "28"]) == 2
    assert "not registered" in capsys.readouterr().err
    assert main(["--mix", "x", "--space", "sideways"]) == 2


def test_sweep_writes_one_config_per_run(tmp_path):
    from train.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {steps: 10, image_size: 28}\ngrid:\n  mix: [big, 'big,small']\n  sca: [true, false]\n")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "sweep")]) == 0
    lines = (tmp_path / "sweep" / "commands.sh").read_text().splitlines()[2:]
    assert len(lines) == 4 and all("--config" in l for l in lines)


def test_fine_tune_from_a_trellis_folder(datasets, trellis_reference, tmp_path):
    """--init loads a TRELLIS-image-large-style folder (strict, safetensors) and trains in fp32."""
    import shutil

    from tests.test_conditioning import _tiny_transformers_folder
    from train.trainer import train

    weights = tmp_path / "trellis"
    (weights / "ckpts").mkdir(parents=True)
    for src, dst in [("ss_flow_small", "ss_flow_img_dit_L_16l8_fp16"), ("ss_dec_small", "ss_dec_conv3d_16l8_fp16"),
                     ("ss_enc_small", "ss_enc_conv3d_16l8_fp16")]:
        shutil.copy(trellis_reference / src / "model.json", weights / "ckpts" / f"{dst}.json")
        shutil.copy(trellis_reference / src / "model.safetensors", weights / "ckpts" / f"{dst}.safetensors")
    (weights / "pipeline.json").write_text(json.dumps({"name": "TrellisImageTo3DPipeline", "args": {"models": {
        "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16", "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16"}}}))
    _tiny_transformers_folder(tmp_path / "dino", channels=64, image_size=56)
    cfg = _cfg(tmp_path, "big", steps=2, init=str(weights), dinov2=str(tmp_path / "dino"), ckpt_every=2)
    train(cfg)
    before = load_file(str(trellis_reference / "ss_flow_small" / "model.safetensors"))
    after = load_file(str(Path(cfg.out) / "ckpt" / "step_00000002" / "model.safetensors"))
    assert before.keys() == after.keys() and all(v.dtype == torch.float32 for v in after.values())
    assert not torch.equal(before["blocks.0.self_attn.to_qkv.weight"], after["blocks.0.self_attn.to_qkv.weight"])


def test_same_entry_point_under_ray_train(datasets, tmp_path):
    import ray

    from train.cli import main

    out = tmp_path / "ray"
    try:
        assert main(["--mix", "big", "--out", str(out), "--steps", "2", "--batch-size", "1", "--image-size", "28",
                     "--max-instances", "2", "--num-workers", "0", "--ray-workers", "2"]) == 0
    finally:
        ray.shutdown()
    meta = json.loads((out / "ckpt" / "step_00000002" / "meta.json").read_text())
    assert meta["world_size"] == 2
