"""A small exact triangle rasteriser (pixel-centre rule) for silhouettes and depth, in numpy.

Used for the amodal coverage of each instance (its pixels when rendered alone) that
``visible_fraction`` needs, and by tests and the verifier as an independent view of the geometry.
Candidates are the pixels of each triangle's bounding box, tested with edge functions at pixel
centres (u + 0.5, v + 0.5), so the work is proportional to the covered area.
"""

from __future__ import annotations

import numpy as np

from iscene_core import space

_CHUNK = 1 << 21


def rasterize(K: np.ndarray, world_to_cam: np.ndarray, vertices_world: np.ndarray, faces: np.ndarray,
              width: int, height: int, with_depth: bool = False):
    """Coverage mask (H, W) bool of a mesh, and optionally its nearest depth (H, W) (inf elsewhere).

    Triangles with a vertex behind the near plane (z <= 1e-4) are skipped: scene cameras frame
    every instance, so this never happens in generated data.
    """
    uv, z = space.project_points(K, world_to_cam, vertices_world)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    f = f[np.all(z[f] > 1e-4, axis=1)]
    mask = np.zeros(height * width, dtype=bool)
    depth = np.full(height * width, np.inf) if with_depth else None
    if len(f) == 0:
        return (mask.reshape(height, width), depth.reshape(height, width)) if with_depth else mask.reshape(height, width)
    p = uv[f]  # (T, 3, 2)
    zt = z[f]
    lo = np.clip(np.ceil(p.min(axis=1) - 0.5).astype(np.int64), 0, [width, height])
    hi = np.clip(np.floor(p.max(axis=1) - 0.5).astype(np.int64), -1, [width - 1, height - 1])
    span = np.maximum(hi - lo + 1, 0)
    counts = span[:, 0] * span[:, 1]
    keep = np.nonzero(counts)[0]
    cum = np.cumsum(counts[keep])
    if len(cum) == 0:
        return (mask.reshape(height, width), depth.reshape(height, width)) if with_depth else mask.reshape(height, width)
    starts = list(np.searchsorted(cum, np.arange(0, cum[-1], _CHUNK), side="right")) + [len(keep)]
    for a, b in zip(starts[:-1], starts[1:]):
        if a >= b:
            continue
        idx = keep[a:b]
        c = counts[idx]
        t = np.repeat(np.arange(len(idx)), c)
        off = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        sx = span[idx, 0][t]
        px = lo[idx, 0][t] + off % sx + 0.5
        py = lo[idx, 1][t] + off // sx + 0.5
        q = p[idx][t]
        (x0, y0), (x1, y1), (x2, y2) = q[:, 0].T, q[:, 1].T, q[:, 2].T
        w0 = (x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)
        w1 = (x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)
        w2 = (x0 - px) * (y1 - py) - (y0 - py) * (x1 - px)
        inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))
        area = w0 + w1 + w2
        inside &= np.abs(area) > 1e-12
        lin = (py[inside] - 0.5).astype(np.int64) * width + (px[inside] - 0.5).astype(np.int64)
        mask[lin] = True
        if with_depth:
            zz = zt[idx][t][inside]
            ww = np.stack([w0, w1, w2], 1)[inside] / area[inside, None]
            # perspective-correct depth: interpolate 1/z with screen-space barycentrics
            d = 1.0 / np.sum(ww / zz, axis=1)
            np.minimum.at(depth, lin, d)
    if with_depth:
        return mask.reshape(height, width), depth.reshape(height, width)
    return mask.reshape(height, width)
