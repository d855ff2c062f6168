"""Builds a small 3D-FRONT + 3D-FUTURE-format fixture on disk (no licensed data needed).

House ``house_a.json`` has two rooms:
- ``LivingRoom-1``: a table (rotated 30 deg about y, scale 1.2 x 0.8 x 1.0), a cabinet (rotated
  -75 deg) and a box (rotated 10 deg about an oblique axis, so no quaternion is axis-aligned), plus
  one invalid piece, one piece whose model folder is missing and one with an absurd scale;
- ``Bedroom-2``: only one usable piece (-> too_few_furniture).
House ``house_b.json`` repeats ``LivingRoom-1`` exactly (-> duplicate_room).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

LIVING = [
    # (furniture uid, jid, pos, rot quaternion [x, y, z, w], scale)
    ("f-table", "jid-table", [0.0, 0.0, 0.0], Rotation.from_euler("y", 30, degrees=True).as_quat().tolist(), [1.2, 0.8, 1.0]),
    ("f-cabinet", "jid-cabinet", [1.6, 0.0, 0.9], Rotation.from_euler("y", -75, degrees=True).as_quat().tolist(), [1.0, 1.0, 1.0]),
    ("f-box", "jid-box", [-1.5, 0.0, -0.8], Rotation.from_rotvec(np.radians(10) * np.array([0.3, 0.9, 0.3]) / np.linalg.norm([0.3, 0.9, 0.3])).as_quat().tolist(), [0.9, 0.9, 0.9]),
    ("f-invalid", "jid-box", [0.5, 0.0, 1.5], [0, 0, 0, 1], [1, 1, 1]),
    ("f-missing", "jid-does-not-exist", [0.5, 0.0, -1.5], [0, 0, 0, 1], [1, 1, 1]),
    ("f-absurd", "jid-box", [-0.5, 0.0, 1.5], [0, 0, 0, 1], [1000.0, 1, 1]),
]


def _model(folder: Path, extents, colour) -> None:
    """A 3D-FUTURE-style model folder: raw_model.obj + model.mtl + texture.png, y-up, metres."""
    folder.mkdir(parents=True, exist_ok=True)
    box = trimesh.creation.box(extents=extents)
    box.apply_translation([0.0, extents[1] / 2.0, 0.0])  # 3D-FUTURE models stand on y = 0
    uv = (box.vertices[:, [0, 2]] - box.vertices[:, [0, 2]].min(0)) / np.ptp(box.vertices[:, [0, 2]], axis=0)
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[...] = colour
    tex[::2, ::2] = 255
    Image.fromarray(tex).save(folder / "texture.png")
    lines = ["mtllib model.mtl", "usemtl mat0"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in box.vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in box.faces]
    (folder / "raw_model.obj").write_text("\n".join(lines) + "\n")
    (folder / "model.mtl").write_text("newmtl mat0\nKd 1 1 1\nmap_Kd texture.png\n")


def _floor_mesh(uid: str, half: float) -> dict:
    xyz = [-half, 0, -half, half, 0, -half, half, 0, half, -half, 0, half]
    return {"uid": uid, "jid": "", "type": "Floor", "xyz": xyz, "faces": [0, 2, 1, 0, 3, 2], "normal": [], "uv": []}


def _wall_mesh(uid: str, half: float) -> dict:
    xyz = [-half, 0, half, half, 0, half, half, 2.6, half, -half, 2.6, half]
    return {"uid": uid, "jid": "", "type": "WallInner", "xyz": xyz, "faces": [0, 1, 2, 0, 2, 3], "normal": [], "uv": []}


def _house(uid: str, rooms: list[tuple[str, str, list]]) -> dict:
    furniture, meshes, room_json, seen = [], [], [], set()
    for room_id, rtype, pieces in rooms:
        floor, wall = f"{room_id}-floor", f"{room_id}-wall"
        meshes += [_floor_mesh(floor, 3.5), _wall_mesh(wall, 3.5)]
        children = [{"ref": floor, "instanceid": "mesh/0", "pos": [0, 0, 0], "rot": [0, 0, 0, 1], "scale": [1, 1, 1]},
                    {"ref": wall, "instanceid": "mesh/1", "pos": [0, 0, 0], "rot": [0, 0, 0, 1], "scale": [1, 1, 1]}]
        for k, (fuid, jid, pos, rot, scale) in enumerate(pieces):
            if fuid not in seen:
                seen.add(fuid)
                furniture.append({"uid": fuid, "jid": jid, "title": fuid, "valid": fuid != "f-invalid"})
            children.append({"ref": fuid, "instanceid": f"furniture/{k}", "pos": pos, "rot": rot, "scale": scale})
        room_json.append({"type": rtype, "instanceid": room_id, "children": children})
    return {"uid": uid, "furniture": furniture, "mesh": meshes, "scene": {"room": room_json}}


def build_front3d_fixture(root: Path) -> tuple[Path, Path]:
    """Write the fixture under ``root``; returns (front_dir, future_dir)."""
    front, future = root / "3D-FRONT", root / "3D-FUTURE-model"
    front.mkdir(parents=True, exist_ok=True)
    _model(future / "jid-table", (1.2, 0.75, 0.8), (180, 120, 60))
    _model(future / "jid-cabinet", (0.5, 1.2, 0.45), (60, 120, 200))
    _model(future / "jid-box", (0.45, 0.45, 0.45), (200, 60, 60))
    bedroom = [("f-bed", "jid-table", [0.0, 0.0, 0.0], [0, 0, 0, 1], [1, 1, 1])]
    house_a = _house("house_a", [("LivingRoom-1", "LivingRoom", LIVING), ("Bedroom-2", "Bedroom", bedroom)])
    house_b = _house("house_b", [("LivingRoom-1", "LivingRoom", LIVING)])
    (front / "house_a.json").write_text(json.dumps(house_a))
    (front / "house_b.json").write_text(json.dumps(house_b))
    return front, future
