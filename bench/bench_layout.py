"""Layout cost per 8-instance scene on the real meshes of ../shared/assets: placement, camera
choice, settling, against the previous camera choice replayed on the same inputs.

    python bench/bench_layout.py [--scenes 200] [--warm 200] [--gpu-speedup 50] [--result-name layout]

Scenes are made with ``datagen.layout.sample_scene`` (default LayoutConfig: 4 views of 518 px,
fill 0.4, mixed occlusion, 32 min instance pixels, settling on), 8 instances each, after ``--warm``
scenes have filled the asset caches. The default 200 warm scenes give a long generation run's
steady state on this 36-asset catalog (every asset's collision BVH built once); ``--warm 30``
leaves the first-use costs in (fcl builds the BVH of a dense asset once per process: 0.3 s for
the 84k-triangle counter), which is what the first scenes of a worker pay. Per scene the time is
split by wrapping ``sample_cameras`` and ``settle_placed``: camera choice, settling, and placement
(everything else: sampling, fcl checks, stability, and the work of failed scene tries).

"previous": every ``sample_cameras`` call of the run is replayed with the same inputs and random
state through ``datagen/cameras.py`` as of commit PREVIOUS (loaded from git; it calls today's
``datagen.raster``, whose compiled rasteriser only makes the replay faster than it was, so the
ratio is a lower bound), so the ratio and the share of identical camera choices come from one
process on one machine. PREVIOUS's camera choice splatted surface samples to pre-screen every
candidate and rasterised each mesh separately; today's z-buffers the scene once per candidate and
checks candidates in order of frame fill (after a screen on coarse proxies, ``datagen.proxy_mesh``), so its choices differ by design (the identical count is
expected near 0). Times are CPU seconds of
this process (``time.process_time``): the machine is shared, and wall time would mostly measure the
scheduler; wall medians are reported too.

No GPU here: the GPU render time of one 518 px / 32 spp view is projected as the measured CPU Cycles
time (bench/results/datagen_518px_32spp.json) divided by ``--gpu-speedup`` (an assumption, see
``gpu_projection`` in the result), and the CPU share is (placement + cameras) / views per view.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import REPO, RESULTS, SHARED, write_result  # noqa: E402

PREVIOUS = "ceff512"  # last commit before the compiled scene z-buffer in camera choice (issue 14)


def previous_cameras(commit: str = PREVIOUS):
    """datagen/cameras.py as of ``commit``, imported as its own module; None without git."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:datagen/cameras.py"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "cameras_previous.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("cameras_previous", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cameras_previous"] = mod
    spec.loader.exec_module(mod)
    return mod


def stats(ms) -> dict:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": int(len(a))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--warm", type=int, default=200, help="scenes made first to fill the asset caches (not timed)")
    ap.add_argument("--result-name", default="layout", help="bench/results/<name>.json")
    ap.add_argument("--gpu-speedup", type=float, default=50.0,
                    help="assumed Cycles throughput of one render GPU over the 2-core CPU of datagen_518px_32spp.json")
    ap.add_argument("--no-previous", action="store_true", help="skip replaying the previous camera choice")
    args = ap.parse_args()
    if args.scenes < 1 or args.warm < 0 or args.gpu_speedup <= 0:
        ap.error("--scenes >= 1, --warm >= 0 and --gpu-speedup > 0")
    if not args.result_name.replace("_", "").replace("-", "").isalnum():
        ap.error(f"--result-name must be a plain file stem (letters, digits, - and _), got {args.result_name!r}")
    import numpy as np

    from assets_manifest import build_catalog, load_manifest
    from datagen import layout as L
    from datagen.errors import SceneFailure

    old = None if args.no_previous else previous_cameras()
    clock = time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        recs = load_manifest(build_catalog("dir", tmp, inputs=SHARED / "assets", progress=False))
        lib = L.AssetLibrary(recs)
        cfg = L.LayoutConfig(min_instances=8, max_instances=8)
        calls: list = []
        orig_cams, orig_settle = L.sample_cameras, L.settle_placed

        def cams(meshes, aabbs, rng, ccfg, points=None, hull_points=None, proxies=None):
            state = rng.bit_generator.state
            t = clock()
            out = orig_cams(meshes, aabbs, rng, ccfg, points=points, hull_points=hull_points, proxies=proxies)
            calls.append(("cam", clock() - t, (meshes, aabbs, state, ccfg, points, out)))
            return out

        def settle(*a, **k):
            t = clock()
            try:
                return orig_settle(*a, **k)
            finally:
                calls.append(("settle", clock() - t, None))

        L.sample_cameras, L.settle_placed = cams, settle
        errors: list[str] = []
        for i in range(args.warm):
            try:
                L.sample_scene(lib, cfg, 3, 1000 + i)
            except Exception as exc:  # noqa: BLE001 - a warm-up scene only fills caches
                errors.append(f"warm {i}: {type(exc).__name__}: {exc}")
        rows, failures = [], 0
        for i in range(args.scenes):
            calls.clear()
            t, w = clock(), time.perf_counter()
            try:
                L.sample_scene(lib, cfg, 3, i)
            except SceneFailure:
                failures += 1
            except Exception as exc:  # noqa: BLE001 - e.g. pybullet.error from settling: count it, keep timing
                failures += 1
                errors.append(f"scene {i}: {type(exc).__name__}: {exc}")
            total, wall = clock() - t, time.perf_counter() - w
            cam = sum(c[1] for c in calls if c[0] == "cam")
            st = sum(c[1] for c in calls if c[0] == "settle")
            prev, same = None, []
            if old is not None:
                prev = 0.0
                for kind, _, inp in calls:
                    if kind != "cam":
                        continue
                    meshes, aabbs, state, ccfg, points, out = inp
                    rng = np.random.default_rng()
                    rng.bit_generator.state = state
                    t0 = clock()
                    ref = old.sample_cameras(meshes, aabbs, rng, ccfg, points=points)
                    prev += clock() - t0
                    same.append(ref == out)
            rows.append({"placement": total - cam - st, "cameras": cam, "settle": st, "wall": wall,
                         "cameras_previous": prev, "camera_calls": len(same) or None, "identical": same})
            print(f"scene {i}: placement {rows[-1]['placement'] * 1e3:.0f} ms, cameras {cam * 1e3:.0f} ms"
                  + (f" (previous {prev * 1e3:.0f} ms, identical {all(same)})" if prev is not None else "")
                  + f", settle {st * 1e3:.0f} ms (CPU)", flush=True)
        L.sample_cameras, L.settle_placed = orig_cams, orig_settle

    ms = {k: [r[k] * 1e3 for r in rows] for k in ("placement", "cameras", "settle", "wall")}
    ms["total"] = [p + c for p, c in zip(ms["placement"], ms["cameras"])]
    render_cpu_s = json.loads((RESULTS / "datagen_518px_32spp.json").read_text())["render_seconds_per_view"]
    gpu_s = render_cpu_s / args.gpu_speedup
    views = cfg.views_per_scene
    res = {
        "scenes": args.scenes, "warm_scenes": args.warm, "instances_per_scene": 8, "views_per_scene": views, "resolution": cfg.width,
        "assets": len(recs), "catalog": "../shared/assets (dir)", "failed_scenes": failures, "errors": errors,
        "clock": "CPU seconds of the benchmark process (time.process_time), machine shared and loaded",
        "ms_per_scene": {k: stats(ms[k]) for k in ("placement", "cameras", "total", "settle")},
        "wall_ms_per_scene": stats(ms["wall"]),
        "target": {"total_median_ms": 50.0, "total_p99_ms": 300.0, "cpu_share_of_gpu_render": 0.30},
    }
    if old is not None:
        ms["cameras_previous"] = [r["cameras_previous"] * 1e3 for r in rows]
        ms["total_previous"] = [p + c for p, c in zip(ms["placement"], ms["cameras_previous"])]
        res["previous"] = {
            "commit": PREVIOUS,
            "ms_per_scene": {k: stats(ms[k]) for k in ("cameras_previous", "total_previous")},
            "speedup_cameras_median": float(np.median(ms["cameras_previous"]) / np.median(ms["cameras"])),
            "speedup_cameras_sum": float(np.sum(ms["cameras_previous"]) / np.sum(ms["cameras"])),
            "speedup_total_median": float(np.median(ms["total_previous"]) / np.median(ms["total"])),
            "camera_calls_with_identical_cameras": f"{sum(sum(r['identical']) for r in rows)} of {sum(len(r['identical']) for r in rows)}",
        }
    per_view = {k: float(np.median(ms[k])) / views / 1e3 for k in ("total", "settle")}
    res["gpu_projection"] = {
        "cpu_render_seconds_per_view_518px_32spp": render_cpu_s,
        "assumed_gpu_speedup_over_that_cpu": args.gpu_speedup,
        "projected_gpu_render_seconds_per_view": gpu_s,
        "source": "not measured (no GPU here): CPU time from bench/results/datagen_518px_32spp.json (Cycles, 2-core "
                  "CPU) divided by an assumed GPU/CPU Cycles throughput ratio (--gpu-speedup)",
        "layout_cpu_seconds_per_view_median": per_view["total"],
        "layout_share_of_gpu_render_median": per_view["total"] / gpu_s,
        "settle_share_of_gpu_render_median": per_view["settle"] / gpu_s,
    }
    print(json.dumps(res, indent=1))
    print("->", write_result(args.result_name, res))


if __name__ == "__main__":
    main()
