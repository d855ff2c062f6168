"""One catalog row: what later stages need to use an asset fast and correctly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

MANIFEST_VERSION = "iscene-assets/1"


@dataclass(frozen=True)
class AssetRecord:
    """An ingested, validated asset.

    ``normalization`` (4x4) maps the vertices exactly as ``assets_manifest.load_mesh(path)`` returns
    them into the canonical asset frame: +Z up, bounding box centred at x = y = 0, resting at
    min z = 0, largest side 1. ``collision_proxy`` is a PLY in that canonical frame.
    """

    uid: str
    source: str
    path: str
    sha256: str
    faces: int
    vertices: int
    extents: tuple[float, float, float]
    normalization: list[list[float]]
    collision_proxy: str
    proxy_faces: int
    watertight: bool
    has_texture: bool
    has_material: bool
    up_axis: str
    unit_guess: str
    canonical_extents: tuple[float, float, float]
    manifest_version: str = MANIFEST_VERSION
    meta: dict[str, Any] = field(default_factory=dict)
    # resting poses in the canonical frame: [{"rotation": 3x3, "probability": p}], most probable
    # first (assets_manifest.stable_poses); empty in catalogs built before they existed
    stable_poses: list[dict] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["extents"] = list(self.extents)
        row["canonical_extents"] = list(self.canonical_extents)
        import json

        row["meta"] = json.dumps(self.meta, sort_keys=True)
        row["stable_poses"] = json.dumps(self.stable_poses)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "AssetRecord":
        import json

        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in row.items() if k in names}
        kw["extents"] = tuple(float(v) for v in kw["extents"])
        kw["canonical_extents"] = tuple(float(v) for v in kw["canonical_extents"])
        kw["normalization"] = [[float(v) for v in r] for r in kw["normalization"]]
        meta = kw.get("meta") or "{}"
        kw["meta"] = json.loads(meta) if isinstance(meta, str) else dict(meta)
        poses = kw.get("stable_poses") or "[]"
        kw["stable_poses"] = json.loads(poses) if isinstance(poses, str) else list(poses)
        return cls(**kw)
