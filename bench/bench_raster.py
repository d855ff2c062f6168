"""The exact rasteriser, compiled (numba) against its numpy reference: same meshes, same cameras,
same process, both checked equal pixel for pixel and depth for depth.

    python bench/bench_raster.py [--reps 5]

Widths: 128 px (camera choice's visibility check of a candidate view) and 518 px (the amodal
coverage of each rendered instance in ``datagen/sample.py``). Times are the median CPU time of this
process (``time.process_time``); the first compiled call (JIT or cache load) is not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import SHARED, write_result  # noqa: E402

MESHES = ["bunny.ply", "SheenCloth.glb", "Mixer.glb", "counter.unitsmm.STL", "WickerChair.glb", "Duck.glb",
          "table.glb", "wallhole.obj"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from assets_manifest import load_mesh
    from datagen.raster import rasterize
    from iscene_core import space

    rng = np.random.default_rng(0)
    rows = []
    for name in MESHES:
        m = load_mesh(SHARED / "assets" / name)
        v = np.asarray(m.vertices, dtype=np.float64)
        v = (v - 0.5 * (v.min(0) + v.max(0))) / np.ptp(v, axis=0).max()
        for width in (128, 518):
            eye = rng.normal(size=3)
            w2c = space.look_at_world_to_cam(1.6 * eye / np.linalg.norm(eye), np.zeros(3))
            f = 0.5 * width / np.tan(np.radians(25.0))
            K = np.array([[f, 0.0, width / 2], [0.0, f, width / 2], [0.0, 0.0, 1.0]])
            out = {}
            rasterize(K, w2c, v, m.faces, width, width, True)  # compile / load the cache
            for method in ("numba", "numpy"):
                ts = []
                for _ in range(args.reps):
                    t = time.process_time()
                    out[method] = rasterize(K, w2c, v, m.faces, width, width, True, method=method)
                    ts.append(time.process_time() - t)
                out[method + "_ms"] = float(np.median(ts)) * 1e3
            same = bool(np.array_equal(out["numba"][0], out["numpy"][0]) and np.array_equal(out["numba"][1], out["numpy"][1]))
            rows.append({"mesh": name, "faces": int(len(m.faces)), "width": width, "numba_ms": out["numba_ms"],
                         "numpy_ms": out["numpy_ms"], "numpy_over_numba": out["numpy_ms"] / out["numba_ms"],
                         "identical": same, "pixels": int(out["numba"][0].sum())})
            r = rows[-1]
            print(f"{name:22s} {r['faces']:7d} faces {width:4d} px: numba {r['numba_ms']:7.2f} ms, numpy "
                  f"{r['numpy_ms']:7.1f} ms ({r['numpy_over_numba']:.1f}x), identical {same}", flush=True)
    ratios = [r["numpy_over_numba"] for r in rows]
    res = {"rows": rows, "reps": args.reps, "clock": "median CPU seconds of this process (time.process_time)",
           "numpy_over_numba": {"min": min(ratios), "median": float(np.median(ratios)), "max": max(ratios)},
           "all_identical": all(r["identical"] for r in rows)}
    print("->", write_result("raster", res))


if __name__ == "__main__":
    main()
