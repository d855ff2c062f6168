"""Synthetic: K condition patterns -> K fixed latents. Can the tiny flow learn to use its condition?

    python cond_sanity.py LR STEPS K [smooth]

"smooth": each latent is a trilinear upsampling of 8 x 4^3 random values (structured, like real
latents); otherwise 8 x 16^3 independent values (for K = 8 more than the 204k-weight tiny flow can
memorise)."""
import sys, time, torch
sys.path.insert(0, '/work/main')
torch.set_num_threads(1)
from iscene_core.trellis import build_flow
from iscene_core.flow import flow_matching_loss, noisy_sample, velocity_target
torch.manual_seed(0)
flow = build_flow("tiny")
K, L, C = int(sys.argv[3]) if len(sys.argv) > 3 else 8, 16, 32
conds = torch.randn(K, L, C)
SMOOTH = len(sys.argv) > 4 and sys.argv[4] == "smooth"
if SMOOTH:  # structured latents: 4^3 random values per channel, upsampled (512 free values per latent)
    coarse = torch.randn(K, 8, 4, 4, 4)
    latents = torch.nn.functional.interpolate(coarse, size=(16, 16, 16), mode="trilinear", align_corners=True)
    latents = latents / latents.std() * 0.8
else:  # 32k independent random values per latent (more than the tiny flow's 204k weights can store for K=8)
    latents = torch.randn(K, 8, 16, 16, 16) * 0.8
opt = torch.optim.AdamW(flow.parameters(), lr=float(sys.argv[1]) if len(sys.argv) > 1 else 1e-3)
gen = torch.Generator().manual_seed(1)
def gain():
    g = torch.Generator().manual_seed(7); res = []
    with torch.no_grad():
        for t in (0.3, 0.5, 0.7, 0.9):
            idx = torch.arange(K); x0 = latents[idx]; eps = torch.randn(x0.shape, generator=g)
            tt = torch.full((K,), t); xt = noisy_sample(x0, eps, tt, 1e-5); tgt = velocity_target(x0, eps, 1e-5)
            lc = ((flow(xt, tt * 1000, conds[idx]) - tgt) ** 2).mean(); lu = ((flow(xt, tt * 1000, torch.zeros_like(conds)) - tgt) ** 2).mean()
            res.append(1 - float(lc / lu))
    return sum(res) / len(res)
t0 = time.time()
for step in range(int(sys.argv[2]) if len(sys.argv) > 2 else 600):
    idx = torch.randint(0, K, (4,), generator=gen)
    loss, _ = flow_matching_loss(flow, latents[idx], conds[idx], p_uncond=0.1, generator=gen)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 250 == 0 or step == int(sys.argv[2]) - 1:
        print(step, f"loss {loss.item():.4f} gain {gain():.3f} {time.time()-t0:.0f}s", flush=True)
