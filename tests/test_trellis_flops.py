"""The benchmark's analytic FLOP count (used for MFU on a GPU) agrees with torch's own counter."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.bench_model import forward_flops
from iscene_core.trellis import SparseStructureFlowModel


def test_analytic_forward_flops_match_torch_counter():
    args = dict(resolution=4, in_channels=8, out_channels=8, model_channels=64, cond_channels=32, num_blocks=2,
                num_heads=4, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True)
    model = SparseStructureFlowModel(**args).eval()
    rows, cond_tokens = 4, 7
    x, t, cond = torch.randn(rows, 8, 4, 4, 4), torch.rand(rows) * 1000, torch.randn(rows, cond_tokens, 32)
    for si, sca_rows in ((None, 0), (torch.tensor([0, 0, 0, 0]), 3)):
        # the math backend decomposes attention into counted matmuls (the CPU fused kernel is not counted)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, t, cond, scene_index=si)
        counted = counter.get_total_flops()
        analytic = forward_flops(args, cond_tokens, rows, sca_rows)
        assert abs(analytic - counted) / counted < 0.01, (si, analytic, counted)
