"""TRELLIS stage-1 compatibility: upstream test vectors, released state-dict layout, loaders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from iscene_core.flow import euler_sample
from iscene_core.trellis import (
    SparseStructureFlowModel,
    absolute_position_embedding,
    build_model,
    load_model,
    load_pipeline,
)


def _io(ref, name):
    return load_file(str(ref / name / "io.safetensors"))


def test_flow_matches_reference(trellis_reference):
    model = load_model(trellis_reference / "ss_flow_small" / "model").eval()
    io = _io(trellis_reference, "ss_flow_small")
    with torch.no_grad():
        v = model(io["input.x"], io["input.t"], io["input.cond"])
    assert (v - io["output.v"]).abs().max().item() < 1e-4


def test_encoder_matches_reference(trellis_reference):
    model = load_model(trellis_reference / "ss_enc_small" / "model").eval()
    io = _io(trellis_reference, "ss_enc_small")
    with torch.no_grad():
        mean = model(io["input.occupancy"], sample_posterior=False)
    assert (mean - io["output.mean"]).abs().max().item() < 1e-5


def test_decoder_matches_reference(trellis_reference):
    model = load_model(trellis_reference / "ss_dec_small" / "model").eval()
    io = _io(trellis_reference, "ss_dec_small")
    with torch.no_grad():
        logits = model(io["input.latent"])
    assert (logits - io["output.logits"]).abs().max().item() < 1e-5


def test_sampler_matches_reference(trellis_reference):
    ref = trellis_reference / "ss_flow_small"
    model = load_model(ref / "model").eval()
    io = load_file(str(ref / "sampler_io.safetensors"))
    cfg = json.loads((ref / "sampler.json").read_text())
    out = euler_sample(
        model, io["input.noise"], io["input.cond"], io["input.neg_cond"], steps=cfg["steps"],
        cfg_strength=cfg["cfg_strength"], cfg_interval=tuple(cfg["cfg_interval"]),
        rescale_t=cfg["rescale_t"], sigma_min=cfg["sigma_min"],
    )
    assert (out["samples"] - io["output.samples"]).abs().max().item() < 1e-4
    for i in range(cfg["steps"]):
        assert (out["pred_x0"][i] - io[f"output.pred_x_0.{i}"]).abs().max().item() < 1e-4


def test_position_embedding_formula_equals_saved_buffer(trellis_reference):
    saved = load_file(str(trellis_reference / "ss_flow_small" / "model.safetensors"))["pos_emb"]
    assert torch.allclose(absolute_position_embedding(16, saved.shape[1]), saved, atol=1e-6)


@pytest.mark.parametrize("key", ["ss_flow_img_dit_L_16l8", "ss_enc_conv3d_16l8", "ss_dec_conv3d_16l8"])
def test_released_state_dict_layout(trellis_reference, key):
    spec = json.loads((trellis_reference / "released_state_dicts.json").read_text())[key]
    with torch.device("meta"):
        model = build_model(spec["class"], spec["args"])
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert state == {k: list(v) for k, v in spec["state_dict"].items()}
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]


def test_load_pipeline_folder(trellis_reference, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for src, dst in [("ss_flow_small", "ss_flow_img_dit_L_16l8_fp16"), ("ss_dec_small", "ss_dec_conv3d_16l8_fp16"),
                     ("ss_enc_small", "ss_enc_conv3d_16l8_fp16")]:
        shutil.copy(trellis_reference / src / "model.json", ckpts / f"{dst}.json")
        shutil.copy(trellis_reference / src / "model.safetensors", ckpts / f"{dst}.safetensors")
    (tmp_path / "pipeline.json").write_text(json.dumps({
        "name": "TrellisImageTo3DPipeline",
        "args": {
            "models": {"sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16",
                       "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16"},
            "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                         "params": {"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
            "image_cond_model": "dinov2_vitl14_reg",
        },
    }))
    pipe = load_pipeline(tmp_path)
    assert isinstance(pipe["flow"], SparseStructureFlowModel) and pipe["encoder"] is not None
    assert pipe["sampler"] == {"sigma_min": 1e-5, "steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
    io = _io(trellis_reference, "ss_dec_small")
    with torch.no_grad():
        assert (pipe["decoder"](io["input.latent"]) - io["output.logits"]).abs().max() < 1e-5


def test_loader_errors_name_the_file(trellis_reference, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        shutil.copy(trellis_reference / "ss_flow_small" / "model.json", tmp_path / "nothere.json")
        load_model(tmp_path / "nothere")
    with pytest.raises(FileNotFoundError, match="pipeline.json"):
        load_pipeline(tmp_path)
    # a checkpoint whose tensors do not fit the config is refused (strict loading)
    shutil.copy(trellis_reference / "ss_dec_small" / "model.safetensors", tmp_path / "nothere.safetensors")
    with pytest.raises(RuntimeError):
        load_model(tmp_path / "nothere")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_torso_stays_close(trellis_reference, dtype):
    ref = trellis_reference / "ss_flow_small"
    io = _io(trellis_reference, "ss_flow_small")
    model = load_model(ref / "model").eval()
    model.convert_torso(dtype)
    assert model.blocks[0].self_attn.to_qkv.weight.dtype == dtype
    assert model.input_layer.weight.dtype == torch.float32 and model.t_embedder.mlp[0].weight.dtype == torch.float32
    if dtype == torch.float16:
        pytest.importorskip("torch")  # fp16 matmul on CPU is supported in torch >= 2.1
    with torch.no_grad():
        v = model(io["input.x"], io["input.t"], io["input.cond"])
    err = ((v.float() - io["output.v"]).norm() / io["output.v"].norm()).item()
    assert v.dtype == torch.float32 and err < 3e-2


def test_gradient_checkpointing_gives_same_gradients(trellis_reference):
    io = _io(trellis_reference, "ss_flow_small")
    grads = []
    for ckpt in (False, True):
        model = load_model(trellis_reference / "ss_flow_small" / "model", use_checkpoint=ckpt).train()
        model(io["input.x"], io["input.t"], io["input.cond"]).square().mean().backward()
        grads.append(model.blocks[0].self_attn.to_qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bf16_autocast_with_fp32_weights_stays_close(trellis_reference):
    """The training path: fp32 master weights under bf16 autocast, SCA on, output finite and close."""
    io = _io(trellis_reference, "ss_flow_small")
    model = load_model(trellis_reference / "ss_flow_small" / "model").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        v = model(io["input.x"], io["input.t"], io["input.cond"])
        v_sca = model(io["input.x"], io["input.t"], io["input.cond"], scene_index=torch.tensor([0, 0]))
    assert model.blocks[0].self_attn.to_qkv.weight.dtype == torch.float32
    err = ((v.float() - io["output.v"]).norm() / io["output.v"].norm()).item()
    assert err < 3e-2
    assert torch.allclose(v_sca[0].float(), v[0].float(), atol=1e-6)  # the scene row is unaffected by SCA
    assert bool(torch.isfinite(v_sca).all())
