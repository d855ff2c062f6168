"""Milliseconds per 8-instance scene (assets loaded), against the obvious approach.

    python bench/bench_layout.py [--scenes 30]

"ours": the layout sampler (fcl BVHs cached per asset and size, moved by transforms; AABB broad
phase, then exact fcl distance). "obvious": the same placements checked the obvious way, with a
trimesh CollisionManager rebuilt for every check (BVH rebuilt from the mesh each time). Both run
in one process on one core; the collision-check part is timed separately for the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=30)
    args = ap.parse_args()
    import numpy as np
    import trimesh

    from assets_manifest import build_catalog, load_manifest
    from datagen import layout as L
    from datagen import physics

    with tempfile.TemporaryDirectory() as tmp:
        recs = load_manifest(build_catalog("procedural", tmp, n=200, seed=0, progress=False))
        cfg = L.LayoutConfig(min_instances=8, max_instances=8, views_per_scene=1, width=256, height=256)
        lib = L.AssetLibrary(recs)
        # warm the caches (assets already loaded): every asset at every size level it can take
        for i in range(10):
            L.sample_scene(lib, cfg, 1, i)
        physics_ms, full_ms, checks = [], [], []
        counts = {"distance": 0}
        orig_distance = physics.distance

        def counted(a, b):
            counts["distance"] += 1
            return orig_distance(a, b)

        physics.distance = counted
        for i in range(args.scenes):
            t0 = time.perf_counter()
            spec = L.sample_scene(lib, cfg, 2, i)
            full_ms.append((time.perf_counter() - t0) * 1e3)
            checks.append(spec)
        physics.distance = orig_distance
        # placement only (no cameras), to isolate the physics part
        cfg0 = L.LayoutConfig(min_instances=8, max_instances=8, views_per_scene=0)
        for i in range(args.scenes):
            t0 = time.perf_counter()
            L.sample_scene(lib, cfg0, 2, i)
            physics_ms.append((time.perf_counter() - t0) * 1e3)
        # The obvious approach on the same final scenes: for each instance, a CollisionManager
        # holding the others is rebuilt and queried (min distance), as an incremental sampler would.
        ours_check, obvious_check = [], []
        for spec in checks[:10]:
            meshes = []
            for inst in spec["instances"]:
                m = lib.posed(inst["uid"], inst["pose"])[0].copy()
                m.apply_scale(inst["size"])
                # world = T R S P N x: the posed mesh at ``size`` moves by T R = o2w (P N)^-1 S^-1
                pn = lib.posed(inst["uid"], inst["pose"])[1] @ np.asarray(lib.by_uid[inst["uid"]].normalization)
                meshes.append((m, np.asarray(inst["object_to_world"]) @ np.linalg.inv(pn) @ np.diag([1 / inst["size"]] * 3 + [1])))
            t0 = time.perf_counter()
            for k in range(1, len(meshes)):
                cm = trimesh.collision.CollisionManager()
                for j in range(k):
                    cm.add_object(str(j), meshes[j][0], transform=meshes[j][1])
                cm.min_distance_single(meshes[k][0], transform=meshes[k][1])
            obvious_check.append((time.perf_counter() - t0) * 1e3)
            objs = [physics.fcl_object(lib.sized(inst["uid"], inst["size"], inst["pose"]), 0.0, np.zeros(3)) for inst in spec["instances"]]
            for o, (_, T) in zip(objs, meshes):
                import fcl

                o.setTransform(fcl.Transform(T[:3, :3], T[:3, 3]))
            t0 = time.perf_counter()
            for k in range(1, len(objs)):
                for j in range(k):
                    physics.distance(objs[k], objs[j])
            ours_check.append((time.perf_counter() - t0) * 1e3)
    res = {
        "scenes": args.scenes,
        "median_ms_per_8_instance_scene_placement_only": float(np.median(physics_ms)),
        "median_ms_per_8_instance_scene_with_1_camera": float(np.median(full_ms)),
        "fcl_distance_queries_per_scene": counts["distance"] / args.scenes,
        "median_ms_all_pair_checks_cached_bvh": float(np.median(ours_check)),
        "median_ms_all_pair_checks_collision_manager_rebuilt": float(np.median(obvious_check)),
    }
    res["speedup_checks_vs_obvious"] = res["median_ms_all_pair_checks_collision_manager_rebuilt"] / res["median_ms_all_pair_checks_cached_bvh"]
    for k, v in res.items():
        print(f"{k:55s} {v:10.2f}")
    print("->", write_result("layout", res))


if __name__ == "__main__":
    main()
