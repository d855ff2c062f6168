"""Parse a 3D-FRONT house JSON into plain dataclasses (still in 3D-FRONT's y-up frame).

Only the fields the engine needs are read; anything malformed raises ``Front3DFormatError`` naming
the file and the field, so a user with thousands of houses can find the bad one at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class Front3DFormatError(ValueError):
    """A house JSON that cannot be read as 3D-FRONT (the message names the file)."""


@dataclass(frozen=True)
class Furniture:
    uid: str
    jid: str
    valid: bool
    title: str = ""
    category: str = ""


@dataclass(frozen=True)
class ArchMesh:
    """An architecture element (floor, wall, ceiling, ...) with y-up world vertices."""

    uid: str
    type: str
    vertices: np.ndarray  # (N, 3) float64, 3D-FRONT frame (y-up, metres)
    faces: np.ndarray  # (M, 3) int64


@dataclass(frozen=True)
class RoomChild:
    ref: str
    instance_id: str
    pos: tuple[float, float, float]
    rot_xyzw: tuple[float, float, float, float]
    scale: tuple[float, float, float]


@dataclass(frozen=True)
class Room:
    room_id: str
    type: str
    children: tuple[RoomChild, ...]


@dataclass
class House:
    house_id: str
    path: Path
    furniture: dict[str, Furniture] = field(default_factory=dict)
    meshes: dict[str, ArchMesh] = field(default_factory=dict)
    rooms: list[Room] = field(default_factory=list)


def _floats(value, n: int, what: str, path: Path) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise Front3DFormatError(f"{path}: {what} is not a list of numbers ({exc})") from None
    if len(out) != n:
        raise Front3DFormatError(f"{path}: {what} has {len(out)} values, expected {n}")
    return out


def _parse_mesh(entry: dict, path: Path) -> ArchMesh:
    uid = str(entry.get("uid", ""))
    try:
        xyz = np.asarray(entry["xyz"], dtype=np.float64)
        faces = np.asarray(entry["faces"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise Front3DFormatError(f"{path}: mesh {uid!r} has no usable xyz/faces ({exc})") from None
    if xyz.size % 3 or faces.size % 3:
        raise Front3DFormatError(f"{path}: mesh {uid!r} xyz/faces length is not a multiple of 3")
    vertices, tri = xyz.reshape(-1, 3), faces.reshape(-1, 3)
    if len(tri) and (tri.min() < 0 or tri.max() >= len(vertices)):
        raise Front3DFormatError(f"{path}: mesh {uid!r} has face indices outside its {len(vertices)} vertices")
    return ArchMesh(uid=uid, type=str(entry.get("type", "")), vertices=vertices, faces=tri)


def load_house(path: str | Path) -> House:
    """Read one house JSON. Raises ``Front3DFormatError`` (naming ``path``) when it is not 3D-FRONT.

    Any structural surprise deep inside a house (a string where a list is expected, nesting that
    exhausts the decoder) is that house's problem, reported as a format error, never a crash of a
    conversion that has thousands of other houses to read.
    """
    path = Path(path)
    try:
        return _load_house(path)
    except Front3DFormatError:
        raise
    except (RecursionError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise Front3DFormatError(f"{path}: not a readable 3D-FRONT house ({type(exc).__name__}: {exc})") from None


def _load_house(path: Path) -> House:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise Front3DFormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Front3DFormatError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict) or "scene" not in data or "furniture" not in data:
        raise Front3DFormatError(f"{path}: not a 3D-FRONT house (needs 'furniture' and 'scene')")
    house = House(house_id=str(data.get("uid") or path.stem), path=path)
    for entry in data.get("furniture") or []:
        if not isinstance(entry, dict) or "uid" not in entry:
            raise Front3DFormatError(f"{path}: furniture entry without uid")
        house.furniture[str(entry["uid"])] = Furniture(
            uid=str(entry["uid"]),
            jid=str(entry.get("jid") or ""),
            # Older releases have no 'valid' flag: a piece with a jid is usable unless marked otherwise.
            valid=bool(entry.get("valid", True)) and bool(entry.get("jid")),
            title=str(entry.get("title") or ""),
            category=str(entry.get("category") or ""),
        )
    for entry in data.get("mesh") or []:
        mesh = _parse_mesh(entry, path)
        house.meshes[mesh.uid] = mesh
    rooms = (data.get("scene") or {}).get("room")
    if not isinstance(rooms, list):
        raise Front3DFormatError(f"{path}: scene.room is missing or not a list")
    for r_i, room in enumerate(rooms):
        children = []
        for child in room.get("children") or []:
            if "ref" not in child:
                raise Front3DFormatError(f"{path}: room {r_i} has a child without 'ref'")
            children.append(
                RoomChild(
                    ref=str(child["ref"]),
                    instance_id=str(child.get("instanceid", "")),
                    pos=_floats(child.get("pos", (0, 0, 0)), 3, f"room {r_i} child pos", path),
                    rot_xyzw=_floats(child.get("rot", (0, 0, 0, 1)), 4, f"room {r_i} child rot", path),
                    scale=_floats(child.get("scale", (1, 1, 1)), 3, f"room {r_i} child scale", path),
                )
            )
        room_id = str(room.get("instanceid") or f"room{r_i}")
        house.rooms.append(Room(room_id=room_id, type=str(room.get("type", "")), children=tuple(children)))
    return house
