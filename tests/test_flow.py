"""Rectified-flow pieces: t sampling, the loss, the time grid and the (joint) Euler sampler."""

from __future__ import annotations

import torch

from iscene_core.flow import euler_sample, flow_matching_loss, sample_t, time_grid
from iscene_core.trellis import SparseStructureFlowModel


class _Oracle(torch.nn.Module):
    """Exact velocity of the straight path to a known x0 (sigma_min = 0): v = (x_t - x0) / t."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0
        self.calls: list[int] = []
        self.conds: list[torch.Tensor] = []

    def forward(self, x, t, cond, scene_index=None):
        self.calls.append(x.shape[0])
        self.conds.append(cond)
        tt = (t / 1000).view(-1, 1, 1, 1, 1)
        return (x - self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1, 1, 1)) / tt


def test_sample_t_is_logit_normal_mean1_std1():
    t = sample_t(200_000, generator=torch.Generator().manual_seed(0))
    assert bool(((t > 0) & (t < 1)).all())
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 1.0) < 0.02 and abs(logit.std().item() - 1.0) < 0.02
    again = sample_t(200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_time_grid_released_settings():
    grid = time_grid(25, 3.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and bool((grid[1:] < grid[:-1]).all())
    assert abs(time_grid(4, 1.0)[1] - 0.75) < 1e-12  # r = 1: plain linspace
    guided = sum(0.5 <= t <= 1.0 for t in grid[:-1])
    assert guided == 19  # TRELLIS_FACTS: 19 of 25 steps guided


def test_euler_is_exact_on_straight_paths_and_counts_passes():
    x0 = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    oracle = _Oracle(x0)
    cond = torch.randn(2, 3, 5)
    out = euler_sample(oracle, noise, cond, None, steps=25, cfg_strength=5.0, rescale_t=3.0, sigma_min=0.0)
    # guidance of an oracle whose cond/uncond answers agree is a no-op, so Euler lands exactly on x0
    assert torch.allclose(out["samples"], x0, atol=1e-5)
    assert len(out["pred_x0"]) == 25 and torch.allclose(out["pred_x0"][0], x0, atol=1e-5)
    # 19 guided steps run as one doubled batch: 25 calls, 19 of them with 2B rows (44 forward passes)
    assert len(oracle.calls) == 25 and oracle.calls.count(4) == 19
    assert torch.equal(oracle.conds[0][2:], torch.zeros_like(cond))  # default negative condition = zeros


def test_loss_is_zero_for_the_exact_velocity_and_drops_condition():
    x0 = torch.randn(3, 8, 4, 4, 4)
    noise = torch.randn(3, 8, 4, 4, 4)
    t = torch.tensor([0.2, 0.5, 0.9])
    sigma_min = 1e-5

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cond = None

        def forward(self, x, tt, cond, scene_index=None):
            self.cond = cond
            return (1 - sigma_min) * noise - x0

    model = Exact()
    cond = torch.ones(3, 2, 4)
    loss, per_row = flow_matching_loss(model, x0, cond, t=t, noise=noise, p_uncond=1.0, sigma_min=sigma_min)
    assert loss.item() < 1e-12 and per_row.shape == (3,)
    assert torch.equal(model.cond, torch.zeros_like(cond))  # p_uncond = 1: every condition dropped
    flow_matching_loss(model, x0, cond, t=t, noise=noise, p_uncond=0.0)
    assert torch.equal(model.cond, cond)
    wrong, _ = flow_matching_loss(lambda *a, **k: torch.zeros_like(x0), x0, cond, t=t, noise=noise, p_uncond=0.0)
    assert abs(wrong.item() - ((noise * (1 - sigma_min) - x0) ** 2).mean().item()) < 1e-6


def _small_model() -> SparseStructureFlowModel:
    torch.manual_seed(0)
    m = SparseStructureFlowModel(resolution=4, in_channels=4, model_channels=32, cond_channels=16,
                                 out_channels=4, num_blocks=2, num_heads=2, patch_size=1, qk_rms_norm=True)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def test_joint_sampling_with_guidance_equals_separate_branches_and_groups():
    """Doubled-batch CFG with offset scene_index == cond and uncond run as separate calls; two
    scene groups in one batch == each group sampled alone."""
    model = _small_model()
    g = torch.Generator().manual_seed(3)
    noise, cond = torch.randn(5, 4, 4, 4, 4, generator=g), torch.randn(5, 6, 16, generator=g)
    si = torch.tensor([0, 0, 0, 3, 3])
    kw = dict(steps=6, cfg_strength=3.0, cfg_interval=(0.5, 1.0), rescale_t=3.0)
    joint = euler_sample(model, noise, cond, None, scene_index=si, **kw)["samples"]

    x = noise
    for t, t_prev in zip(time_grid(6, 3.0)[:-1], time_grid(6, 3.0)[1:]):
        tt = torch.full((5,), 1000.0 * t)
        with torch.no_grad():
            v = model(x, tt, cond, scene_index=si)
            if 0.5 <= t <= 1.0:
                v = 4.0 * v - 3.0 * model(x, tt, torch.zeros_like(cond), scene_index=si)
        x = x - (t - t_prev) * v
    assert torch.allclose(joint, x, atol=1e-5)

    second = euler_sample(model, noise[3:], cond[3:], None, scene_index=torch.tensor([0, 0]), **kw)["samples"]
    assert torch.allclose(joint[3:], second, atol=1e-5)


def test_condition_dropout_drops_whole_scene_groups():
    """The guided sampler's unconditional pass drops the scene and all its instances together; training
    must visit that joint state with probability p_uncond per group (per-row dropout visits it ~p^7)."""
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, t, cond, scene_index=None):
            seen["dropped"] = (cond == 0).flatten(1).all(dim=1)
            return torch.zeros_like(x)

    groups, size, p = 400, 7, 0.3  # a scene + 6 instances, as in I-Scene's training groups
    si = torch.arange(groups).repeat_interleave(size) * size
    x0 = torch.zeros(groups * size, 1, 2, 2, 2)
    cond = torch.ones(groups * size, 3, 4)
    flow_matching_loss(Recorder(), x0, cond, scene_index=si, p_uncond=p, generator=torch.Generator().manual_seed(0))
    per_group = seen["dropped"].view(groups, size)
    partial = (per_group.any(1) & ~per_group.all(1)).sum().item()
    joint = per_group.all(1).float().mean().item()
    assert partial == 0  # never a scene without its instances, or the reverse
    assert abs(joint - p) < 4 * (p * (1 - p) / groups) ** 0.5, joint
    # without scene groups every row is its own group
    flow_matching_loss(Recorder(), x0, cond, p_uncond=p, generator=torch.Generator().manual_seed(0))
    assert 0 < seen["dropped"].float().mean().item() < 1 and per_group.numel() == seen["dropped"].numel()
