"""Synthetic: 8 masked-frame-like images (a coloured ellipse on black, random place and size) ->
8 fixed structured latents. Does the condition still reach the tiny flow through each conditioner?

    python cond_images.py {dinov2-random|learned} LR STEPS
"""
import sys, time, torch
sys.path.insert(0, '/work/main')
torch.set_num_threads(1)
from iscene_core.trellis import build_flow
from iscene_core.flow import flow_matching_loss, noisy_sample, velocity_target
from train.models import tiny_dinov2
from iscene_core.conditioning import LearnedConditioner
kind, lr, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
flow = build_flow("tiny")
K, S = 8, 112
g0 = torch.Generator().manual_seed(3)
yy, xx = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")
images = torch.zeros(K, 3, S, S)
for k in range(K):
    cx, cy = torch.rand(2, generator=g0) * 70 + 21
    rx, ry = torch.rand(2, generator=g0) * 25 + 8
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    images[k, :, inside] = torch.rand(3, 1, generator=g0) * 0.8 + 0.2
coarse = torch.randn(K, 8, 4, 4, 4)
latents = torch.nn.functional.interpolate(coarse, size=(16, 16, 16), mode="trilinear", align_corners=True)
latents = latents / latents.std() * 0.8
cond_model = tiny_dinov2(32, S, 0).eval().requires_grad_(False) if kind == "dinov2-random" else LearnedConditioner(32, S)
params = list(flow.parameters()) + (list(cond_model.parameters()) if kind == "learned" else [])
opt = torch.optim.AdamW(params, lr=lr)
gen = torch.Generator().manual_seed(1)
def gain():
    g = torch.Generator().manual_seed(7); res = []
    with torch.no_grad():
        c = cond_model(images)
        for t in (0.3, 0.5, 0.7, 0.9):
            eps = torch.randn(latents.shape, generator=g); tt = torch.full((K,), t)
            xt = noisy_sample(latents, eps, tt, 1e-5); tgt = velocity_target(latents, eps, 1e-5)
            lc = ((flow(xt, tt * 1000, c) - tgt) ** 2).mean(); lu = ((flow(xt, tt * 1000, torch.zeros_like(c)) - tgt) ** 2).mean()
            res.append(1 - float(lc / lu))
    return sum(res) / len(res)
t0 = time.time()
for step in range(steps):
    idx = torch.randint(0, K, (4,), generator=gen)
    loss, _ = flow_matching_loss(flow, latents[idx], cond_model(images[idx]), p_uncond=0.1, generator=gen)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 250 == 0 or step == steps - 1:
        print(step, f"loss {loss.item():.4f} gain {gain():.3f} {time.time()-t0:.0f}s", flush=True)
