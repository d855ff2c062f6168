"""`Front3DSource`: 3D-FRONT rooms as scene specs for the engine's runner.

The room index is built once, in the driver, by scanning house files in sorted order and applying
the cleaning rules; it is small and travels with the source to Ray workers, where ``spec(index)``
loads the furniture meshes, places them in the z-up world and picks cameras. Everything is a pure
function of (house files, model files, dataset seed, index), so a room can be re-made alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from assets_manifest.mesh_io import file_sha256
from datagen.errors import SceneFailure
from datagen.front3d.cameras import RoomCameraConfig, sample_room_cameras
from datagen.front3d.cleaning import CleaningConfig, CleaningReport, KeptFurniture, clean_room, room_signature
from datagen.front3d.house import Front3DFormatError, House, load_house
from datagen.front3d.placement import child_to_world, front_points_to_world
from datagen.front3d.split import split_of, write_split_manifest
from datagen.ids import scene_id, scene_rng, scene_seed
from iscene_core import space

log = logging.getLogger(__name__)

RELATION_GAP = 0.0  # a relation is listed only where it holds strictly in the boxes
ON_TOP_TOLERANCE = 0.02  # metres between a box top and the box resting on it


@dataclass(frozen=True)
class RoomEntry:
    house_path: str
    house_id: str
    room_id: str
    room_type: str
    furniture: tuple[KeptFurniture, ...]
    floor_uids: tuple[str, ...]
    wall_uids: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.house_id}/{self.room_id}"


def _atomic_export(mesh: trimesh.Trimesh, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    mesh.export(tmp, file_type="obj")
    os.replace(tmp, path)


def _relations(aabbs: np.ndarray) -> list[dict]:
    """Every pairwise relation that holds strictly in the world boxes (+X right, +Y behind)."""
    rels = []
    n = len(aabbs)
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            (alo, ahi), (blo, bhi) = aabbs[a], aabbs[b]
            subj, obj = a + 1, b + 1
            if ahi[0] < blo[0] - RELATION_GAP:
                rels.append({"subject": subj, "relation": "left_of", "object": obj})
            if alo[0] > bhi[0] + RELATION_GAP:
                rels.append({"subject": subj, "relation": "right_of", "object": obj})
            if ahi[1] < blo[1] - RELATION_GAP:
                rels.append({"subject": subj, "relation": "in_front_of", "object": obj})
            if alo[1] > bhi[1] + RELATION_GAP:
                rels.append({"subject": subj, "relation": "behind", "object": obj})
            footprint_inside = np.all(alo[:2] >= blo[:2]) and np.all(ahi[:2] <= bhi[:2])
            if footprint_inside and abs(alo[2] - bhi[2]) <= ON_TOP_TOLERANCE:
                rels.append({"subject": subj, "relation": "on_top_of", "object": obj})
    return rels


class Front3DSource:
    """Scene source over a 3D-FRONT folder (house JSONs) and a 3D-FUTURE-model folder.

    ``on_missing_model``: ``"count"`` (default) drops a piece whose model folder is missing and
    counts it under ``missing_model``; ``"error"`` stops with a message naming the folder.
    ``on_bad_house``: ``"error"`` (default) stops on a malformed house JSON, naming the file;
    ``"skip"`` records it in ``dataset_info()['bad_houses']`` and goes on.
    """

    source_name = "3d-front"

    def __init__(
        self,
        front_dir: str | Path,
        future_dir: str | Path,
        config=None,
        dataset_seed: int = 0,
        *,
        cache_dir: str | Path | None = None,
        max_scenes: int | None = None,
        cleaning: CleaningConfig = CleaningConfig(),
        test_fraction: float = 0.1,
        include_walls: bool = False,
        on_missing_model: str = "count",
        on_bad_house: str = "error",
    ):
        self.front_dir, self.future_dir = Path(front_dir), Path(future_dir)
        if not self.front_dir.is_dir():
            raise FileNotFoundError(f"--front-dir {self.front_dir}: not a folder of 3D-FRONT house JSONs")
        if not self.future_dir.is_dir():
            raise FileNotFoundError(f"--future-dir {self.future_dir}: not a 3D-FUTURE-model folder")
        if on_missing_model not in ("count", "error") or on_bad_house not in ("error", "skip"):
            raise ValueError("on_missing_model must be count|error and on_bad_house error|skip")
        self.dataset_seed = int(dataset_seed)
        self.camera_cfg = RoomCameraConfig(
            width=int(getattr(config, "width", 518)), height=int(getattr(config, "height", 518))
        )
        self.views_per_scene = int(getattr(config, "views_per_scene", 4))
        self.cache_dir = Path(cache_dir) if cache_dir else self.front_dir.parent / ".iscene_front3d_cache"
        self.include_walls = include_walls
        self.test_fraction = test_fraction
        self.on_missing_model = on_missing_model
        self.on_bad_house = on_bad_house
        self.report = CleaningReport()
        self.bad_houses: list[dict] = []
        self.rooms: list[RoomEntry] = self._scan(cleaning, max_scenes)
        self._house_cache: dict[str, House] = {}

    # -- index ---------------------------------------------------------------------------------
    def _scan(self, cleaning: CleaningConfig, max_scenes: int | None) -> list[RoomEntry]:
        files = sorted(p for p in self.front_dir.rglob("*.json") if p.is_file())
        if not files:
            raise FileNotFoundError(f"--front-dir {self.front_dir}: no house .json files found")
        seen: set[str] = set()
        rooms: list[RoomEntry] = []
        for path in files:
            if max_scenes is not None and len(rooms) >= max_scenes:
                break
            try:
                house = load_house(path)
            except Front3DFormatError as exc:
                if self.on_bad_house == "error":
                    raise
                log.warning("skipping house: %s", exc)
                self.bad_houses.append({"file": str(path), "reason": str(exc)})
                continue
            self.report.houses += 1
            for room in house.rooms:
                if max_scenes is not None and len(rooms) >= max_scenes:
                    break
                self.report.rooms_seen += 1
                missing_before = self.report.counts["missing_model"]
                kept = clean_room(house, room, self.future_dir, cleaning, self.report)
                if self.on_missing_model == "error" and self.report.counts["missing_model"] > missing_before:
                    missing = [
                        str(self.future_dir / house.furniture[c.ref].jid)
                        for c in room.children
                        if c.ref in house.furniture and house.furniture[c.ref].valid
                        and not (self.future_dir / house.furniture[c.ref].jid / "raw_model.obj").is_file()
                    ]
                    raise FileNotFoundError(f"{path}: model folder missing: {missing[0]} (no raw_model.obj)")
                if len(kept) < cleaning.min_furniture:
                    self.report.counts["too_few_furniture"] += 1
                    continue
                sig = room_signature(kept)
                if sig in seen:
                    self.report.counts["duplicate_room"] += 1
                    continue
                seen.add(sig)
                refs = {c.ref for c in room.children}
                floors = tuple(u for u, m in house.meshes.items() if u in refs and "floor" in m.type.lower())
                walls = tuple(u for u, m in house.meshes.items() if u in refs and "wall" in m.type.lower())
                rooms.append(RoomEntry(str(path), house.house_id, room.room_id, room.type, tuple(kept), floors, walls))
        self.report.rooms_kept = len(rooms)
        if self.report.houses and not rooms and self.report.counts["missing_model"]:
            raise FileNotFoundError(
                f"--future-dir {self.future_dir}: none of the referenced furniture models exist there "
                f"({self.report.counts['missing_model']} missing); is it the 3D-FUTURE-model folder?"
            )
        return rooms

    def num_scenes(self) -> int:
        return len(self.rooms)

    def split_rows(self) -> list[dict]:
        return [
            {"room_key": r.key, "scene_id": scene_id(i), "split": split_of(r.key, self.test_fraction)}
            for i, r in enumerate(self.rooms)
        ]

    def dataset_info(self, out_dir: str | Path | None = None) -> dict:
        """Cleaning counts (for dataset.json) and, given ``out_dir``, the split manifest written there."""
        info = {"cleaning": self.report.as_dict(), "bad_houses": list(self.bad_houses), "bad_house_count": len(self.bad_houses)}
        rows = self.split_rows()
        info["split_counts"] = {s: sum(r["split"] == s for r in rows) for s in ("train", "test")}
        if out_dir is not None:
            info["split_manifest"] = str(write_split_manifest(rows, Path(out_dir) / "split.jsonl"))
        return info

    # -- specs ---------------------------------------------------------------------------------
    def _house(self, path: str) -> House:
        if path not in self._house_cache:
            self._house_cache = {path: load_house(path)}  # keep one: rooms are visited house by house
        return self._house_cache[path]

    def _background(self, room: RoomEntry, house: House) -> tuple[list[dict], tuple[np.ndarray, np.ndarray] | None]:
        """Write the room's floor (and walls) once as world-frame OBJs; return spec entries + floor box."""
        entries, floor_pts = [], []
        kinds = [("floor", room.floor_uids)] + ([("wall", room.wall_uids)] if self.include_walls else [])
        for kind, uids in kinds:
            meshes = [house.meshes[u] for u in uids if len(house.meshes[u].faces)]
            if not meshes:
                continue
            verts = np.concatenate([front_points_to_world(m.vertices) for m in meshes])
            offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
            faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)])
            path = self.cache_dir / room.house_id / f"{room.room_id}_{kind}.obj"
            if not path.is_file():
                _atomic_export(trimesh.Trimesh(verts, faces, process=False), path)
            entries.append({"kind": kind, "path": str(path.resolve()), "object_to_world": np.eye(4).tolist()})
            if kind == "floor":
                floor_pts.append(verts[:, :2])
        if not floor_pts:
            return entries, None
        pts = np.concatenate(floor_pts)
        return entries, (pts.min(axis=0), pts.max(axis=0))

    def spec(self, index: int) -> dict:
        """Scene spec of room ``index``; raises SceneFailure for a room that cannot be made."""
        from assets_manifest import load_mesh

        if not 0 <= index < len(self.rooms):
            raise IndexError(f"3D-FRONT scene index {index} outside [0, {len(self.rooms)})")
        room = self.rooms[index]
        try:
            house = self._house(room.house_path)
        except Front3DFormatError as exc:
            raise SceneFailure("front3d-parse", str(exc)) from None
        instances, meshes_world = [], []
        for i, kept in enumerate(room.furniture, start=1):
            try:
                mesh = load_mesh(kept.model_path)
            except Exception as exc:  # one bad model costs this room only
                raise SceneFailure("front3d-model", f"{kept.model_path}: {exc}") from None
            o2w = child_to_world(kept.child.pos, kept.child.rot_xyzw, kept.child.scale)
            world = space.transform_points(o2w, mesh.vertices)
            meshes_world.append(trimesh.Trimesh(world, mesh.faces, process=False))
            instances.append(
                {
                    "index": i,
                    "uid": kept.jid,
                    "asset_source": "3d-future",
                    "path": str(kept.model_path.resolve()),
                    "sha256": file_sha256(kept.model_path),
                    "object_to_world": o2w.tolist(),
                    "world_aabb": [world.min(axis=0).tolist(), world.max(axis=0).tolist()],
                    "support": None,
                }
            )
        aabbs = np.array([inst["world_aabb"] for inst in instances])
        background, floor_box = self._background(room, house)
        if floor_box is None:
            floor_box = (aabbs[:, 0, :2].min(axis=0) - 1.0, aabbs[:, 1, :2].max(axis=0) + 1.0)
        rng = scene_rng(self.dataset_seed, index, "front3d-camera")
        cameras = sample_room_cameras(floor_box, aabbs, meshes_world, self.views_per_scene, rng, self.camera_cfg)
        if not cameras:
            raise SceneFailure("camera", f"room {room.key}: no camera inside the room frames all {len(instances)} pieces")
        return {
            "format": "iscene-scene/1",
            "scene_id": scene_id(index),
            "seed": scene_seed(self.dataset_seed, index),
            "source": "3d-front",
            "room": {"house_id": room.house_id, "room_id": room.room_id, "type": room.room_type,
                     "split": split_of(room.key, self.test_fraction)},
            "instances": instances,
            "relations": _relations(aabbs),
            "cameras": cameras,
            "background": background,
            "floor": False,
        }
