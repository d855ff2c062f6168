"""3D-FRONT (house JSONs) + 3D-FUTURE (furniture models) as a scene source for the data engine.

Rooms become scenes in the engine's scene-spec format (docs/SCENE_SPEC.md, ``source: "3d-front"``);
rendering, voxelisation, shards, resume and Ray come from the same runner as the random engine.
"""

from datagen.front3d.house import Front3DFormatError, House, load_house
from datagen.front3d.source import Front3DSource

__all__ = ["Front3DFormatError", "Front3DSource", "House", "load_house"]
