"""iscene-infer end to end on tiny random weights saved in the TRELLIS-image-large folder layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import binary_dilation
from PIL import Image
from safetensors.torch import save_file

from iscene_core.infer import GRID_TO_GLTF, main, sample_scene
from iscene_core.space import grid_to_voxel
from iscene_core.trellis import SparseStructureDecoder, SparseStructureFlowModel, load_pipeline
from tests.test_conditioning import _tiny_transformers_folder

FLOW_ARGS = {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 64, "cond_channels": 32, "num_blocks": 2,
             "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": False}
DEC_ARGS = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "num_res_blocks_middle": 1, "channels": [16, 8, 8], "use_fp16": False}


def _save(model: torch.nn.Module, name: str, args: dict, ckpts: Path) -> None:
    (ckpts / f"{name}.json").write_text(json.dumps({"name": type(model).__name__, "args": args}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpts / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Random weights (every tensor randomised: upstream init zeroes the output layers), a tiny DINOv2, an image + mask."""
    root = tmp_path_factory.mktemp("infer")
    ckpts = root / "weights" / "ckpts"
    ckpts.mkdir(parents=True)
    torch.manual_seed(0)
    flow = SparseStructureFlowModel(**FLOW_ARGS)
    dec = SparseStructureDecoder(**DEC_ARGS)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            p.normal_(0, 0.05 if p.ndim > 1 else 0.02)
        for block in flow.blocks:  # peaked self-attention, so attending to the scene's tokens matters
            block.self_attn.q_rms_norm.gamma.normal_(4.0, 0.5)
            block.self_attn.k_rms_norm.gamma.normal_(4.0, 0.5)
        dec.out_layer[-1].bias.fill_(-0.3)  # mostly empty grids, so meshes stay small
    _save(flow, "ss_flow_img_dit_L_16l8_fp16", FLOW_ARGS, ckpts)
    _save(dec, "ss_dec_conv3d_16l8_fp16", DEC_ARGS, ckpts)
    (root / "weights" / "pipeline.json").write_text(json.dumps({"name": "TrellisImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16", "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16"},
        "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                     "params": {"steps": 3, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
        "image_cond_model": "dinov2_vitl14_reg"}}))
    _tiny_transformers_folder(root / "dino", channels=32)
    _tiny_transformers_folder(root / "dino64", channels=64)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), np.uint16)
    mask[10:40, 10:50], mask[50:90, 60:120], mask[20:30, 80:100] = 1, 2, 700  # 16-bit ids
    Image.fromarray(rgb).save(root / "img.png")
    Image.fromarray(mask).save(root / "mask.png")
    return {"root": root, "weights": root / "weights", "dino": root / "dino", "rgb": rgb, "mask": mask}


def _args(s: dict, out: Path, *extra: str, masks: Path | None = None, weights: Path | None = None, dino: Path | None = None) -> list[str]:
    return [str(s["root"] / "img.png"), "--masks", str(masks or s["root"] / "mask.png"), "--weights", str(weights or s["weights"]),
            "--dinov2", str(dino or s["dino"]), "--out", str(out), "--device", "cpu", *extra]


def test_cli_writes_a_node_per_instance_with_consistent_voxels(setup, tmp_path):
    out = tmp_path / "res" / "scene.glb"
    out.parent.mkdir()
    assert main(_args(setup, out, "--seed", "3")) == 0
    scene = trimesh.load(out, force="scene")
    nodes = set(scene.graph.nodes) - {scene.graph.base_frame}
    assert nodes == {"instance_1", "instance_2", "instance_700"}
    vox = np.load(out.with_suffix(".npz"))
    assert set(vox.files) == {"scene", "instance_1", "instance_2", "instance_700"}
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["instances"] == [1, 2, 700] and report["sampler"]["steps"] == 3 and report["sca"] is True
    assert report["mask_pixels"] == {"instance_1": 1200, "instance_2": 2400, "instance_700": 200}
    assert any(report["faces"].values()), "random weights should give at least one non-empty instance"
    for name in nodes:
        transform, geom = scene.graph[name]
        assert np.allclose(transform, GRID_TO_GLTF)
        coords = vox[name]
        assert report["voxels"][name] == len(coords) and (report["faces"][name] == 0) == (len(coords) == 0)
        if geom is None:
            continue
        # mesh data is in grid coords (the node transform shows it +Y up) next to the instance's occupied voxels
        verts = scene.geometry[geom].vertices
        occ = np.zeros((64,) * 3, bool)
        occ[tuple(coords.astype(int).T)] = True
        # every vertex lies in a marching cube with an occupied corner (Lewiner adds cube-interior
        # vertices for ambiguous cases), i.e. in the 26-neighbourhood of an occupied voxel
        near = binary_dilation(occ, np.ones((3, 3, 3), bool))
        v = grid_to_voxel(verts)
        assert near[v[:, 0], v[:, 1], v[:, 2]].all()
    world = scene.to_geometry().vertices  # what a viewer shows: grid (x, y, z) -> (x, z, -y)
    grid_all = np.vstack([scene.geometry[scene.graph[n][1]].vertices for n in sorted(scene.graph.nodes_geometry)])
    assert np.allclose(np.sort(world[:, 1]), np.sort(grid_all[:, 2]), atol=1e-6)
    # same seed, same result; the output files are replaced atomically, no temporary left
    first = {k: vox[k].copy() for k in vox.files}
    assert main(_args(setup, out, "--seed", "3")) == 0
    again = np.load(out.with_suffix(".npz"))
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert sorted(p.name for p in out.parent.iterdir()) == ["scene.glb", "scene.json", "scene.npz"]


def test_joint_sampling_sca_changes_instances_not_the_scene(setup):
    """The scene row attends to itself only, so it is the same with or without SCA; instances differ."""
    from iscene_core.conditioning import DinoConditioner, crop_instance, crop_scene

    pipe = load_pipeline(setup["weights"])
    cond_model = DinoConditioner.from_pretrained(setup["dino"])
    rgb, mask = setup["rgb"], setup["mask"]
    cond = cond_model.encode(torch.stack([crop_scene(rgb), crop_instance(rgb, mask == 1), crop_instance(rgb, mask == 2)]))
    params = {k: v for k, v in pipe["sampler"].items() if k != "cfg_interval"}
    z_sca, logits = sample_scene(pipe["flow"], pipe["decoder"], cond, params, seed=1, sca=True)
    z_plain, _ = sample_scene(pipe["flow"], pipe["decoder"], cond, params, seed=1, sca=False)
    assert z_sca.shape == (3, 8, 16, 16, 16) and logits.shape == (3, 64, 64, 64)
    torch.testing.assert_close(z_sca[0], z_plain[0], atol=1e-4, rtol=1e-4)
    # instances depend on their scene through SCA only: change the scene row's image condition
    other = cond.clone()
    other[0] = cond_model.encode(crop_scene(255 - rgb)[None])[0]
    z_sca2, _ = sample_scene(pipe["flow"], pipe["decoder"], other, params, seed=1, sca=True)
    z_plain2, _ = sample_scene(pipe["flow"], pipe["decoder"], other, params, seed=1, sca=False)
    plain_change = (z_plain2[1:] - z_plain[1:]).abs().max()
    sca_change = (z_sca2[1:] - z_sca[1:]).abs().max()
    assert plain_change < 1e-6 and sca_change > 1e-4  # exactly independent vs. clearly dependent
    assert (z_sca[1:] - z_plain[1:]).abs().max() > 1e-4
    assert pipe["flow"].sca_enabled  # restored after the ablation run
    # an instance sampled alone (plain TRELLIS, batch of one) equals its row of the no-SCA joint run
    z_alone, _ = sample_scene(pipe["flow"], pipe["decoder"], cond[:1], params, seed=1, sca=False)
    torch.testing.assert_close(z_alone[0], z_plain[0], atol=1e-4, rtol=1e-4)


def test_cli_errors_are_clear(setup, tmp_path, capsys):
    out = tmp_path / "x.glb"
    root = setup["root"]
    Image.fromarray(setup["mask"][:50]).save(root / "small.png")
    Image.fromarray(np.zeros((96, 128), np.uint16)).save(root / "empty.png")
    Image.fromarray(setup["rgb"]).save(root / "rgbmask.png")
    cases = [
        (_args(setup, out, masks=root / "missing.png"), "missing.png: file not found"),
        (_args(setup, out, masks=root / "small.png"), "must have the same size"),
        (_args(setup, out, masks=root / "empty.png"), "no instance"),
        (_args(setup, out, masks=root / "rgbmask.png"), "single-channel"),
        (_args(setup, out, weights=tmp_path), "pipeline.json missing"),
        (_args(setup, out, dino=tmp_path), "--dinov2"),
        (_args(setup, out, dino=root / "dino64"), "expects 32"),
        (_args(setup, out, "--steps", "0"), "--steps"),
        (_args(setup, tmp_path / "x.obj"), "expected a .glb"),
    ]
    try:
        import trellis  # noqa: F401
    except ImportError:
        cases.append((_args(setup, out, "--stage2"), "upstream TRELLIS package"))
    for argv, message in cases:
        assert main(argv) == 2, message
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_help_explains_the_inputs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--masks", "--weights", "--dinov2", "--steps", "--cfg", "--seed", "instance_<id>", "16-bit"):
        assert word in text


def test_missing_dinov2_is_an_error_not_the_hub_cache(setup, tmp_path, monkeypatch, capsys):
    """Without --dinov2 nothing is loaded from torch.hub's cache (that would run its hubconf.py silently)."""
    from tests.test_conditioning import _tiny_hub_layout

    _tiny_hub_layout(tmp_path / "th")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    argv = _args(setup, tmp_path / "x.glb")
    i = argv.index("--dinov2")
    del argv[i:i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--dinov2 is required" in err and "hubconf.py" in err and str(tmp_path / "th") not in err
    assert not (tmp_path / "x.glb").exists()


def _fp16_folder(setup, dst: Path) -> Path:
    """The setup's weights with ``use_fp16: true`` in the model configs, as released."""
    import shutil

    shutil.copytree(setup["weights"], dst)
    for f in (dst / "ckpts").glob("*.json"):
        cfg = json.loads(f.read_text())
        cfg["args"]["use_fp16"] = True
        f.write_text(json.dumps(cfg))
    return dst


def test_cpu_runs_released_fp16_weights_in_fp32(setup, tmp_path):
    fp16 = _fp16_folder(setup, tmp_path / "fp16")
    assert main(_args(setup, tmp_path / "a.glb", weights=fp16)) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["flow_dtype"] == "float32" and report["decoder_dtype"] == "float32"
    assert main(_args(setup, tmp_path / "b.glb")) == 0  # the same weights declared fp32
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_instances_that_decode_empty_give_empty_nodes_and_a_warning(setup, tmp_path, caplog):
    import shutil

    from safetensors.torch import load_file

    w = tmp_path / "empty"
    shutil.copytree(setup["weights"], w)
    dec = w / "ckpts" / "ss_dec_conv3d_16l8_fp16.safetensors"
    state = load_file(str(dec))
    state["out_layer.2.bias"] = torch.full_like(state["out_layer.2.bias"], -1e4)  # every voxel empty
    save_file(state, str(dec))
    with caplog.at_level("WARNING"):
        assert main(_args(setup, tmp_path / "e.glb", weights=w)) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report["faces"]) == {"instance_1", "instance_2", "instance_700"} and not any(report["faces"].values())
    assert "3 of 3 instances decoded empty" in caplog.text
    vox = np.load(tmp_path / "e.npz")
    assert all(len(vox[k]) == 0 for k in vox.files)
    scene = trimesh.load(tmp_path / "e.glb", force="scene")  # a valid GLB with the three empty nodes
    assert {"instance_1", "instance_2", "instance_700"} <= set(scene.graph.nodes)


def test_flow_weights_override_from_a_training_checkpoint(setup, tmp_path, capsys):
    """--flow-weights loads a trainer-style state dict (e.g. ema.safetensors) into the flow of --weights."""
    from safetensors.torch import load_file

    state = load_file(str(setup["weights"] / "ckpts" / "ss_flow_img_dit_L_16l8_fp16.safetensors"))
    save_file(state, str(tmp_path / "same.safetensors"))
    changed = {k: (v * 1.5 if k.startswith("out_layer") else v) for k, v in state.items()}
    save_file(changed, str(tmp_path / "ema.safetensors"))
    outs = {}
    for name in ("base", "same", "ema"):
        extra = [] if name == "base" else ["--flow-weights", str(tmp_path / f"{name}.safetensors")]
        assert main(_args(setup, tmp_path / f"{name}.glb", *extra)) == 0
        outs[name] = np.load(tmp_path / f"{name}.npz")
    assert all(np.array_equal(outs["base"][k], outs["same"][k]) for k in outs["base"].files)
    assert any(not np.array_equal(outs["base"][k], outs["ema"][k]) for k in outs["base"].files)
    save_file({k: v for k, v in state.items() if not k.startswith("out_layer")}, str(tmp_path / "bad.safetensors"))
    capsys.readouterr()
    assert main(_args(setup, tmp_path / "bad.glb", "--flow-weights", str(tmp_path / "bad.safetensors"))) == 2
    assert "does not fit the flow model" in capsys.readouterr().err
