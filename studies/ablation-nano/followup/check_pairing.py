"""Does the trainer pair each instance image with that instance's latent? (a data check, no model)

    python studies/ablation-nano/followup/check_pairing.py [DATASET] [--batches 10]

A model that cannot learn placement might be fed images and targets of different instances. This
reads the same batches twice through ``train.data``: once with the cached latents the study's cells
train on, once with the occupancy grids encoded on the fly, and prints (1) the largest difference
between cached and freshly encoded latents, (2) the correlation, over instances, between where the
instance is in its masked-frame image (pixel centroid) and where its voxels are in the view grid:
image x against grid x, image y against grid y (the view grid's y points up, so that one is negative).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from train.config import TrainConfig
from train.data import DataConfig, build_loader
from train.models import build_encoder, encode_latents
from train.trainer import choose_latents

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("dataset", nargs="?", default="studies/ablation-nano/data/nano@20")
ap.add_argument("--encoder", default="studies/ablation-nano/vae/ckpts/ss_enc_conv3d_16l8_fp16")
ap.add_argument("--batches", type=int, default=10)
a = ap.parse_args()
torch.set_num_threads(1)
cfg = TrainConfig(mix=a.dataset, encoder=a.encoder, max_instances=4, image_size=112, instance_view="masked-frame",
                  batch_size=2, num_workers=0)
enc = build_encoder(cfg)
mode, eid = choose_latents(cfg, enc)
assert mode == "cache", "no latent cache for this dataset and encoder"
cached = iter(build_loader(a.dataset, DataConfig.from_train(cfg, latents="cache", encoder_id=eid)))
grids = iter(build_loader(a.dataset, DataConfig.from_train(cfg, latents="encode", encoder_id=None)))
worst, img_xy, grid_xy = 0.0, [], []
for _ in range(a.batches):
    c, g = next(cached), next(grids)
    assert c["key"] == g["key"] and torch.equal(c["inst_images"], g["inst_images"])
    v = g["inst_valid"]
    worst = max(worst, (c["inst_lat"][v] - encode_latents(enc, g["inst_occ"][v])).abs().max().item(),
                (c["scene_lat"] - encode_latents(enc, g["scene_occ"])).abs().max().item())
    for img, occ in zip(g["inst_images"][v], g["inst_occ"][v][:, 0]):
        ys, xs = np.nonzero((img.abs().sum(0) > 1e-3).numpy())
        img_xy.append((xs.mean() / img.shape[-1], ys.mean() / img.shape[-2]))
        grid_xy.append(np.argwhere(occ.numpy()).mean(0)[:2] / occ.shape[0])
i, q = np.array(img_xy), np.array(grid_xy)
print(f"{len(i)} instances in {a.batches} batches: cached vs encoded latents differ by at most {worst:.2e}; "
      f"corr(image x, grid x) {np.corrcoef(i[:, 0], q[:, 0])[0, 1]:.3f}, corr(image y, grid y) {np.corrcoef(i[:, 1], q[:, 1])[0, 1]:.3f}")
