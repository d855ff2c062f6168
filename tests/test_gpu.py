"""GPU checks (skipped without CUDA): the released L configuration with SCA in bf16."""

from __future__ import annotations

import json

import pytest
import torch

from iscene_core.flow import flow_matching_loss
from iscene_core.trellis import build_model

pytestmark = pytest.mark.gpu


def test_L_config_sca_bf16_train_step(trellis_reference):
    spec = json.loads((trellis_reference / "released_state_dicts.json").read_text())["ss_flow_img_dit_L_16l8"]
    model = build_model(spec["class"], spec["args"], use_checkpoint=True).cuda().train()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    rows = 7  # a scene and 6 instances
    x0 = torch.randn(rows, 8, 16, 16, 16, device="cuda")
    cond = torch.randn(rows, 1374, 1024, device="cuda")
    si = torch.zeros(rows, dtype=torch.long, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, per_row = flow_matching_loss(model, x0, cond, scene_index=si, p_uncond=0.0)
    loss.backward()
    assert torch.isfinite(loss) and per_row.shape == (rows,)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
