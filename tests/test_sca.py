"""Scene Context Attention: the properties the paper's mechanism rests on."""

from __future__ import annotations

import pytest
import torch

from iscene_core.flow import flow_matching_loss
from iscene_core.trellis import SparseStructureFlowModel, load_model


def _randomised_small_model(seed: int = 0) -> SparseStructureFlowModel:
    torch.manual_seed(seed)
    model = SparseStructureFlowModel(resolution=8, in_channels=4, model_channels=64, cond_channels=32,
                                     out_channels=4, num_blocks=2, num_heads=4, patch_size=1, qk_rms_norm=True)
    with torch.no_grad():  # upstream init zeroes adaLN/out: randomise every tensor so nothing is trivially 0
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _inputs(b: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, 8, 8, 8, generator=g), torch.rand(b, generator=g) * 1000,
            torch.randn(b, 5, 32, generator=g))


def test_sca_off_equals_reference(trellis_reference):
    from safetensors.torch import load_file

    io = load_file(str(trellis_reference / "ss_flow_small" / "io.safetensors"))
    model = load_model(trellis_reference / "ss_flow_small" / "model").eval()
    model.sca_enabled = False
    x, t, cond = io["input.x"], io["input.t"], io["input.cond"]
    with torch.no_grad():
        v = model(x, t, cond, scene_index=torch.tensor([0, 0]))  # would be SCA; switched off -> plain
    assert (v - io["output.v"]).abs().max() < 1e-4


def test_instance_equal_to_scene_gives_plain_self_attention():
    model = _randomised_small_model()
    x, t, cond = _inputs(1)
    with torch.no_grad():
        plain = model(x, t, cond)
        # row 0 = scene, row 1 = an instance identical to it (same input, time and condition)
        joint = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), scene_index=torch.tensor([0, 0]))
    assert torch.allclose(joint[0], plain[0], atol=1e-5)
    assert torch.allclose(joint[1], plain[0], atol=1e-5)


def test_instances_see_their_own_scene_only_and_batching_is_exact():
    model = _randomised_small_model()
    x, t, cond = _inputs(5)
    # rows: scene A (0), its instances 1, 2; scene B (3), its instance 4
    si = torch.tensor([0, 0, 0, 3, 3])
    with torch.no_grad():
        joint = model(x, t, cond, scene_index=si)
        alone = model(x[[3, 4]], t[[3, 4]], cond[[3, 4]], scene_index=torch.tensor([0, 0]))
        scene_only = model(x[[0]], t[[0]], cond[[0]])
    assert torch.allclose(joint[[3, 4]], alone, atol=1e-5)
    assert torch.allclose(joint[0], scene_only[0], atol=1e-5)  # scenes are not changed by instances
    # an instance's output depends on its scene: change scene A, instance 1 changes, instance 4 does not
    x2 = x.clone()
    x2[0] += 1.0
    with torch.no_grad():
        joint2 = model(x2, t, cond, scene_index=si)
    assert (joint2[1] - joint[1]).abs().max() > 1e-3
    assert torch.allclose(joint2[4], joint[4], atol=1e-6)
    # and SCA is a real change from per-instance self-attention
    with torch.no_grad():
        no_ctx = model(x[[1]], t[[1]], cond[[1]])
    assert (no_ctx[0] - joint[1]).abs().max() > 1e-3


def test_gradients_flow_into_scene_branch_through_sca():
    model = _randomised_small_model().train()
    x, t, cond = _inputs(3)
    x.requires_grad_(True)
    out = model(x, t, cond, scene_index=torch.tensor([0, 0, 0]))
    out[1:].square().mean().backward()  # a loss on instance rows only
    assert x.grad[0].abs().sum() > 0  # reaches the scene's input through K_s, V_s
    model.zero_grad()
    x.grad = None
    model.sca_enabled = False
    model(x, t, cond, scene_index=torch.tensor([0, 0, 0]))[1:].square().mean().backward()
    assert x.grad[0].abs().sum() == 0  # without SCA the scene is independent of instance losses


def test_invalid_scene_index_is_refused():
    model = _randomised_small_model()
    x, t, cond = _inputs(3)
    with pytest.raises(ValueError, match="scene rows"):
        model(x, t, cond, scene_index=torch.tensor([1, 2, 2]))  # row 0 points at an instance row


def test_flow_matching_loss_uses_one_t_per_scene_group():
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, t, cond, scene_index=None):
            seen["t"] = t
            return torch.zeros_like(x)

    x0, _, cond = _inputs(5, seed=3)
    si = torch.tensor([0, 0, 0, 3, 3])
    loss, per_row = flow_matching_loss(Recorder(), x0, cond, scene_index=si, generator=torch.Generator().manual_seed(0))
    t = seen["t"]
    assert torch.all(t[:3] == t[0]) and torch.all(t[3:] == t[3]) and t[0] != t[3]
    assert 0 < t.min() and t.max() < 1000
    # with a zero prediction the loss is the target's energy: E|eps - x0|^2 = 2 for unit Gaussians
    assert 1.5 < loss.item() < 2.5 and per_row.shape == (5,)


def test_flow_matching_loss_trains_the_model():
    torch.manual_seed(0)
    model = SparseStructureFlowModel(resolution=8, in_channels=4, model_channels=64, cond_channels=32,
                                     out_channels=4, num_blocks=2, num_heads=4, patch_size=1, qk_rms_norm=True)
    x0, _, cond = _inputs(4, seed=3)
    si = torch.tensor([0, 0, 2, 2])
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, generator=g)[torch.tensor([0, 0, 1, 1])]
    noise = torch.randn(x0.shape, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = flow_matching_loss(model, x0, cond, scene_index=si, t=t, noise=noise, p_uncond=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]  # a fixed (t, noise) batch: measured 2.02 -> 1.27 in 40 steps
