"""Score outputs: scores.json, a markdown table, a per-scene CSV, histograms, a worst-scenes sheet.

Every file is written under a temporary name and renamed. The contact sheet renders GT and
prediction from the bench's input camera (``datagen.raster``: exact triangle rasterisation with
depth), one flat colour per instance id, so a wrong placement is visible next to the input image.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from iscene_core.evaluation.layout import atomic_write_bytes, atomic_write_text

__all__ = ["SCORES_FORMAT", "write_report", "markdown_table", "render_instances", "contact_sheet"]

SCORES_FORMAT = "iscene-scores/1"
COLUMNS = [("cd_s", "CD-S", "{:.4f}"), ("f_s", "F-S", "{:.2f}"), ("cd_o", "CD-O", "{:.4f}"), ("f_o", "F-O", "{:.2f}"),
           ("iou_b", "IoU-B", "{:.4f}"), ("voxel_iou", "voxel IoU", "{:.4f}"), ("interpenetration", "interpen.", "{:.4f}"),
           ("floating", "floating", "{:.3f}")]
CSV_FIELDS = ["protocol", "key", "status", "message", "n_gt", "n_pred", "missing", "extra", "cd_s", "f_s", "cd_o", "f_o",
              "iou_b", "voxel_iou", "interpenetration", "floating"]


def _fmt(v, spec: str) -> str:
    return "–" if v is None else spec.format(v)


def markdown_table(bench_name: str, pred_name: str, results: dict) -> str:
    """One row per protocol; what each protocol means is linked to docs/EVAL.md."""
    lines = [f"# {pred_name} on {bench_name}", "",
             "| protocol | " + " | ".join(c[1] for c in COLUMNS) + " | scored / skipped / failed |",
             "| --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |"]
    for name, res in results.items():
        s = res["summary"]
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(k), f) for k, _, f in COLUMNS)
                     + f" | {s['n_scored']} / {s['n_skipped']} / {s['n_failed']} |")
    lines += ["", "CD lower is better, F in percent at each protocol's tau (docs/EVAL.md: plain vs squared distances differ "
              "between protocols, so compare within a row's protocol only). interpen. = share of an instance's voxels "
              "inside another instance; floating = share of instances with no support."]
    for name, res in results.items():
        s = res["summary"]
        if s.get("gt_interpenetration") is not None:
            lines.append(f"\nGround truth reference ({name}): interpenetration {s['gt_interpenetration']:.4f}, floating {s['gt_floating']:.3f}.")
            break
    failed = [(name, r["key"], r["message"]) for name, res in results.items() for r in res["scenes"] if r["status"] != "ok"]
    if failed:
        lines += ["", "## Scenes not scored", "", "| protocol | scene | reason |", "| --- | --- | --- |"]
        lines += [f"| {n} | {k} | {m} |" for n, k, m in failed[:200]]
    return "\n".join(lines) + "\n"


def _csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for name, res in results.items():
        for r in res["scenes"]:
            phys = r.get("physics") or {}
            w.writerow({"protocol": name, **{k: r.get(k) for k in CSV_FIELDS if k not in ("protocol", "interpenetration", "floating")},
                        "missing": " ".join(map(str, r.get("missing", []))), "extra": " ".join(map(str, r.get("extra", []))),
                        "interpenetration": phys.get("interpenetration"), "floating": phys.get("floating")})
    return buf.getvalue()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def histograms(results: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("f_s", "F-S"), ("cd_s", "CD-S"), ("iou_b", "IoU-B"), ("voxel_iou", "voxel IoU"), ("f_o", "F-O"), ("interpenetration", "interpenetration")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (k, label) in zip(axes.ravel(), keys):
        for name, res in results.items():
            vals = [(r.get("physics") or {}).get(k) if k == "interpenetration" else r.get(k) for r in res["scenes"] if r["status"] == "ok"]
            vals = [v for v in vals if v is not None and np.isfinite(v)]
            if vals:
                ax.hist(vals, bins=20, alpha=0.6, label=name)
        ax.set_title(label)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def _palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    p = rng.integers(60, 255, size=(max(n, 1) + 1, 3)).astype(np.uint8)
    p[0] = 0
    return p


def render_instances(meshes: dict, camera: dict, view_to_cam: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: each instance (view-frame mesh) in its id's colour, nearest surface wins."""
    from datagen.raster import rasterize

    W, H = int(camera["width"]), int(camera["height"])
    K = np.asarray(camera["K"], np.float64)
    ids = np.zeros((H, W), np.int64)
    depth = np.full((H, W), np.inf)
    for i, m in meshes.items():
        if m is None or len(m.faces) == 0:
            continue
        _, d = rasterize(K, view_to_cam, np.asarray(m.vertices), np.asarray(m.faces), W, H, with_depth=True)
        closer = d < depth
        ids[closer], depth[closer] = int(i), d[closer]
    pal = _palette(int(max([0, *meshes.keys()])) + 1)
    return pal[np.clip(ids, 0, len(pal) - 1)]


def contact_sheet(bench, pred_dir: Path, frame: str, rows: list[dict], n: int = 12, tile: int = 192) -> bytes | None:
    """The ``n`` worst scored scenes by F-S: input image | GT | prediction (from the input camera)."""
    from PIL import Image, ImageDraw

    from iscene_core.evaluation.layout import read_scene_glb
    from iscene_core.evaluation.score import load_prediction

    ok = sorted((r for r in rows if r["status"] == "ok" and r.get("f_s") is not None), key=lambda r: r["f_s"])[:n]
    if not ok:
        return None
    by_key = {s.key: s for s in bench.scenes}
    sheet = Image.new("RGB", (3 * tile, len(ok) * (tile + 16)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, r in enumerate(ok):
        s = by_key[r["key"]]
        y = k * (tile + 16)
        img = Image.open(s.image_path).convert("RGB")
        gt = render_instances(read_scene_glb(s.gt_glb), s.camera, s.view_to_cam)
        try:
            pr = render_instances(load_prediction(s, pred_dir, frame), s.camera, s.view_to_cam)
        except Exception:  # noqa: BLE001 - a scene that scored but no longer renders still gets its row
            pr = np.zeros_like(gt)
        for c, im in enumerate((img, Image.fromarray(gt), Image.fromarray(pr))):
            sheet.paste(im.resize((tile, tile), Image.NEAREST), (c * tile, y + 16))
        draw.text((2, y + 2), f"{r['key']}  F-S {r['f_s']:.1f}  IoU-B {r.get('iou_b') or 0:.3f}   image | GT | prediction", fill=(0, 0, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def write_report(out: Path, bench, pred_dir: Path, pred_info: dict, results: dict, points: int | None) -> dict:
    """Write every output into ``out``; returns the scores.json content."""
    out = Path(out)
    doc = {
        "format": SCORES_FORMAT,
        "bench": {"name": bench.name, "path": str(Path(bench.root).resolve()), "format": bench.manifest.get("format"),
                  "generator": bench.manifest.get("generator"), "n_scenes": len(bench.scenes)},
        "prediction": {"path": str(Path(pred_dir).resolve()), **pred_info},
        "points_override": points,
        "protocols": results,
    }
    atomic_write_text(out / "scores.json", json.dumps(doc, indent=1, default=float))
    atomic_write_text(out / "scores.md", markdown_table(bench.name, str(pred_info.get("system", Path(pred_dir).name)), results))
    atomic_write_text(out / "scenes.csv", _csv(results))
    atomic_write_bytes(out / "histograms.png", histograms(results))
    first = next(iter(results.values()))
    sheet = contact_sheet(bench, pred_dir, pred_info["frame"], first["scenes"])
    if sheet is not None:
        atomic_write_bytes(out / "worst.png", sheet)
    return doc
