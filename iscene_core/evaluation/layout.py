"""The prediction folder: what ``predict`` writes, ``score`` reads and a bench's ``gt/`` already is.

```
P/prediction.json   {"format": "iscene-pred/1", "frame": "grid" | "view", "system": ...}
P/<key>.glb         one node ``instance_<id>`` per instance (a node may hold child meshes)
P/<key>.npz         optional voxels: ``scene`` and ``instance_<id>``, (M, 3) uint8, view grid
```
Frames: ``grid`` = the bench's view-grid cube (what ``iscene-infer`` writes), ``view`` = metres in
the view frame (camera right, forward, up). Node transforms are applied and the glTF +Y-up axis
change that writers put on nodes (``(x, y, z) -> (x, z, -y)``, iscene_core.infer.GRID_TO_GLTF) is
undone, so a reader gets coordinates in our axes whatever node layout a writer chose.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import trimesh

from iscene_core.evaluation.errors import EvalError, SceneError
from iscene_core.shards.atomic import write_bytes_atomic

__all__ = ["PRED_FORMAT", "GLTF_FROM_OURS", "FRAMES", "write_scene_glb", "read_scene_glb", "write_prediction_info",
           "read_prediction_info", "instance_name", "atomic_write_bytes", "atomic_write_text"]

PRED_FORMAT = "iscene-pred/1"
FRAMES = ("grid", "view")
# (x, y, z) ours (right, forward, up) -> glTF (x right, y up, z toward the viewer); equals infer.GRID_TO_GLTF.
GLTF_FROM_OURS = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
_NAME = re.compile(r"^instance_(\d+)$")


def instance_name(i: int) -> str:
    return f"instance_{int(i)}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write under a temporary name in the same folder, then rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_scene_glb(path: Path, meshes: dict[int, trimesh.Trimesh | None]) -> None:
    """One GLB, a node ``instance_<id>`` per entry (vertices in our axes, glTF axis change on the node).

    ``None`` or a mesh without faces still gets its (empty) node, so the instance count survives.
    """
    scene = trimesh.Scene()
    for i in sorted(meshes):
        name, mesh = instance_name(i), meshes[i]
        if mesh is None or len(mesh.faces) == 0:
            scene.graph.update(frame_to=name, frame_from=scene.graph.base_frame, matrix=GLTF_FROM_OURS)
        else:
            scene.add_geometry(mesh, node_name=name, geom_name=name, transform=GLTF_FROM_OURS)
    atomic_write_bytes(Path(path), scene.export(file_type="glb"))


def _instance_of(node: str, parents: dict[str, str]) -> int | None:
    seen = 0
    while node is not None and seen < 64:
        m = _NAME.match(node)
        if m:
            return int(m.group(1))
        node = parents.get(node)
        seen += 1
    return None


def read_scene_glb(path: Path) -> dict[int, trimesh.Trimesh]:
    """Instance id -> mesh in our axes (node transforms applied). Empty nodes give empty meshes.

    Raises SceneError with a one-line reason for a missing, corrupt or empty file, or one without
    any ``instance_<id>`` node.
    """
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{path.name}: prediction file missing")
    if path.stat().st_size == 0:
        raise SceneError(f"{path.name}: empty file")
    try:
        scene = trimesh.load(str(path), file_type="glb", force="scene", process=False)
    except Exception as exc:  # trimesh raises many types for corrupt glTF
        raise SceneError(f"{path.name}: unreadable GLB ({type(exc).__name__}: {str(exc)[:120]})") from None
    parents = dict(scene.graph.transforms.parents)
    ids: dict[int, list[trimesh.Trimesh]] = {}
    for node in scene.graph.nodes:
        m = _NAME.match(str(node))
        if m:
            ids.setdefault(int(m.group(1)), [])
    ours_from_gltf = np.linalg.inv(GLTF_FROM_OURS)
    for node in scene.graph.nodes_geometry:
        inst = _instance_of(node, parents)
        if inst is None:
            continue
        matrix, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        m = trimesh.Trimesh(np.asarray(geom.vertices, np.float64), np.asarray(geom.faces), process=False)
        m.apply_transform(ours_from_gltf @ np.asarray(matrix, np.float64))
        ids.setdefault(inst, []).append(m)
    if not ids:
        names = [str(n) for n in scene.graph.nodes if n != scene.graph.base_frame][:5]
        raise SceneError(f"{path.name}: no node named instance_<id> (nodes: {names or 'none'})")
    out = {}
    for i, parts in ids.items():
        if not parts:
            out[i] = trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), process=False)
        else:
            out[i] = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
        if len(out[i].vertices) and not np.all(np.isfinite(out[i].vertices)):
            raise SceneError(f"{path.name}: instance_{i} has non-finite vertices")
    return out


def write_prediction_info(pred_dir: Path, frame: str, system: str, **extra) -> None:
    if frame not in FRAMES:
        raise EvalError(f"frame must be one of {FRAMES}, got {frame!r}")
    info = {"format": PRED_FORMAT, "frame": frame, "system": system, **extra}
    atomic_write_text(Path(pred_dir) / "prediction.json", json.dumps(info, indent=1, sort_keys=True))


def read_prediction_info(pred_dir: Path) -> dict:
    """``prediction.json`` (frame defaults to ``grid``, what iscene-infer writes, when absent)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvalError(f"--pred {pred_dir}: not a folder")
    path = pred_dir / "prediction.json"
    if not path.is_file():
        return {"format": PRED_FORMAT, "frame": "grid", "system": "unknown"}
    try:
        from iscene_core.shards.format import MAX_DATASET_JSON_BYTES
        from iscene_core.shards.safejson import load_bounded

        info = load_bounded(path, MAX_DATASET_JSON_BYTES)  # untrusted: size and nesting bounded (BadJSON is a ValueError)
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: unreadable ({exc})") from None
    if not isinstance(info, dict) or info.get("frame", "grid") not in FRAMES:
        raise EvalError(f"{path}: 'frame' must be one of {FRAMES}")
    info.setdefault("frame", "grid")
    return info
