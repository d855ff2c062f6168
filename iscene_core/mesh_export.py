"""Decoder logits -> meshes: marching cubes per instance, one GLB with a node per instance.

Meshes are in the view-centric grid cube ``[-0.5, 0.5]^3`` (x right, y forward, z up as seen from
the input camera; docs/VIEW_SPACE.md). Every instance of a scene shares that one grid, so the
instances keep the placement the image implies without any per-instance transform. Voxel index ->
grid position goes through ``iscene_core.space.voxel_centers`` (the project's one convention).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import trimesh

from iscene_core.space import voxel_centers

__all__ = ["logits_to_mesh", "export_scene", "empty_nodes_glb", "save_voxels"]

log = logging.getLogger(__name__)


def logits_to_mesh(logits: np.ndarray, level: float = 0.0) -> trimesh.Trimesh | None:
    """Marching cubes on a (R, R, R) logit volume (occupied where > ``level``); None if nothing is occupied.

    The volume is padded with a very negative value so shapes touching the grid border are closed
    (watertight) instead of open; faces are wound so normals point out of the occupied region.
    """
    from skimage.measure import marching_cubes

    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3 or len(set(logits.shape)) != 1:
        raise ValueError(f"logits_to_mesh expects a cubic (R, R, R) volume, got {logits.shape}")
    if not np.any(logits > level):
        return None
    vol = np.pad(logits, 1, constant_values=min(float(logits.min()), level) - 1e3)
    verts, faces, _, _ = marching_cubes(vol, level=level)
    verts = voxel_centers(verts - 1.0, logits.shape[0])  # padded index -> voxel index -> grid coords
    return trimesh.Trimesh(verts, faces[:, ::-1], process=True)


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def export_scene(
    logits_per_instance: dict[str, np.ndarray],
    out_glb: str | Path,
    level: float = 0.0,
    node_transform: np.ndarray | None = None,
) -> dict[str, int]:
    """Write one GLB (atomically) with a node per entry, named by its key; returns faces per node.

    Vertex data stays in grid coordinates; ``node_transform`` (4x4, e.g. grid -> glTF's +Y-up
    frame) is set on every node, so viewers show the scene upright while readers of the mesh data
    keep the grid. An instance with no occupied voxel still gets its (empty) node, so a reader can
    count the instances in the file; its face count is 0 and a warning is logged.
    """
    matrix = np.eye(4) if node_transform is None else np.asarray(node_transform, dtype=np.float64)
    scene = trimesh.Scene()
    faces: dict[str, int] = {}
    for name, logits in logits_per_instance.items():
        mesh = logits_to_mesh(logits, level)
        if mesh is None or len(mesh.faces) == 0:
            log.warning("%s: decoder predicts no occupied voxel; writing an empty node", name)
            scene.graph.update(frame_to=name, frame_from=scene.graph.base_frame, matrix=matrix)
            faces[name] = 0
            continue
        scene.add_geometry(mesh, node_name=name, geom_name=name, transform=matrix)
        faces[name] = int(len(mesh.faces))
    out_glb = Path(out_glb)
    tmp = _atomic_target(out_glb)
    try:
        # trimesh refuses to export a scene without geometry; glTF allows nodes without meshes
        tmp.write_bytes(scene.export(file_type="glb") if any(faces.values()) else empty_nodes_glb(list(faces), matrix))
        os.replace(tmp, out_glb)
    finally:
        tmp.unlink(missing_ok=True)
    return faces


def empty_nodes_glb(names: list[str], transform) -> bytes:
    """A valid GLB holding one mesh-less node per name (every instance decoded empty).

    The file is the 12-byte GLB header plus one JSON chunk; readers still count the instances.
    """
    import json

    matrix = [float(transform[r][c]) for c in range(4) for r in range(4)]  # glTF matrices are column-major
    gltf = {"asset": {"version": "2.0", "generator": "iscene"}, "scene": 0,
            "scenes": [{"nodes": list(range(len(names)))}], "nodes": [{"name": n, "matrix": matrix} for n in names]}
    body = json.dumps(gltf, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 4)
    data = b"glTF" + (2).to_bytes(4, "little") + (12 + 8 + len(body)).to_bytes(4, "little")
    return data + len(body).to_bytes(4, "little") + b"JSON" + body


def save_voxels(path: str | Path, voxels: dict[str, np.ndarray]) -> None:
    """Save named (M, 3) uint8 voxel-index arrays to an ``.npz`` (compressed, written atomically)."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v, dtype=np.uint8).reshape(-1, 3) for k, v in voxels.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
