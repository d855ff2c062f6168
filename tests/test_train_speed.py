"""Affordable training (issue 11): resume by seeking instead of replaying, and the latent cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_shards import make_dataset
from train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_resume_seeks_to_the_data_position_instead_of_replaying(tmp_path, monkeypatch):
    """A resumed stream continues with the uninterrupted run's batches and reads only what its
    shuffle buffer held plus the next batch, not the k earlier batches."""
    import train.data as data
    from train.data import DataConfig, batch_stream

    root = make_dataset(tmp_path / "ds", "seek", 40, per_shard=4)
    cfg = DataConfig(mix=str(root), batch_size=2, max_instances=3, image_size=28, shuffle_buffer=4, seed=2)
    full = batch_stream(cfg, 0, 1)
    batches = [next(full) for _ in range(14)]
    k = 11
    validated = []
    real = data.validate_sample
    monkeypatch.setattr(data, "validate_sample", lambda raw, **kw: (validated.append(raw["__key__"]), real(raw, **kw))[1])
    resumed = batch_stream(cfg, 0, 1, state=batches[k - 1]["position"])
    for ref in batches[k:]:
        got = next(resumed)
        assert got["key"] == ref["key"] and torch.equal(got["scene_occ"], ref["scene_occ"])
        assert torch.equal(got["inst_images"], ref["inst_images"])
    assert len(validated) == 2 * (len(batches) - k)  # nothing before batch k was read again
    validated.clear()
    replay = batch_stream(cfg, 0, 1, start_batch=k)
    assert next(replay)["key"] == batches[k]["key"]
    assert len(validated) >= 2 * (k + 1)  # the old way: every earlier batch read and validated


def test_resume_across_an_epoch_boundary_and_sources(tmp_path):
    from train.data import DataConfig, batch_stream

    a = make_dataset(tmp_path / "a", "seek_a", 6, per_shard=2)
    b = make_dataset(tmp_path / "b", "seek_b", 4, per_shard=1, seed=1)
    cfg = DataConfig(mix=f"{a}:0.6,{b}:0.4", batch_size=3, max_instances=2, image_size=28, shuffle_buffer=3, seed=4)
    full = batch_stream(cfg, 1, 2)  # the second of two parts (rank/worker split)
    batches = [next(full) for _ in range(12)]  # several epochs of both sources
    for k in (1, 5, 9):
        resumed = batch_stream(cfg, 1, 2, state=batches[k - 1]["position"])
        assert [next(resumed)["key"] for _ in range(3)] == [b_["key"] for b_ in batches[k:k + 3]]
    assert json.loads(json.dumps(batches[5]["position"])) == batches[5]["position"]  # JSON-able for data.json


def _run_cli(args: list[str], registry: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ISCENE_REGISTRY": str(registry), "PYTHONPATH": str(REPO)}
    return subprocess.run([str(Path(sys.executable).parent / "iscene-train"), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


@pytest.mark.slow
def test_cache_latents_then_train_from_the_cache(tmp_path, private_registry):
    """cache-latents writes one file per shard; cached latents equal the on-the-fly ones; training
    reads them (--latents cache) and refuses a missing cache with one line."""
    from train.data import DataConfig, batch_stream
    from train.models import build_encoder, encode_latents, encoder_id
    from train.trainer import batch_to_rows

    root = make_dataset(tmp_path / "ds", "cache", 8, per_shard=4)
    common = ["--mix", str(root), "--image-size", "28", "--num-workers", "0", "--steps", "2", "--max-instances", "3"]
    r = _run_cli(["--out", str(tmp_path / "none")] + common + ["--latents", "cache"], private_registry)
    assert r.returncode == 2 and "cache-latents" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run_cli(["cache-latents", "--mix", str(root)], private_registry)
    assert r.returncode == 0, r.stderr
    cfg = TrainConfig(mix=str(root), image_size=28, max_instances=3, num_workers=0)
    enc = build_encoder(cfg).eval()
    eid = encoder_id(enc)
    caches = sorted((root / "shards").glob(f"*.latents-view-{eid}.npz"))
    assert len(caches) == 2
    before = [p.stat().st_mtime_ns for p in caches]
    assert _run_cli(["cache-latents", "--mix", str(root)], private_registry).returncode == 0  # resumable: nothing redone
    assert [p.stat().st_mtime_ns for p in caches] == before
    on_the_fly = batch_stream(DataConfig.from_train(cfg, latents="encode"), 0, 1)
    cached = batch_stream(DataConfig.from_train(cfg, latents="cache", encoder_id=eid), 0, 1)
    for _ in range(3):
        a, b = batch_to_rows(next(on_the_fly), torch.device("cpu")), batch_to_rows(next(cached), torch.device("cpu"))
        assert b.are_latents and not a.are_latents and b.grids.shape[1:] == (8, 16, 16, 16)
        torch.testing.assert_close(b.grids, encode_latents(enc, a.grids), atol=1e-6, rtol=1e-5)
    r = _run_cli(["--out", str(tmp_path / "run")] + common + ["--latents", "cache", "--ckpt-every", "2"], private_registry)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "ckpt" / "step_00000002" / "model.safetensors").is_file()


def test_grad_checkpointing_defaults_on_for_L_only():
    assert TrainConfig(model_size="L").use_grad_checkpointing
    assert TrainConfig(init="some/TRELLIS-image-large").use_grad_checkpointing
    assert not TrainConfig(model_size="tiny").use_grad_checkpointing
    assert not TrainConfig(model_size="L", grad_checkpointing=False).use_grad_checkpointing


def test_memory_benchmark_counts_block_activations():
    """bench_memory's CPU measurement: the a*T + b*T^2 fit of two token counts predicts a third one
    (the extrapolation the L figures rest on), and checkpointing lowers the peak."""
    sys.path.insert(0, str(REPO))
    from bench.bench_memory import block_measure, config_row, fit

    ts = [32, 64]
    c, a = fit(ts, [block_measure("tiny", 7, t, False)[0] for t in ts])
    far = block_measure("tiny", 7, 256, False)[0]
    assert abs(c + a * 256 - far) / far < 0.05
    row = config_row("tiny", 7, [32, 64, 128], 989.0, 0.4)
    assert row["fp32"]["fit_check_third_T_rel_error"] < 0.05
    assert row["fp32"]["peak_GB_checkpointing"] < row["fp32"]["peak_GB_no_checkpointing"]
    assert row["bf16"]["extrapolated_block_saved_GB"] < row["fp32"]["extrapolated_block_saved_GB"]
