"""Materials as their authors made them: Blender's own glTF / OBJ import, kept only on the catalog's geometry.

Runs inside the Blender worker (imports bpy). The catalog mesh (``assets_manifest.load_mesh``)
carries base colour at best; Blender's importers bring the whole material (normal maps,
metallic/roughness, alpha, transmission, emission, custom normals, UVs, vertex colours). Masks,
depth checks and voxels are computed from the catalog's triangles, so the imported meshes are used
only when :func:`geometry_match.compare_triangles` finds them to be the same surface (after undoing
the importer's axis change); otherwise the caller falls back to the simple material and records why.

Imports go into a temporary collection; every datablock the importer made that is not kept (its
objects, original meshes, armatures, cameras, lights, actions, the collection) is removed at once.
The kept meshes are baked into the file's own frame (``object_to_world`` of a scene spec applies
to them unchanged), get a fake user and are cached per asset for the life of the worker process.
"""

from __future__ import annotations

import numpy as np

import bpy
import mathutils

from datagen.render.geometry_match import compare_triangles

AUTHORED_FORMATS = (".glb", ".gltf", ".obj")

# Blender's glTF importer turns glTF's Y-up into Z-up: (x, y, z) -> (x, -z, y). Its inverse takes
# Blender's world back to the file frame the catalog uses. The OBJ importer is told not to convert.
_GLTF_TO_FILE = mathutils.Matrix(((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, -1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))

# datablock kinds an importer may create; snapshotted before an import so that its leftovers can go
_KINDS = ("objects", "meshes", "materials", "images", "textures", "node_groups", "armatures", "cameras",
          "lights", "actions", "collections", "curves", "worlds")

_SHADING_TYPES = (bpy.types.Material, bpy.types.Image, bpy.types.Texture, bpy.types.NodeTree)

_CACHE: dict[str, tuple[list, str]] = {}


def _snapshot() -> dict[str, set[int]]:
    return {k: {b.as_pointer() for b in getattr(bpy.data, k)} for k in _KINDS}


def _created_since(before: dict[str, set[int]]) -> list:
    return [b for k in _KINDS for b in getattr(bpy.data, k) if b.as_pointer() not in before[k]]


def _run_importer(path: str, ext: str) -> None:
    """Blender's own importer with its defaults, except: OBJ axes keep the file's frame, and glTF
    armatures get no bone-shape meshes (an icosphere per skin that is part of no surface)."""
    if ext == ".obj":
        res = bpy.ops.wm.obj_import(filepath=path, forward_axis="Y", up_axis="Z")
    else:
        res = bpy.ops.import_scene.gltf(filepath=path, disable_bone_shape=True)
    if "FINISHED" not in res:
        raise RuntimeError(f"importer returned {sorted(res)}")


def _triangles(me) -> np.ndarray:
    me.calc_loop_triangles()
    co = np.empty(len(me.vertices) * 3, dtype=np.float64)
    me.vertices.foreach_get("co", co)
    tri = np.empty(len(me.loop_triangles) * 3, dtype=np.int64)
    me.loop_triangles.foreach_get("vertices", tri)
    return co.reshape(-1, 3)[tri.reshape(-1, 3)]


def _fan_ngons(me) -> None:
    """Split every polygon of ``me`` with more than four corners into a fan of triangles from its
    first corner.

    Why: trimesh's OBJ loader (the catalog's triangles) fans such polygons from their first corner,
    Blender's triangulation picks other diagonals, so a non-planar 16-gon (rabbit.obj) made two
    different surfaces and the asset lost its materials. Face splits keep the loops' UVs and normals.
    """
    import bmesh

    bm = bmesh.new()
    try:
        bm.from_mesh(me)
        ngons = [f for f in bm.faces if len(f.loops) > 4]
        for face in ngons:
            corners = [loop.vert for loop in face.loops]
            rest = face
            for i in range(2, len(corners) - 1):
                piece, _ = bmesh.utils.face_split(rest, corners[0], corners[i])
                if piece is None:
                    raise RuntimeError(f"could not split a {len(corners)}-corner polygon")
                # the remainder is the piece holding the next corner of the fan
                if corners[i + 1] in piece.verts:
                    rest = piece
        if ngons:
            bm.to_mesh(me)
            me.update()
    finally:
        bm.free()


def _import_baked(path: str, key: str, ext: str) -> tuple[list, list]:
    """Import ``path``; returns (meshes baked into the file frame, everything else the import made).

    The bake is the file's rest geometry, the one the catalog (trimesh) reads: skinned meshes keep
    their stored vertices (the armature modifier is dropped; trimesh does not skin, and Blender's
    pose of Fox.glb is a different shape) and animated nodes are evaluated at the glTF time 0, which
    the importer puts at frame 0 (at the scene's default frame 1 CesiumMilkTruck's wheels had turned
    by a 24th of a second). Other modifiers are applied; mesh objects hidden from render are skipped.
    The geometry check still decides whether the result is used.
    """
    sc = bpy.context.scene
    vl = bpy.context.view_layer
    before = _snapshot()
    coll = bpy.data.collections.new(f"_import_{key[:16]}")
    sc.collection.children.link(coll)
    saved_active = vl.active_layer_collection
    vl.active_layer_collection = vl.layer_collection.children[coll.name]
    baked: list = []
    saved_frame = sc.frame_current
    try:
        _run_importer(path, ext)
        created = [b for b in _created_since(before) if isinstance(b, bpy.types.Object)]
        for ob in created:
            if ob.type == "MESH" and ext == ".obj":
                # split as trimesh's OBJ loader does: larger polygons into a fan from their first corner,
                # quads on their first diagonal (keeps the file's normals)
                _fan_ngons(ob.data)
                tri = ob.modifiers.new("iscene_triangulate", "TRIANGULATE")
                tri.quad_method = "FIXED"
                tri.ngon_method = "BEAUTY"
                tri.min_vertices = 4
            if ob.type == "MESH":
                for mod in [m for m in ob.modifiers if m.type == "ARMATURE"]:
                    ob.modifiers.remove(mod)
        to_file = _GLTF_TO_FILE if ext in (".glb", ".gltf") else mathutils.Matrix.Identity(4)
        sc.frame_set(0)
        dg = bpy.context.evaluated_depsgraph_get()
        for ob in list(coll.all_objects):
            if ob.type != "MESH" or ob.hide_render:
                continue
            me = bpy.data.meshes.new_from_object(ob.evaluated_get(dg), preserve_all_data_layers=True, depsgraph=dg)
            me.name = f"auth_{key[:16]}_{len(baked)}"
            baked.append(me)
            m = to_file @ ob.matrix_world
            me.transform(m)
            if m.to_3x3().determinant() < 0:  # a mirroring transform baked in: keep faces outward
                me.flip_normals()
            me.update()
    finally:
        sc.frame_set(saved_frame)
        vl.active_layer_collection = saved_active
        keep = {m.as_pointer() for m in baked}
        leftovers = [b for b in _created_since(before) if b.as_pointer() not in keep]
    return baked, leftovers


def _material_problem(meshes: list) -> str | None:
    """Why the imported materials would not look as authored, or ``None``.

    A file without any material would render in Blender's default grey (the simple path gives it a
    colour, as before); a texture that is not there renders magenta.
    """
    mats = [m for me in meshes for m in me.materials if m is not None]
    if not mats:
        return "the file defines no materials"
    for mat in mats:
        for node in (mat.node_tree.nodes if mat.node_tree else []):
            img = getattr(node, "image", None)
            if node.type == "TEX_IMAGE" and img is not None and tuple(img.size) == (0, 0):
                return f"texture {img.filepath or img.name!r} of material {mat.name!r} could not be loaded"
    return None


def is_cached(key: str) -> bool:
    """Whether ``key`` was already imported (or refused) in this process: no catalog mesh needed."""
    return key in _CACHE


def authored_meshes(key: str, path: str, catalog_tm) -> tuple[list | None, str]:
    """(meshes to instance, ``"authored"``) or (``None``, ``"fallback: <reason>"``), cached per ``key``.

    ``catalog_tm`` is the catalog's trimesh of ``path`` (the renderer's triangles); the import is
    used only when its triangles equal those within ``geometry_match.REL_TOL`` of the asset's size.
    """
    if key in _CACHE:
        return _CACHE[key]
    ext = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if ext not in AUTHORED_FORMATS:
        result: tuple[list | None, str] = (None, f"fallback: {ext or 'no extension'} is not imported (authored materials come from glTF/OBJ)")
        _CACHE[key] = result
        return result
    baked: list = []
    leftovers: list = []
    try:
        baked, leftovers = _import_baked(path, key, ext)
    except Exception as exc:  # any importer failure costs the materials, never the scene
        reason = f"fallback: import failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
        result = (None, reason)
    else:
        if not baked:
            result = (None, "fallback: the import made no renderable mesh")
        else:
            catalog = np.asarray(catalog_tm.vertices, dtype=np.float64)[np.asarray(catalog_tm.faces)]
            imported = np.concatenate([_triangles(me) for me in baked])
            why = compare_triangles(catalog, imported) or _material_problem(baked)
            result = (baked, "authored") if why is None else (None, f"fallback: {why}")
    if result[0] is None:
        leftovers = leftovers + baked  # everything the import made goes
    else:
        for me in baked:
            me.use_fake_user = True
        # the kept meshes use the imported materials, images and node groups; unused ones become
        # orphans that reset_scene purges
        leftovers = [b for b in leftovers if not isinstance(b, _SHADING_TYPES)]
    if leftovers:
        bpy.data.batch_remove(leftovers)
    _CACHE[key] = result
    return result
