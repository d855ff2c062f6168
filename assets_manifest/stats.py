"""Catalog statistics (counts, face and size histograms, rejects by reason) and validation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from assets_manifest.mesh_io import AssetError, file_sha256, load_mesh
from assets_manifest.record import AssetRecord


def catalog_stats(records: list[AssetRecord], rejects: list[dict]) -> dict:
    faces = np.array([r.faces for r in records]) if records else np.zeros(0)
    ext = np.array([r.canonical_extents for r in records]) if records else np.zeros((0, 3))
    ratio = ext.max(axis=1) / np.maximum(ext.min(axis=1), 1e-9) if len(ext) else np.zeros(0)

    def q(a):
        return {k: float(v) for k, v in zip(("min", "p10", "median", "p90", "max"), np.percentile(a, [0, 10, 50, 90, 100]))} if len(a) else {}

    return {
        "assets": len(records),
        "by_source": dict(Counter(r.source for r in records)),
        "by_up_axis": dict(Counter(r.up_axis for r in records)),
        "watertight": int(sum(r.watertight for r in records)),
        "textured": int(sum(r.has_texture for r in records)),
        "faces": q(faces),
        "extent_ratio_max_over_min": q(ratio),
        "rejects": len(rejects),
        "rejects_by_reason": dict(Counter(f"{r['stage']}: {r['reason'].split(' (')[0]}" for r in rejects)),
    }


def plot_stats(records: list[AssetRecord], rejects: list[dict], out_png: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    faces = [max(r.faces, 1) for r in records]
    axes[0].hist(np.log10(faces) if faces else [], bins=30, color="tab:blue")
    axes[0].set(title="faces per asset", xlabel="log10(faces)", ylabel="assets")
    ext = np.array([r.canonical_extents for r in records]) if records else np.zeros((0, 3))
    if len(ext):
        axes[1].hist(ext.max(1) / np.maximum(ext.min(1), 1e-9), bins=np.logspace(0, 3, 30), color="tab:green")
        axes[1].set_xscale("log")
    axes[1].set(title="size ratio (longest / shortest side)", xlabel="ratio", ylabel="assets")
    reasons = Counter(f"{r['stage']}: {r['reason'].split(' (')[0][:40]}" for r in rejects)
    axes[2].barh(list(reasons) or ["(none)"], list(reasons.values()) or [0], color="tab:red")
    axes[2].set(title=f"rejects ({len(rejects)})")
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def validate_record(r: AssetRecord, check_geometry: bool = True) -> list[str]:
    """Problems with one row (empty list = fine): file present, same bytes, proxy, normalisation."""
    problems = []
    p = Path(r.path)
    if not p.is_file():
        return [f"{r.uid}: file missing: {r.path}"]
    if file_sha256(p) != r.sha256:
        problems.append(f"{r.uid}: sha256 changed for {r.path}")
    if not Path(r.collision_proxy).is_file():
        problems.append(f"{r.uid}: collision proxy missing: {r.collision_proxy}")
    if check_geometry:
        try:
            mesh = load_mesh(p)
        except AssetError as exc:
            return problems + [f"{r.uid}: {exc}"]
        n = np.asarray(r.normalization)
        v = mesh.vertices[np.unique(mesh.faces)] @ n[:3, :3].T + n[:3, 3]
        lo, hi = v.min(0), v.max(0)
        if abs(np.max(hi - lo) - 1.0) > 1e-6 or abs(lo[2]) > 1e-6 or np.abs((lo[:2] + hi[:2]) / 2).max() > 1e-6:
            problems.append(f"{r.uid}: normalization does not map the mesh to the canonical frame")
    return problems


def read_rejects(folder: Path) -> list[dict]:
    path = Path(folder) / "rejects.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []
