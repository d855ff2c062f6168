"""Do two triangle soups describe the same surface? (No bpy here, so it is testable anywhere.)

The authored-materials path renders the triangles Blender's own importer made, while masks, depth
checks and voxels come from the catalog's triangles (``assets_manifest.load_mesh``). That is only
sound when both are the same surface, which this module decides, order-free:

* zero-area triangles are dropped on both sides (they draw nothing; Blender's importers drop some
  of them, trimesh keeps them);
* every remaining catalog triangle must have an imported triangle whose three corners lie within
  ``tol`` of its own (corner order free), and every imported triangle must have such a catalog
  triangle. Matching both ways makes it a set equality up to ``tol``, which tolerates exact
  duplicate faces (Blender drops them: WickerChair has 12) but catches anything missing, moved,
  posed (skinned files), re-triangulated or extra (bone-shape meshes).

``tol`` is relative: ``rel_tol`` times the catalog mesh's largest extent, so the test does not
depend on the file's units and means "1e-4 of the asset's size after normalisation" (the catalog's
normalisation is a similarity transform).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

REL_TOL = 1e-4


def _nondegenerate(tris: np.ndarray, tol: float) -> np.ndarray:
    """Triangles whose smallest height exceeds ``tol``: thinner ones (points, needles, slivers of three
    almost collinear corners) cover no area at ``tol`` and importers drop or re-split them freely."""
    cross = np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    longest = np.linalg.norm(tris - np.roll(tris, 1, axis=1), axis=2).max(axis=1)
    return tris[cross > tol * np.maximum(longest, tol)]


def _unmatched(src: np.ndarray, dst: np.ndarray, tol: float, k: int = 8) -> np.ndarray:
    """Indices of ``src`` triangles with no ``dst`` triangle having all corners within ``tol``.

    Candidates are the ``k`` nearest ``dst`` centroids (two equal triangles have centroids within
    ``tol``); for each, the corner distance is order-free: every corner of one has a corner of
    the other within ``tol``.
    """
    tree = cKDTree(dst.mean(axis=1))
    kk = min(k, len(dst))
    dist, idx = tree.query(src.mean(axis=1), k=kk)
    if kk == 1:
        dist, idx = dist[:, None], idx[:, None]
    ok = np.zeros(len(src), dtype=bool)
    for j in range(kk):
        near = dist[:, j] <= tol
        if not near.any():
            continue
        a, b = src[near], dst[idx[near, j]]
        # (n, 3 corners of a, 3 corners of b) distances; each corner of a needs a close corner of b and vice versa
        d = np.linalg.norm(a[:, :, None, :] - b[:, None, :, :], axis=-1)
        close = (d.min(axis=2).max(axis=1) <= tol) & (d.min(axis=1).max(axis=1) <= tol)
        ok[np.flatnonzero(near)[close]] = True
    return np.flatnonzero(~ok)


def compare_triangles(catalog: np.ndarray, imported: np.ndarray, rel_tol: float = REL_TOL) -> str | None:
    """``None`` when the two (n, 3, 3) triangle arrays are the same surface within tolerance, else why not.

    The reason is one short line meant for sample metadata, e.g.
    ``"geometry differs: 80 of 656 imported triangles not in the catalog mesh (tol 1.5e-02)"``.
    """
    catalog = np.asarray(catalog, dtype=np.float64).reshape(-1, 3, 3)
    imported = np.asarray(imported, dtype=np.float64).reshape(-1, 3, 3)
    if len(catalog) == 0:
        return "geometry differs: the catalog mesh has no triangles"
    if len(imported) == 0:
        return "geometry differs: the import has no triangles"
    if not np.all(np.isfinite(imported)):
        return "geometry differs: the import has non-finite coordinates"
    pts = catalog.reshape(-1, 3)
    tol = rel_tol * float(np.ptp(pts, axis=0).max())
    lo_c, hi_c = pts.min(axis=0), pts.max(axis=0)
    ipts = imported.reshape(-1, 3)
    lo_i, hi_i = ipts.min(axis=0), ipts.max(axis=0)
    if max(np.abs(lo_c - lo_i).max(), np.abs(hi_c - hi_i).max()) > tol:
        fmt = lambda a: "(" + ", ".join(f"{x:.4g}" for x in a) + ")"
        return (f"geometry differs: bounds {fmt(lo_i)}..{fmt(hi_i)} imported vs {fmt(lo_c)}..{fmt(hi_c)} in the catalog "
                f"(tol {tol:.1e})")
    cat, imp = _nondegenerate(catalog, tol), _nondegenerate(imported, tol)
    if len(cat) == 0 or len(imp) == 0:
        return f"geometry differs: no non-degenerate triangles (catalog {len(cat)}, import {len(imp)})"
    missing = _unmatched(cat, imp, tol)
    if len(missing):
        return f"geometry differs: {len(missing)} of {len(cat)} catalog triangles not in the import ({len(imp)} triangles; tol {tol:.1e})"
    extra = _unmatched(imp, cat, tol)
    if len(extra):
        return f"geometry differs: {len(extra)} of {len(imp)} imported triangles not in the catalog mesh (tol {tol:.1e})"
    return None
