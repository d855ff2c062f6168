"""Cleaning rules for 3D-FRONT rooms, each counted so `dataset.json` says what was dropped and why.

Rules (applied in this order):
- ``invalid_furniture``: the house marks the piece invalid or it has no jid;
- ``missing_model``: ``<future-dir>/<jid>/raw_model.obj`` does not exist;
- ``absurd_scale``: a scale component not finite, <= ``min_scale`` or >= ``max_scale``;
- ``too_few_furniture`` (per room): fewer than ``min_furniture`` pieces left;
- ``duplicate_room``: the same furniture set at the same poses was already seen (3D-FRONT repeats
  rooms across house files).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datagen.front3d.house import House, Room, RoomChild

RULES = ("invalid_furniture", "missing_model", "absurd_scale", "too_few_furniture", "duplicate_room")


@dataclass(frozen=True)
class CleaningConfig:
    min_furniture: int = 2
    min_scale: float = 0.05
    max_scale: float = 10.0


@dataclass(frozen=True)
class KeptFurniture:
    child: RoomChild
    jid: str
    model_path: Path
    category: str


@dataclass
class CleaningReport:
    """Counts per rule: furniture pieces for per-piece rules, rooms for per-room rules."""

    counts: Counter = field(default_factory=Counter)
    houses: int = 0
    rooms_seen: int = 0
    rooms_kept: int = 0

    def as_dict(self) -> dict:
        return {
            "houses": self.houses,
            "rooms_seen": self.rooms_seen,
            "rooms_kept": self.rooms_kept,
            "dropped": {rule: int(self.counts.get(rule, 0)) for rule in RULES},
        }


def model_path(future_dir: Path, jid: str) -> Path:
    return Path(future_dir) / jid / "raw_model.obj"


def _scale_ok(scale, cfg: CleaningConfig) -> bool:
    return all(math.isfinite(s) and cfg.min_scale < s < cfg.max_scale for s in scale)


def clean_room(house: House, room: Room, future_dir: Path, cfg: CleaningConfig, report: CleaningReport) -> list[KeptFurniture]:
    """The room's usable furniture; every dropped piece is counted in ``report``."""
    kept: list[KeptFurniture] = []
    for child in room.children:
        furn = house.furniture.get(child.ref)
        if furn is None:
            continue  # architecture mesh or something else: not furniture
        if not furn.valid:
            report.counts["invalid_furniture"] += 1
            continue
        path = model_path(future_dir, furn.jid)
        if not path.is_file():
            report.counts["missing_model"] += 1
            continue
        if not _scale_ok(child.scale, cfg):
            report.counts["absurd_scale"] += 1
            continue
        kept.append(KeptFurniture(child=child, jid=furn.jid, model_path=path, category=furn.category))
    return kept


def room_signature(kept: list[KeptFurniture]) -> str:
    """Identity of a room's content: sorted (jid, pose rounded to 1 mm / 1e-3)."""
    items = sorted(
        (k.jid, tuple(round(v, 3) for v in (*k.child.pos, *k.child.rot_xyzw, *k.child.scale))) for k in kept
    )
    return hashlib.sha256(repr(items).encode()).hexdigest()
