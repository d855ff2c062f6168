"""DINOv2 conditioning (both local layouts), TRELLIS-style crops, metrics, and iscene-infer end to end."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from iscene_core.conditioning import DinoConditioner, crop_instance, crop_scene
from iscene_core.metrics import chamfer_distance, f_score, voxel_iou


def _tiny_transformers_folder(path, channels=64, image_size=518):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=channels, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * channels,
                                    patch_size=14, image_size=image_size, num_register_tokens=4)
    model = Dinov2WithRegistersModel(cfg).eval()
    model.save_pretrained(path)
    return model


def test_transformers_folder_gives_prenorm_tokens_layer_normed(tmp_path):
    ref = _tiny_transformers_folder(tmp_path / "dino")
    cond = DinoConditioner.from_pretrained(tmp_path / "dino")
    img = torch.rand(2, 3, 518, 518)
    feats = cond.encode(img)
    assert feats.shape == (2, 1 + 4 + 37 * 37, 64)  # class, 4 registers, 37 x 37 patches
    x = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = ref(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(feats, F.layer_norm(out.hidden_states[-1], (64,)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats, out.last_hidden_state, atol=1e-3)  # not the post-norm output


def test_torch_hub_local_layout(tmp_path, monkeypatch):
    """A repo folder with hubconf.py + a checkpoint in $TORCH_HOME/hub/checkpoints, loaded offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    repo = tmp_path / "torch_home" / "hub" / "facebookresearch_dinov2_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(textwrap.dedent('''
        import torch
        dependencies = ["torch"]

        class TinyViT(torch.nn.Module):
            embed_dim = 16
            def __init__(self):
                super().__init__()
                self.patch = torch.nn.Conv2d(3, 16, 14, stride=14)
                self.tokens = torch.nn.Parameter(torch.zeros(1, 5, 16))
                self.norm = torch.nn.LayerNorm(16)
            def forward_features(self, x):
                p = self.patch(x).flatten(2).transpose(1, 2)
                t = torch.cat([self.tokens.expand(len(x), -1, -1), p], 1)
                return {"x_prenorm": t, "x_norm_patchtokens": self.norm(t)[:, 5:]}

        def dinov2_vitl14_reg(pretrained=True, **kwargs):
            model = TinyViT()
            if pretrained:
                path = torch.hub.get_dir() + "/checkpoints/dinov2_vitl14_reg4_pretrain.pth"
                model.load_state_dict(torch.load(path, weights_only=True))
            return model
    '''))
    (repo.parent / "checkpoints").mkdir()
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_tmp", repo / "hubconf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(1)
    src = mod.TinyViT()
    torch.save(src.state_dict(), repo.parent / "checkpoints" / "dinov2_vitl14_reg4_pretrain.pth")
    cond = DinoConditioner.from_pretrained(repo)
    img = torch.rand(1, 3, 518, 518)
    x = (img - cond.mean) / cond.std
    torch.testing.assert_close(cond.encode(img), F.layer_norm(src.forward_features(x)["x_prenorm"], (16,)))
    with pytest.raises(FileNotFoundError, match="not a DINOv2 folder"):
        DinoConditioner.from_pretrained(tmp_path)


def test_instance_crop_is_centred_enlarged_and_black_outside():
    rgb = np.full((200, 300, 3), 200, np.uint8)
    mask = np.zeros((200, 300), bool)
    mask[40:100, 150:270] = True  # 120 wide, 60 tall; centre (210, 70)
    rgb[mask] = (255, 0, 0)
    out = crop_instance(rgb, mask, size=240).numpy()
    assert out.shape == (3, 240, 240)
    red = out[0] > 0.5
    ys, xs = np.nonzero(red)
    # the mask's width (the longer side) spans 1 / 1.2 of the crop, centred
    assert abs((xs.max() - xs.min() + 1) - 240 / 1.2) <= 3 and abs((xs.min() + xs.max()) / 2 - 119.5) <= 2
    assert abs((ys.max() - ys.min() + 1) - 60 * 240 / 144) <= 3 and abs((ys.min() + ys.max()) / 2 - 119.5) <= 2
    assert out[:, 5, 5].max() < 0.02  # background outside the mask is black (alpha 0), not grey
    s = crop_scene(rgb, size=100).numpy()
    assert s.shape == (3, 100, 100) and s[:, 2, 50].max() == 0  # padded to square with black


def test_metrics_against_hand_computed_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert voxel_iou(a, b) == pytest.approx(1 / 3)
    assert voxel_iou(np.argwhere(a), np.argwhere(b)) == pytest.approx(1 / 3)
    p = np.array([[0.0, 0, 0], [1, 0, 0]])
    q = np.array([[0.0, 0, 0], [1, 0.5, 0]])
    assert chamfer_distance(p, q) == pytest.approx(0.25)
    assert f_score(p, q, 0.1) == pytest.approx(0.5) and f_score(p, q, 0.6) == pytest.approx(1.0)


def test_iscene_infer_end_to_end_with_tiny_weights(trellis_reference, tmp_path):
    from iscene_core.infer import main as infer_main

    weights = tmp_path / "weights"
    (weights / "ckpts").mkdir(parents=True)
    for src, dst in [("ss_flow_small", "ss_flow_img_dit_L_16l8_fp16"), ("ss_dec_small", "ss_dec_conv3d_16l8_fp16")]:
        shutil.copy(trellis_reference / src / "model.json", weights / "ckpts" / f"{dst}.json")
        shutil.copy(trellis_reference / src / "model.safetensors", weights / "ckpts" / f"{dst}.safetensors")
    (weights / "pipeline.json").write_text(json.dumps({"name": "TrellisImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16", "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16"},
        "sparse_structure_sampler": {"args": {"sigma_min": 1e-5}, "params": {"steps": 3, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}}}))
    _tiny_transformers_folder(tmp_path / "dino", channels=64)  # the small flow model's cond_channels
    rgb = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), np.uint16)
    mask[10:40, 10:50], mask[50:90, 60:120], mask[20:30, 80:100] = 1, 2, 7
    Image.fromarray(rgb).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "scene.glb"
    assert infer_main([str(tmp_path / "img.png"), "--masks", str(tmp_path / "mask.png"), "--weights", str(weights),
                       "--dinov2", str(tmp_path / "dino"), "--out", str(out), "--device", "cpu"]) == 0
    scene = trimesh.load(out)
    assert sorted(scene.graph.nodes_geometry) == ["instance_1", "instance_2", "instance_7"]
    vox = np.load(out.with_suffix(".npz"))
    assert set(vox.files) == {"scene", "instance_1", "instance_2", "instance_7"}
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["sampler"]["steps"] == 3 and report["instances"] == [1, 2, 7]
    # a mask of the wrong size is a clear error
    Image.fromarray(mask[:50]).save(tmp_path / "bad.png")
    assert infer_main([str(tmp_path / "img.png"), "--masks", str(tmp_path / "bad.png"), "--weights", str(weights),
                       "--dinov2", str(tmp_path / "dino"), "--out", str(out)]) == 2
