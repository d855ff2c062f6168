"""Real data, no trainer: can the tiny flow learn to place the instances of a few training scenes?

    python studies/ablation-nano/followup/fit_instances.py DATASET LR STEPS [random-conds] [rows=N] [width=C] [blocks=B]

Every (masked-frame image, cached latent) pair of DATASET's instances (all of them, no cap) is
encoded once with the nano runs' frozen tiny DINOv2; the tiny flow is trained on those instance
rows alone (no scene rows, no SCA), 4 rows a step, with the flow-matching loss. Every 250 steps it
prints the loss, the image gain at t = 0.9 (``1 - loss with image / loss without``), and, for every
pair, the sampled instance (12 Euler steps, no guidance, the study's sampler) decoded and compared
with the true voxels: the median voxel-box centre error and the mean voxel-box IoU (see placement.py).
A flow that learns placement drives the centre error far below the ~22 voxels of the mean box.
"random-conds" replaces each instance's image tokens by its own random tokens (as distinct as
conditions get), to tell a weak image signal from a flow that cannot fit the latents. "rows=N" keeps
the first N instances only (rows=1: can the flow and sampler reproduce one fixed latent at all?).
"width=C" / "blocks=B" widen or deepen the tiny flow (64 channels, 2 blocks) to test capacity.
The dataset needs a latent cache for the study's VAE, e.g. the first 2 training scenes:
``materialize_prefix('studies/ablation-nano/data/nano@2', OUT)`` (train/study_data.py), then
``iscene-train cache-latents --mix OUT --space view --encoder studies/ablation-nano/vae/ckpts/ss_enc_conv3d_16l8_fp16``.
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from placement import voxel_box  # noqa: E402
from iscene_core.evaluation.boxes import box_iou  # noqa: E402
from iscene_core.flow import euler_sample, flow_matching_loss, noisy_sample, velocity_target  # noqa: E402
from iscene_core.trellis import build_flow, load_model  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import DataConfig, build_loader  # noqa: E402
from train.models import build_encoder, tiny_dinov2  # noqa: E402
from train.trainer import choose_latents  # noqa: E402

torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
dataset, lr, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
VAE = "studies/ablation-nano/vae/ckpts/ss_{}_conv3d_16l8_fp16"
cfg = TrainConfig(mix=dataset, encoder=VAE.format("enc"), max_instances=64, image_size=112, instance_view="masked-frame",
                  batch_size=1, num_workers=0)
_, eid = choose_latents(cfg, build_encoder(cfg))
loader = iter(build_loader(dataset, DataConfig.from_train(cfg, latents="cache", encoder_id=eid)))
seen, images, latents = set(), [], []
while True:  # one pass over the dataset (the stream repeats: stop at the first key seen twice)
    b = next(loader)
    if b["key"][0] in seen:
        break
    seen.add(b["key"][0])
    v = b["inst_valid"][0]
    images.append(b["inst_images"][0][v])
    latents.append(b["inst_lat"][0][v])
images, latents = torch.cat(images), torch.cat(latents)
for arg in sys.argv[4:]:
    if arg.startswith("rows="):
        images, latents = images[:int(arg[5:])], latents[:int(arg[5:])]
dino = tiny_dinov2(32, 112, 0).eval()
with torch.no_grad():
    conds = torch.cat([dino(images[i:i + 8]) for i in range(0, len(images), 8)])
if "random-conds" in sys.argv[4:]:
    conds = torch.randn(conds.shape, generator=torch.Generator().manual_seed(3))
decoder = load_model(VAE.format("dec"), use_fp16=False).eval()
with torch.no_grad():
    truth = [np.argwhere((decoder(latents[i:i + 1])[0, 0] > 0).numpy()) for i in range(len(latents))]
K = len(latents)
print(f"{len(seen)} scenes, {K} instances; lr {lr}", flush=True)
torch.manual_seed(0)
opts = dict(a.split("=") for a in sys.argv[4:] if "=" in a)
flow = build_flow("tiny", **{k: int(opts[o]) for o, k in (("width", "model_channels"), ("blocks", "num_blocks")) if o in opts})
print(f"flow: {sum(p.numel() for p in flow.parameters())} weights", flush=True)
opt = torch.optim.AdamW(flow.parameters(), lr=lr)
gen = torch.Generator().manual_seed(1)


def report(step, loss):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        x0 = latents
        eps = torch.randn(x0.shape, generator=g)
        tt = torch.full((K,), 0.9)
        xt, tgt = noisy_sample(x0, eps, tt), velocity_target(x0, eps)
        lc = ((flow(xt, tt * 1000, conds) - tgt) ** 2).mean()
        lu = ((flow(xt, tt * 1000, torch.zeros_like(conds)) - tgt) ** 2).mean()
        z = euler_sample(flow, torch.randn(x0.shape, generator=g), conds, None, steps=12, cfg_strength=0.0)["samples"]
        occ = decoder(z)[:, 0] > 0
    errs, ious = [], []
    for i in range(K):
        p = np.argwhere(occ[i].numpy())
        if len(p) == 0 or len(truth[i]) == 0:
            ious.append(0.0)
            continue
        a, b = voxel_box(p), voxel_box(truth[i])
        errs.append(np.linalg.norm((a[0] + a[1]) / 2 - (b[0] + b[1]) / 2))
        ious.append(box_iou(a, b))
    print(f"step {step} loss {loss:.3f} gain(t=0.9) {1 - float(lc / lu):.3f} sampled: centre error median "
          f"{np.median(errs) if errs else float('nan'):.1f} vox, voxel-box IoU mean {np.mean(ious):.3f}, empty {K - len(errs)} "
          f"({time.time() - t0:.0f}s)", flush=True)


t0 = time.time()
for step in range(steps + 1):
    if step % 250 == 0:
        report(step, loss.item() if step else float("nan"))
    if step == steps:
        break
    idx = torch.randint(0, K, (4,), generator=gen)
    loss, _ = flow_matching_loss(flow, latents[idx], conds[idx], p_uncond=0.1, generator=gen)
    opt.zero_grad()
    loss.backward()
    opt.step()
