"""Decoder logits -> meshes: marching cubes per instance, one GLB with a node per instance.

Meshes are in the view-centric grid cube ``[-0.5, 0.5]^3`` (x right, y forward, z up as seen from the
input camera), so instances keep the placement the image implies; voxels go to an .npz beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh


def logits_to_mesh(logits: np.ndarray, level: float = 0.0) -> trimesh.Trimesh | None:
    """Marching cubes on a (R, R, R) logit volume (occupied where > level); None if no surface."""
    from skimage.measure import marching_cubes

    vol = np.pad(np.asarray(logits, dtype=np.float32), 1, constant_values=-1e3)  # close open borders
    if not (vol.max() > level > vol.min()):
        return None
    verts, faces, _, _ = marching_cubes(vol, level=level)
    R = logits.shape[0]
    verts = (verts - 1 + 0.5) / R - 0.5  # padded index -> voxel centre -> grid coordinates
    return trimesh.Trimesh(verts, faces[:, ::-1], process=True)


def export_scene(logits_per_instance: dict[str, np.ndarray], out_glb: str | Path) -> dict[str, int]:
    """Write one GLB with a node per instance that has a surface; returns faces per node name."""
    scene = trimesh.Scene()
    faces = {}
    for name, logits in logits_per_instance.items():
        mesh = logits_to_mesh(logits)
        if mesh is None:
            continue
        scene.add_geometry(mesh, node_name=name, geom_name=name)
        faces[name] = int(len(mesh.faces))
    out_glb = Path(out_glb)
    tmp = out_glb.with_name(f".{out_glb.stem}.tmp{os.getpid()}.glb")
    scene.export(tmp)
    os.replace(tmp, out_glb)
    return faces
