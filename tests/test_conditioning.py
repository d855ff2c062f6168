"""DINOv2 conditioning from both local layouts (tiny random configurations) and TRELLIS-style crops."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iscene_core.conditioning import HUB_CHECKPOINT, DinoConditioner, crop_box, crop_instance, crop_scene

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _tiny_transformers_folder(path, channels=64, image_size=518):
    """A random 2-layer Dinov2WithRegisters saved as a transformers folder; returns the model."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=channels, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * channels,
                                    patch_size=14, image_size=image_size, num_register_tokens=4)
    model = Dinov2WithRegistersModel(cfg).eval()
    with torch.no_grad():  # make the final norm non-trivial so pre- and post-norm tokens differ clearly
        model.layernorm.weight.uniform_(0.5, 2.0)
        model.layernorm.bias.normal_(0, 0.5)
    model.save_pretrained(path)
    return model


def test_transformers_folder_gives_prenorm_tokens_layer_normed(tmp_path):
    ref = _tiny_transformers_folder(tmp_path / "dino")
    cond = DinoConditioner.from_pretrained(tmp_path / "dino")
    assert cond.kind == "transformers" and cond.out_channels == 64
    img = torch.rand(2, 3, 518, 518)
    feats = cond.encode(img)
    assert feats.shape == (2, 1 + 4 + 37 * 37, 64)  # class, 4 registers, 37 x 37 patches
    with torch.no_grad():
        out = ref(pixel_values=(img - MEAN) / STD, output_hidden_states=True)
    # what transformers returns: hidden_states = (embeddings, block 1, ..., block L), the last one
    # before the final layernorm; last_hidden_state = that layernorm applied to it
    assert len(out.hidden_states) == 2 + 1
    torch.testing.assert_close(ref.layernorm(out.hidden_states[-1]), out.last_hidden_state)
    torch.testing.assert_close(feats, F.layer_norm(out.hidden_states[-1], (64,)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats, out.last_hidden_state, atol=1e-2)  # not the post-norm (affine) output
    # layer norm without affine: every token has zero mean and unit variance
    torch.testing.assert_close(feats.mean(-1), torch.zeros(2, 1374), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.var(-1, unbiased=False), torch.ones(2, 1374), atol=2e-2, rtol=0)  # eps 1e-5 shows on near-constant register tokens


def test_transformers_folder_without_registers_is_refused(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="with registers"):
        DinoConditioner.from_pretrained(tmp_path / "plain")


HUBCONF = textwrap.dedent('''
    """Minimal stand-in for facebookresearch/dinov2's hubconf: a tiny ViT with 4 registers."""
    import torch
    dependencies = ["torch"]
    URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"

    class TinyViT(torch.nn.Module):
        embed_dim = 16
        def __init__(self):
            super().__init__()
            self.patch_embed = torch.nn.Conv2d(3, 16, 14, stride=14)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 16))
            self.register_tokens = torch.nn.Parameter(torch.zeros(1, 4, 16))
            self.block = torch.nn.Linear(16, 16)
            self.norm = torch.nn.LayerNorm(16)
        def forward_features(self, x):
            p = self.patch_embed(x).flatten(2).transpose(1, 2)
            b = len(x)
            t = torch.cat([self.cls_token.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), p], 1)
            t = t + self.block(t)
            n = self.norm(t)
            return {"x_norm_clstoken": n[:, 0], "x_norm_patchtokens": n[:, 5:], "x_prenorm": t}

    def dinov2_vitl14_reg(pretrained=True, **kwargs):
        model = TinyViT()
        if pretrained:  # as upstream: fetched through the hub cache (local file when present)
            model.load_state_dict(torch.hub.load_state_dict_from_url(URL, map_location="cpu"))
        return model
''')


def _tiny_hub_layout(root: Path) -> tuple[Path, torch.nn.Module]:
    """``root/hub/facebookresearch_dinov2_main/hubconf.py`` + ``root/hub/checkpoints/<ckpt>``; returns (repo, source model)."""
    import importlib.util

    repo = root / "hub" / "facebookresearch_dinov2_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    spec = importlib.util.spec_from_file_location("tiny_hubconf", repo / "hubconf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(1)
    src = mod.TinyViT()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.2)
    (root / "hub" / "checkpoints").mkdir()
    torch.save(src.state_dict(), root / "hub" / "checkpoints" / HUB_CHECKPOINT)
    return repo, src.eval()


def test_torch_hub_cache_layout_loads_offline(tmp_path, monkeypatch):
    """The hubconf's own download call finds the checkpoint beside the repo, wherever TORCH_HOME points."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "elsewhere"))  # not where the weights are
    before = torch.hub.get_dir()
    repo, src = _tiny_hub_layout(tmp_path / "torch_home")
    img = torch.rand(2, 3, 518, 518)
    with torch.no_grad():
        expected = F.layer_norm(src.forward_features((img - MEAN) / STD)["x_prenorm"], (16,))
    for path in (repo, repo.parent, repo.parent.parent):  # repo, <hub>, $TORCH_HOME forms
        cond = DinoConditioner.from_pretrained(path)
        assert cond.kind == "hub" and cond.out_channels == 16
        feats = cond.encode(img)
        assert feats.shape == (2, 1 + 4 + 37 * 37, 16)
        torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    assert torch.hub.get_dir() == before  # the global hub dir is restored
    assert not (tmp_path / "elsewhere").exists()  # nothing was downloaded or cached elsewhere


def test_hub_layout_errors_name_the_missing_file(tmp_path):
    repo, _ = _tiny_hub_layout(tmp_path / "th")
    (repo.parent / "checkpoints" / HUB_CHECKPOINT).unlink()
    with pytest.raises(FileNotFoundError, match=HUB_CHECKPOINT):
        DinoConditioner.from_pretrained(repo)
    with pytest.raises(FileNotFoundError, match="not a DINOv2 folder"):
        DinoConditioner.from_pretrained(tmp_path / "nothing_here")


def _red_box_image(h, w, y0, y1, x0, x1):
    rgb = np.full((h, w, 3), 200, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    rgb[mask] = (255, 0, 0)
    return rgb, mask


def _red_extent(out):
    ys, xs = np.nonzero(out[0] > 0.5)
    return xs.min(), xs.max(), ys.min(), ys.max()


def test_instance_crop_is_centred_enlarged_and_black_outside():
    rgb, mask = _red_box_image(200, 300, 40, 100, 150, 270)  # 120 wide, 60 tall, centre (210, 70)
    assert crop_box(mask) == pytest.approx((210.0, 70.0, 144.0))
    out = crop_instance(rgb, mask, size=240).numpy()
    assert out.shape == (3, 240, 240) and out.dtype == np.float32
    x0, x1, y0, y1 = _red_extent(out)
    # the longer side (width) spans 1 / 1.2 of the crop; the shorter keeps the aspect ratio; both centred
    assert abs((x1 - x0 + 1) - 240 / 1.2) <= 3 and abs((x0 + x1) / 2 - 119.5) <= 2
    assert abs((y1 - y0 + 1) - 60 * 240 / 144) <= 3 and abs((y0 + y1) / 2 - 119.5) <= 2
    # grey background pixels outside the mask are black (alpha 0), inside is pure red
    assert out[:, 5, 5].max() < 0.02 and out[:, 119, 119] == pytest.approx([1.0, 0.0, 0.0], abs=0.02)
    assert out.min() >= -0.05 and out.max() <= 1.05  # Lanczos overshoot stays small


def test_instance_crop_at_the_image_border_pads_black():
    rgb, mask = _red_box_image(100, 100, 0, 50, 0, 20)  # touches the top-left corner
    out = crop_instance(rgb, mask, size=120).numpy()
    x0, x1, y0, y1 = _red_extent(out)
    assert abs((y1 - y0 + 1) - 120 / 1.2) <= 3 and abs((y0 + y1) / 2 - 59.5) <= 2  # centre kept, not shifted inward
    assert abs((x1 - x0 + 1) - 20 * 120 / 60) <= 3 and abs((x0 + x1) / 2 - 59.5) <= 2
    assert out[:, :5].max() < 0.02  # the part of the box above the image is black


def test_crop_errors():
    rgb, mask = _red_box_image(50, 60, 10, 20, 10, 20)
    with pytest.raises(ValueError, match="empty mask"):
        crop_instance(rgb, np.zeros_like(mask))
    with pytest.raises(ValueError, match="differ in size"):
        crop_instance(rgb, mask[:40])


def test_scene_crop_pads_to_square_and_keeps_the_view():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:, :100] = (0, 255, 0)  # left half green, right half black
    s = crop_scene(rgb, size=100).numpy()
    assert s.shape == (3, 100, 100)
    assert s[:, 10, 50].max() < 0.02 and s[:, 90, 50].max() < 0.02  # black bands above and below (rows 0-24, 75-99)
    assert s[1, 50, 25] == pytest.approx(1.0, abs=0.02) and s[1, 50, 75] < 0.02  # image in rows 25-74, unflipped
    assert s[1, 26:74, 10].min() > 0.95 and s[1, 30:70, 5:45].mean() == pytest.approx(1.0, abs=0.01)


def test_hub_layout_says_it_runs_hubconf_and_transformers_is_preferred(tmp_path, caplog):
    """Loading from a torch.hub repo executes its hubconf.py: a warning says so each time. A folder
    holding both layouts is read as the transformers one (no code from the folder runs)."""
    repo, _ = _tiny_hub_layout(tmp_path / "th")
    with caplog.at_level("WARNING", logger="iscene.conditioning"):
        DinoConditioner.from_pretrained(repo)
    assert "hubconf.py" in caplog.text and str(repo) in caplog.text
    both = tmp_path / "both"
    _tiny_transformers_folder(both, channels=32, image_size=56)
    (both / "hubconf.py").write_text("raise SystemExit('hubconf must not run')\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="iscene.conditioning"):
        cond = DinoConditioner.from_pretrained(both)
    assert cond.kind == "transformers" and "hubconf" not in caplog.text


def test_features_ignore_a_surrounding_autocast():
    """Training runs the flow under bf16 autocast; DINOv2 features must stay the fp32 ones inference uses."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    patch_size=14, image_size=56, num_register_tokens=4)
    cond = DinoConditioner(Dinov2WithRegistersModel(cfg), "transformers")
    img = torch.rand(2, 3, 56, 56)
    ref = cond.encode(img)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cond.encode(img)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


def test_tiny_dinov2_tells_where_an_instance_is_in_a_masked_frame(tmp_path):
    """The nano runs' frozen random DINOv2 must carry each patch's place: with masked-frame views that
    is what says where the instance sits. At the random init the black patches all came out as one
    token (cosine 0.999) and the same object moved across the frame gave the same set of tokens."""
    from transformers import Dinov2WithRegistersModel

    from train.models import tiny_dinov2

    dino = tiny_dinov2(32, 112, 0).eval()
    black = torch.zeros(1, 3, 112, 112)
    left, right = black.clone(), black.clone()
    left[:, :, 28:56, 14:42] = torch.tensor([0.8, 0.3, 0.2]).view(1, 3, 1, 1)
    right[:, :, 28:56, 70:98] = torch.tensor([0.8, 0.3, 0.2]).view(1, 3, 1, 1)
    with torch.no_grad():
        tok_black, tok_left, tok_right = (dino(x)[0, -64:] for x in (black, left, right))
    cos = F.normalize(tok_black, dim=1) @ F.normalize(tok_black, dim=1).T
    assert cos.min() < 0.8, "black patches at different places must give different tokens"
    # the object's tokens differ with its place: no left token is (nearly) a right token
    moved = torch.cdist(tok_left[(tok_left - tok_black).norm(dim=1) > 1], tok_right[(tok_right - tok_black).norm(dim=1) > 1])
    assert moved.min() > 1.0
    # the eval side rebuilds it from a saved folder (iscene-sweep's export): the same features
    dino.backbone.save_pretrained(str(tmp_path))
    again = DinoConditioner(Dinov2WithRegistersModel.from_pretrained(str(tmp_path)), "transformers").eval()
    with torch.no_grad():
        assert torch.allclose(again(left), dino(left), atol=1e-6)
