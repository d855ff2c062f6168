"""Surface voxelisation at 64^3: ours vs trimesh's voxelizer (and open3d's if installed), same meshes.

    python bench/bench_voxelize.py

Fidelity is measured against the exact set (every voxel a triangle overlaps, which is what ours
computes; checked against a plain reference in tests/test_voxelize.py): IoU and recall. trimesh
centres voxels at k * pitch, so the mesh is shifted by half a voxel before voxelising with it (the
same surface on the same grid), and its centres are mapped back.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import SHARED, write_result  # noqa: E402

MESHES = ["bunny.ply", "Mixer.glb", "WickerChair.glb", "SheenCloth.glb", "DenseSphere.glb", "fandisk.obj", "Duck.glb", "table.glb"]


def _timeit(fn, reps=3):
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    import trimesh

    from assets_manifest import load_mesh
    from datagen.voxelize import voxelize_surface

    try:
        import open3d as o3d
    except Exception:
        o3d = None
    rows, R = [], 64
    for name in MESHES:
        m = load_mesh(SHARED / "assets" / name)
        v = m.vertices[np.unique(m.faces)]
        c, s = (v.min(0) + v.max(0)) / 2, (1 - 1e-6) / np.ptp(v, axis=0).max()
        verts = (m.vertices - c) * s
        ours, t_ours = _timeit(lambda: voxelize_surface(verts, m.faces, R))
        exact = {tuple(x) for x in ours.tolist()}
        # trimesh centres voxels at k * pitch; shifting the mesh by half a voxel makes its grid ours
        tm = trimesh.Trimesh(verts + 0.5 / R, m.faces, process=False)
        pts, t_tm = _timeit(lambda: tm.voxelized(1.0 / R).points)
        tm_set = {tuple(x) for x in np.clip(np.round((pts - 0.5 / R + 0.5) * R - 0.5), 0, R - 1).astype(int).tolist()}
        row = {"mesh": name, "faces": int(len(m.faces)), "ours_ms": t_ours * 1e3, "trimesh_ms": t_tm * 1e3,
               "speedup_vs_trimesh": t_tm / t_ours, "voxels": len(exact),
               "trimesh_iou_vs_exact": len(exact & tm_set) / len(exact | tm_set),
               "trimesh_recall": len(exact & tm_set) / len(exact)}
        if o3d is not None:
            mesh3d = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(m.faces))
            vg, t_o3d = _timeit(lambda: o3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(mesh3d, 1.0 / R, (-0.5,) * 3, (0.5,) * 3))
            o3d_set = {tuple(x.grid_index) for x in vg.get_voxels()}
            row.update(open3d_ms=t_o3d * 1e3, open3d_iou_vs_exact=len(exact & o3d_set) / len(exact | o3d_set))
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    total = {"ours_ms": sum(r["ours_ms"] for r in rows), "trimesh_ms": sum(r["trimesh_ms"] for r in rows)}
    total["speedup_vs_trimesh_total"] = total["trimesh_ms"] / total["ours_ms"]
    total["median_speedup_vs_trimesh"] = float(np.median([r["speedup_vs_trimesh"] for r in rows]))
    total["open3d_installed"] = o3d is not None
    print(total)
    print("->", write_result("voxelize", {"rows": rows, "total": total}))


if __name__ == "__main__":
    main()
