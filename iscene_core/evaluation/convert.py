"""``iscene-eval convert``: a folder of per-instance meshes per scene -> the prediction layout.

Other systems (MIDI, SceneGen, SAM 3D...) write one mesh file per object. Input layout:
``SRC/<scene key>/<anything ending in the instance id>.<glb|obj|ply|stl|off>`` (``instance_3.glb``,
``obj_3.ply``, ``3.obj``). Each file's meshes are merged (scene-graph transforms applied) into the
node ``instance_<id>`` of ``OUT/<key>.glb``. ``--axes yup`` undoes glTF's +Y-up convention;
``--frame`` says whether coordinates are the bench's grid cube or metres in the view frame.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import trimesh

from iscene_core.evaluation.bench import load_bench
from iscene_core.evaluation.errors import EvalError
from iscene_core.evaluation.layout import GLTF_FROM_OURS, write_prediction_info, write_scene_glb

__all__ = ["convert_folder", "MESH_SUFFIXES"]

log = logging.getLogger("iscene-eval")
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
_ID = re.compile(r"(\d+)$")


def _load_any(path: Path) -> trimesh.Trimesh | None:
    try:
        loaded = trimesh.load(str(path), force="scene", process=False)
        mesh = loaded.to_geometry() if isinstance(loaded, trimesh.Scene) else loaded
    except Exception as exc:  # noqa: BLE001 - one unreadable file costs that instance only
        log.warning("%s: unreadable (%s); instance left empty", path, exc)
        return None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        return None
    return trimesh.Trimesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces), process=False)


def convert_folder(src: Path, bench_dir: Path, out: Path, *, frame: str = "view", axes: str = "ours", system: str = "external") -> dict:
    """Write ``out`` in the prediction layout; returns counts (scenes, instances, bench scenes with no folder)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise EvalError(f"--src {src}: not a folder")
    bench = load_bench(bench_dir)
    ours_from_file = np.linalg.inv(GLTF_FROM_OURS) if axes == "yup" else np.eye(4)
    rep = {"scenes": 0, "instances": 0, "missing_scenes": []}
    for s in bench.scenes:
        d = src / s.key
        if not d.is_dir():
            rep["missing_scenes"].append(s.key)
            continue
        meshes: dict[int, trimesh.Trimesh | None] = {}
        for f in sorted(d.iterdir()):
            m = _ID.search(f.stem)
            if f.suffix.lower() not in MESH_SUFFIXES or not m:
                continue
            mesh = _load_any(f)
            if mesh is not None:
                mesh.apply_transform(ours_from_file)
            i = int(m.group(1))
            if i in meshes and meshes[i] is not None and mesh is not None:
                mesh = trimesh.util.concatenate([meshes[i], mesh])
            meshes[i] = mesh if mesh is not None else meshes.get(i)
        if not meshes:
            rep["missing_scenes"].append(s.key)
            continue
        write_scene_glb(out / f"{s.key}.glb", meshes)
        rep["scenes"] += 1
        rep["instances"] += sum(m is not None for m in meshes.values())
    if rep["scenes"] == 0:
        raise EvalError(f"--src {src}: no sub-folder named after a scene key of {bench_dir} holds a mesh file")
    write_prediction_info(out, frame, system, converted_from=str(src.resolve()), axes=axes)
    return rep
