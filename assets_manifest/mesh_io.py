"""The project's one geometry loader, and the validation every asset passes at ingest.

Layout, voxeliser and renderer all load geometry through ``load_mesh`` so that masks, voxels and
collision checks see the very same triangles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from iscene_core.shards.atomic import file_sha256  # noqa: F401  (re-exported: the project's one file-hash helper)

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
MAX_ABS_COORD = 1e6  # beyond this a file is corrupt or in absurd units
MIN_EXTENT = 1e-6


class AssetError(ValueError):
    """An asset that cannot be used; ``stage`` says where it failed (for rejects.jsonl)."""

    def __init__(self, path: str | Path, stage: str, reason: str):
        super().__init__(f"{path}: [{stage}] {reason}")
        self.path, self.stage, self.reason = str(path), stage, reason




def _sniff_format(path: Path) -> None:
    """Refuse files whose bytes contradict their extension (e.g. a JPEG renamed .glb)."""
    ext = path.suffix.lower()
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise AssetError(path, "read", "empty file (0 bytes)")
    if ext == ".glb" and head[:4] != b"glTF":
        raise AssetError(path, "read", "not a binary glTF (missing 'glTF' magic)")
    if ext == ".ply" and not head.startswith(b"ply"):
        raise AssetError(path, "read", "not a PLY file (missing 'ply' header)")
    if ext in (".obj", ".gltf", ".off") and b"\0" in head:
        raise AssetError(path, "read", f"binary content in a text {ext} file")


# glTF extensions that change how geometry bytes are stored and that trimesh cannot decode; a file
# that requires one is rejected by name instead of failing deep inside the loader
UNSUPPORTED_GLTF_EXTENSIONS = ("EXT_meshopt_compression", "KHR_meshopt_compression")


def _gltf_json(path: Path) -> dict | None:
    """The JSON chunk of a .glb or the whole .gltf; None when it cannot be parsed (the loader reports it)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            if path.suffix.lower() == ".gltf":
                return json.loads(f.read().decode("utf-8"))
            head = f.read(20)
            if len(head) < 20 or head[:4] != b"glTF":
                return None
            length, kind = struct.unpack("<II", head[12:20])
            if kind != 0x4E4F534A:  # 'JSON'
                return None
            return json.loads(f.read(length).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _unsupported_gltf_extensions(path: Path, required_only: bool) -> list[str]:
    doc = _gltf_json(path)
    if not isinstance(doc, dict):
        return []
    names = set(doc.get("extensionsRequired") or [])
    if not required_only:
        names |= set(doc.get("extensionsUsed") or [])
    return sorted(n for n in names if n in UNSUPPORTED_GLTF_EXTENSIONS)


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Load ``path`` as one triangle mesh (file axes and units kept) or raise ``AssetError``.

    This is ``trimesh.load(path, force="mesh", process=False)`` plus checks: known extension, bytes
    matching the extension, at least one face, finite coordinates of sane magnitude, non-degenerate
    extent. ``process=False`` keeps the file's vertices as written, so a NaN is reported as a NaN
    (processing would silently drop its faces); the surface is the same one that trimesh's default
    ``trimesh.load(path, force="mesh")`` returns (processing only merges duplicate vertices), so a
    transform in a scene spec applies to either.
    """
    path = Path(path)
    if path.suffix.lower() not in MESH_EXTENSIONS:
        raise AssetError(path, "read", f"unsupported extension {path.suffix!r} (expected one of {', '.join(MESH_EXTENSIONS)})")
    if not path.is_file():
        raise AssetError(path, "read", "file not found")
    _sniff_format(path)
    is_gltf = path.suffix.lower() in (".glb", ".gltf")
    if is_gltf and (required := _unsupported_gltf_extensions(path, required_only=True)):
        raise AssetError(path, "load", f"unsupported glTF extension {', '.join(required)} (compressed geometry trimesh cannot decode)")
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for corrupt files
        used = _unsupported_gltf_extensions(path, required_only=False) if is_gltf else []
        if used:  # an optional extension whose fallback data is missing: name it, not the symptom
            raise AssetError(path, "load", f"unsupported glTF extension {', '.join(used)} ({type(exc).__name__}: {exc})") from None
        raise AssetError(path, "load", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise AssetError(path, "load", f"no triangle geometry (got {type(mesh).__name__})")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise AssetError(path, "validate", "no faces")
    v = np.asarray(mesh.vertices)
    if not np.all(np.isfinite(v)):
        raise AssetError(path, "validate", "non-finite vertex coordinates (NaN or inf)")
    if np.abs(v).max() > MAX_ABS_COORD:
        raise AssetError(path, "validate", f"huge coordinates (|x| up to {np.abs(v).max():.3g} > {MAX_ABS_COORD:g})")
    used = v[np.unique(mesh.faces)]
    if np.ptp(used, axis=0).max() < MIN_EXTENT:
        raise AssetError(path, "validate", "degenerate geometry (zero extent)")
    return mesh
