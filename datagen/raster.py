"""A small exact triangle rasteriser (pixel-centre rule) for silhouettes and depth.

Used for the amodal coverage of each instance (its pixels when rendered alone) that
``visible_fraction`` needs, for camera choice's visibility check of a candidate view, and by tests
and the verifier as an independent view of the geometry. Candidates are the pixels of each
triangle's bounding box, tested with edge functions at pixel centres (u + 0.5, v + 0.5), so the
work is proportional to the covered area.

The loop over triangles is compiled with numba: real assets have 10^4-10^5 triangles that are
mostly smaller than a pixel, and the vectorised numpy form (``method="numpy"``, kept as the
reference the compiled path must equal bit for bit) spends its time gathering and expanding
per-triangle arrays rather than testing pixels (bench/bench_raster.py measures both).
"""

from __future__ import annotations

import numba
import numpy as np

from iscene_core import space

_CHUNK = 1 << 21
NEAR = 1e-4  # triangles with a vertex at or behind this camera depth are skipped


@numba.njit(cache=True, nogil=True)
def _zbuffer(uv, z, faces, owner, width, height, cover, depth, ids, with_depth):  # pragma: no cover - compiled
    """For every pixel centre inside a triangle of instance ``owner[t]``: marks ``cover[owner[t]]``
    and, with ``with_depth``, keeps the nearest depth and its instance (``ids``; ties go to the lower
    instance). The same floating-point operations, in the same order, as ``_rasterize_numpy``."""
    for t in range(faces.shape[0]):
        a, b, c = faces[t, 0], faces[t, 1], faces[t, 2]
        z0, z1, z2 = z[a], z[b], z[c]
        if not (z0 > NEAR and z1 > NEAR and z2 > NEAR):
            continue
        inst = owner[t]
        x0, y0, x1, y1, x2, y2 = uv[a, 0], uv[a, 1], uv[b, 0], uv[b, 1], uv[c, 0], uv[c, 1]
        lo_x = min(max(int(np.ceil(min(x0, x1, x2) - 0.5)), 0), width)
        lo_y = min(max(int(np.ceil(min(y0, y1, y2) - 0.5)), 0), height)
        hi_x = min(max(int(np.floor(max(x0, x1, x2) - 0.5)), -1), width - 1)
        hi_y = min(max(int(np.floor(max(y0, y1, y2) - 0.5)), -1), height - 1)
        for iy in range(lo_y, hi_y + 1):
            py = iy + 0.5
            for ix in range(lo_x, hi_x + 1):
                px = ix + 0.5
                w0 = (x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)
                w1 = (x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)
                w2 = (x0 - px) * (y1 - py) - (y0 - py) * (x1 - px)
                if not ((w0 >= 0 and w1 >= 0 and w2 >= 0) or (w0 <= 0 and w1 <= 0 and w2 <= 0)):
                    continue
                area = w0 + w1 + w2
                if not abs(area) > 1e-12:
                    continue
                k = iy * width + ix
                cover[inst, k] = True
                if with_depth:
                    # perspective-correct depth: interpolate 1/z with screen-space barycentrics
                    d = 1.0 / (((0.0 + (w0 / area) / z0) + (w1 / area) / z1) + (w2 / area) / z2)
                    if d < depth[k] or (d == depth[k] and inst < ids[k]):
                        depth[k] = d
                        ids[k] = inst


def rasterize(K: np.ndarray, world_to_cam: np.ndarray, vertices_world: np.ndarray, faces: np.ndarray,
              width: int, height: int, with_depth: bool = False, *, method: str = "numba"):
    """Coverage mask (H, W) bool of a mesh, and optionally its nearest depth (H, W) (inf elsewhere).

    Triangles with a vertex behind the near plane (z <= 1e-4) are skipped: scene cameras frame
    every instance, so this never happens in generated data. ``method="numpy"``: the vectorised
    reference (same result, several times slower).
    """
    if method not in ("numba", "numpy"):
        raise ValueError(f"rasterize: method must be 'numba' or 'numpy', got {method!r}")
    uv, z = space.project_points(K, world_to_cam, vertices_world)
    f = np.ascontiguousarray(np.asarray(faces, dtype=np.int64).reshape(-1, 3))
    if method == "numpy":
        return _rasterize_numpy(uv, z, f, width, height, with_depth)
    cover = np.zeros((1, height * width), dtype=bool)
    depth = np.full(height * width if with_depth else 1, np.inf)
    if len(f):
        _zbuffer(np.ascontiguousarray(uv), np.ascontiguousarray(z), f, np.zeros(len(f), dtype=np.int64), int(width),
                 int(height), cover, depth, np.zeros(len(depth), dtype=np.int64), bool(with_depth))
    mask = cover[0]
    if with_depth:
        return mask.reshape(height, width), depth.reshape(height, width)
    return mask.reshape(height, width)


def _rasterize_numpy(uv: np.ndarray, z: np.ndarray, f: np.ndarray, width: int, height: int, with_depth: bool):
    """The vectorised reference of ``_zbuffer``: every bounding-box pixel of every triangle
    expanded into flat arrays (in chunks of _CHUNK candidates)."""
    f = f[np.all(z[f] > NEAR, axis=1)]
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


@numba.njit(cache=True, nogil=True)
def _project(vertices, K, w2c):  # pragma: no cover - compiled
    """(uv, z) of world ``vertices`` through a pinhole camera (no skew)."""
    V = vertices.shape[0]
    uv = np.empty((V, 2))
    z = np.empty(V)
    for i in range(V):
        x = w2c[0, 0] * vertices[i, 0] + w2c[0, 1] * vertices[i, 1] + w2c[0, 2] * vertices[i, 2] + w2c[0, 3]
        y = w2c[1, 0] * vertices[i, 0] + w2c[1, 1] * vertices[i, 1] + w2c[1, 2] * vertices[i, 2] + w2c[1, 3]
        zz = w2c[2, 0] * vertices[i, 0] + w2c[2, 1] * vertices[i, 1] + w2c[2, 2] * vertices[i, 2] + w2c[2, 3]
        z[i] = zz
        uv[i, 0] = (K[0, 0] * x + K[0, 1] * y + K[0, 2] * zz) / zz
        uv[i, 1] = (K[1, 1] * y + K[1, 2] * zz) / zz
    return uv, z


class SceneRaster:
    """The triangles of all instances of one scene, z-buffered together for any number of cameras.

    Camera choice checks several candidate views per scene; concatenating the instances once and
    projecting inside the compiled loop makes a check cost one pass over the scene's triangles.
    """

    def __init__(self, vertices_world: list[np.ndarray], faces: list[np.ndarray]):
        if len(vertices_world) == 0 or len(vertices_world) != len(faces):
            raise ValueError("SceneRaster needs one (vertices, faces) pair per instance, and at least one")
        counts = [len(v) for v in vertices_world]
        offsets = np.cumsum([0] + counts[:-1])
        self.n = len(vertices_world)
        self.vertices = np.ascontiguousarray(np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in vertices_world]))
        self.faces = np.ascontiguousarray(np.concatenate(
            [np.asarray(f, dtype=np.int64).reshape(-1, 3) + o for f, o in zip(faces, offsets)]))
        self.owner = np.concatenate([np.full(len(np.asarray(f).reshape(-1, 3)), i, dtype=np.int64) for i, f in enumerate(faces)])

    def visibility(self, K: np.ndarray, world_to_cam: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(visible pixels, amodal pixels) per instance at ``width`` x ``height``: visible = pixels
        where it is the nearest surface, amodal = pixels it covers when rendered alone."""
        amodal = np.zeros((self.n, height * width), dtype=bool)
        depth = np.full(height * width, np.inf)
        ids = np.full(height * width, -1, dtype=np.int64)
        uv, z = _project(self.vertices, np.asarray(K, dtype=np.float64), np.asarray(world_to_cam, dtype=np.float64))
        _zbuffer(uv, z, self.faces, self.owner, int(width), int(height), amodal, depth, ids, True)
        visible = np.bincount(ids[ids >= 0], minlength=self.n)
        return visible.astype(np.float64), amodal.sum(axis=1).astype(np.float64)
