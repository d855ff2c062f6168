"""`iscene-train probe`: the image-gain measurement a study uses to tell "learned the task" from
"learned a prior". A model that cannot see its image must score a gain of exactly 0; the one-step
x0 estimate must invert the noising path; bad arguments get one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from iscene_core.flow import noisy_sample, velocity_target
from tests.train_shards import make_dataset
from train.config import TrainConfig
from train.probe import main as probe_main
from train.probe import one_step_x0, probe


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, private_registry) -> Path:
    from train.trainer import train

    root = tmp_path_factory.mktemp("probe")
    make_dataset(root / "ds", "probe-ds", 6, per_shard=3)
    cfg = TrainConfig(out=str(root / "run"), mix="probe-ds", steps=3, batch_size=2, image_size=28, max_instances=3,
                      num_workers=0, log_every=1, ckpt_every=3, seed=0, shuffle_buffer=4, lr=3e-3)
    train(cfg)
    return Path(cfg.out)


def test_one_step_x0_inverts_the_noising_path():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 8, 4, 4, 4, generator=g), torch.randn(3, 8, 4, 4, 4, generator=g)
    for t in (0.05, 0.5, 0.95):
        for sigma_min in (0.0, 1e-5, 0.1):
            xt = noisy_sample(x0, eps, torch.full((3,), t), sigma_min)
            assert torch.allclose(one_step_x0(xt, velocity_target(x0, eps, sigma_min), t, sigma_min), x0, atol=1e-5)


def test_probe_is_deterministic_and_blind_model_has_zero_image_gain(trained_run, tmp_path):
    a = probe(trained_run, batches=2, ts=(0.3, 0.9))
    b = probe(trained_run, batches=2, ts=(0.3, 0.9))
    assert a["per_t"] == b["per_t"] and [p["t"] for p in a["per_t"]] == [0.3, 0.9]
    assert all(p["instances"] > 0 and p["loss_cond"] > 0 for p in a["per_t"])
    assert any(p["loss_cond"] != p["loss_uncond"] for p in a["per_t"])  # the trained model does read its image

    blind = tmp_path / "blind"
    shutil.copytree(trained_run, blind)
    ck = blind / "ckpt" / "step_00000003" / "ema.safetensors"
    w = load_file(str(ck))
    for k in w:
        if ".cross_attn.to_out." in k:  # the only path from the image to the flow
            w[k] = torch.zeros_like(w[k])
    save_file(w, str(ck))
    cfg = json.loads((blind / "config.json").read_text())
    (blind / "config.json").write_text(json.dumps({**cfg, "out": str(blind)}))
    r = probe(blind, batches=2, ts=(0.3, 0.9))
    assert all(p["image_gain"] == 0.0 and p["loss_cond"] == p["loss_uncond"] for p in r["per_t"])


def test_probe_cli_writes_json_and_rejects_bad_arguments(trained_run, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert probe_main([str(trained_run), "--batches", "1", "--t", "0.5", "--out", str(out)]) == 0
    assert "image gain" in capsys.readouterr().out
    assert json.loads(out.read_text())["per_t"][0]["t"] == 0.5
    assert probe_main([str(trained_run), "--t", "1.5"]) == 2
    assert "(0, 1)" in capsys.readouterr().err
    assert probe_main([str(trained_run / "config.json")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert probe_main([str(trained_run), "--step", "7"]) == 2
    assert "step_00000007" in capsys.readouterr().err
