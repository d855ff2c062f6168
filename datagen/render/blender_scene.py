"""Inside the Blender process: build a scene from a spec, render each view, read the passes back.

Runs only in the worker process (it imports bpy). Geometry comes from the project's one loader
(``assets_manifest.load_mesh``) and is turned into Blender meshes directly, rather than through
Blender's importers, whose axis conversions (glTF Y-up -> Z-up) and decoders (e.g. quantised
Draco) differ from trimesh's: masks and voxels must come from the very same triangles.
Mesh datablocks are cached by sha256 and shared by linked duplicates across scenes; objects are
removed between scenes.

Materials (``settings["materials"]``): ``"authored"`` (default) renders glTF/OBJ assets with the
materials Blender's own importer builds, on the imported triangles, but only when those equal the
catalog's triangles (``authored.py``; docs/MATERIALS.md); anything else, and ``"simple"``, gets a
Principled BSDF from the trimesh visuals (base colour texture, vertex or flat colour).
``build_scene`` returns one status per instance: ``"authored"``, ``"simple"`` or
``"fallback: <reason>"``.

Per view: RGB (Cycles; 8-bit through Blender's AgX view transform by default, which rolls highlights
off instead of clipping them to white as the Standard transform did; ``settings["view_transform"]``
= "Standard" gives the old sRGB clip), the
Object Index pass (instance id per pixel, not anti-aliased; floor and background 0) and the Depth
pass (planar camera z; background set to 0), all from one multilayer EXR.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
import numpy as np

from datagen.render.worker import MATERIAL_MODES

_MESH_CACHE: dict[str, bpy.types.Mesh] = {}
_DEVICE_SET = False


def reset_scene() -> None:
    """Remove all objects (cached mesh datablocks survive through fake users) and orphan data."""
    for ob in list(bpy.data.objects):
        bpy.data.objects.remove(ob, do_unlink=True)
    for coll in (bpy.data.cameras, bpy.data.lights):
        for block in list(coll):
            coll.remove(block)
    for mat in list(bpy.data.materials):
        if mat.users == 0:
            bpy.data.materials.remove(mat)
    for img in list(bpy.data.images):
        if img.users == 0:
            bpy.data.images.remove(img)


def configure(settings: dict) -> bpy.types.Scene:
    """Render settings: Cycles on CPU, or CUDA/OptiX when a GPU is present and allowed."""
    global _DEVICE_SET
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    sc.cycles.samples = int(settings.get("samples", 32))
    sc.cycles.use_adaptive_sampling = True
    sc.cycles.use_denoising = bool(settings.get("denoise", True))
    if sc.cycles.use_denoising:
        sc.cycles.denoiser = "OPENIMAGEDENOISE"
    threads = int(settings.get("threads", 0))
    sc.render.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        sc.render.threads = threads
    sc.render.resolution_percentage = 100
    sc.render.film_transparent = False
    sc.view_settings.view_transform = str(settings.get("view_transform", "AgX"))
    sc.view_settings.look = "None"
    sc.view_settings.exposure = 0.0
    vl = sc.view_layers[0]
    vl.use_pass_z = True
    vl.use_pass_object_index = True
    s = sc.render.image_settings
    s.media_type = "MULTI_LAYER_IMAGE"
    s.file_format = "OPEN_EXR_MULTILAYER"
    s.color_depth = "32"
    s.exr_codec = "NONE"
    if not _DEVICE_SET:
        sc.cycles.device = "CPU"
        if settings.get("device", "auto") in ("auto", "gpu"):
            prefs = bpy.context.preferences.addons["cycles"].preferences
            for kind in ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI"):
                try:
                    prefs.compute_device_type = kind
                    prefs.get_devices()
                except TypeError:
                    continue
                gpus = [d for d in prefs.devices if d.type == kind]
                if gpus:
                    for d in prefs.devices:
                        d.use = d.type == kind
                    sc.cycles.device = "GPU"
                    break
        _DEVICE_SET = True
    return sc


def _material_for(mesh_tm, key: str, rng: np.random.Generator) -> bpy.types.Material:
    mat = bpy.data.materials.new(f"mat_{key[:16]}")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = float(rng.uniform(0.3, 0.9))
    visual = mesh_tm.visual
    image = None
    material = getattr(visual, "material", None)
    if visual.kind == "texture" and material is not None:
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is not None and getattr(visual, "uv", None) is not None:
        img = image.convert("RGBA")
        if max(img.size) > 1024:
            img.thumbnail((1024, 1024))
        arr = np.asarray(img, dtype=np.float32)[::-1] / 255.0  # Blender images are bottom-up
        bimg = bpy.data.images.new(f"tex_{key[:16]}", img.size[0], img.size[1], alpha=True)
        bimg.pixels.foreach_set(arr.ravel())
        bimg.pack()
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = bimg
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    elif visual.kind == "vertex":
        attr = nodes.new("ShaderNodeVertexColor")
        attr.layer_name = "Col"
        links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        colour = None
        if material is not None:
            colour = getattr(material, "baseColorFactor", None)
            if colour is None and getattr(material, "diffuse", None) is not None:
                colour = material.diffuse
        if colour is None and visual.kind == "face":
            colour = np.asarray(visual.face_colors).mean(axis=0)
        if colour is None:
            colour = (*rng.uniform(0.2, 0.9, 3), 1.0)
        colour = np.asarray(colour, dtype=np.float64)
        if colour.max() > 1.0:
            colour = colour / 255.0
        c = np.clip(colour[:3], 0, 1) ** 2.2  # sRGB-ish -> linear
        bsdf.inputs["Base Color"].default_value = (*c, 1.0)
    return mat


def _catalog_mesh(path: str):
    from assets_manifest import load_mesh

    return load_mesh(path)


def _asset_meshes(key: str, path: str, rng: np.random.Generator, mode: str) -> tuple[list, str]:
    """Blender meshes for one asset in its file frame, and the material status for the sample meta.

    ``authored``: Blender's import of the file when its triangles are the catalog's, else the simple
    mesh with ``"fallback: <reason>"``. Both paths are cached per asset key in this worker.
    """
    if mode not in MATERIAL_MODES:
        raise ValueError(f"materials must be one of {', '.join(MATERIAL_MODES)}, got {mode!r}")
    if mode == "simple":
        return [_bpy_mesh(key, path, rng)], "simple"
    from datagen.render import authored

    tm = None if authored.is_cached(key) else _catalog_mesh(path)  # loaded once, shared with a fallback
    meshes, status = authored.authored_meshes(key, path, tm)
    if meshes is not None:
        return meshes, status
    return [_bpy_mesh(key, path, rng, tm)], status


def _bpy_mesh(key: str, path: str, rng: np.random.Generator, tm=None) -> bpy.types.Mesh:
    """Blender mesh from the project's loader (cached by sha256 across scenes in this worker)."""
    if key in _MESH_CACHE:
        return _MESH_CACHE[key]
    if tm is None:
        tm = _catalog_mesh(path)
    verts = np.asarray(tm.vertices, dtype=np.float32)
    faces = np.asarray(tm.faces, dtype=np.int32)
    me = bpy.data.meshes.new(f"mesh_{key[:16]}")
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    uv = getattr(tm.visual, "uv", None)
    if uv is not None and len(uv) == len(verts):
        layer = me.uv_layers.new(name="UVMap")
        layer.data.foreach_set("uv", np.asarray(uv, dtype=np.float32)[faces].ravel())
    if tm.visual.kind == "vertex":
        cols = np.asarray(tm.visual.vertex_colors, dtype=np.float32) / 255.0
        attr = me.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
        attr.data.foreach_set("color", cols.ravel())
    me.update()
    me.validate(clean_customdata=False)
    me.materials.append(_material_for(tm, key, rng))
    me.use_fake_user = True
    _MESH_CACHE[key] = me
    return me


def _matrix(m) -> list:
    import mathutils

    return mathutils.Matrix([list(map(float, row)) for row in m])


def _link_parts(col, name: str, meshes: list, object_to_world, pass_index: int) -> None:
    """One object per part (linked duplicates of the cached meshes), all placed by ``object_to_world``;
    ``pass_index`` is the instance id of the mask (0: background)."""
    for j, me in enumerate(meshes):
        ob = bpy.data.objects.new(name + (f"_{j}" if j else ""), me)
        ob.matrix_world = _matrix(object_to_world)
        ob.pass_index = pass_index
        col.objects.link(ob)


def build_scene(spec: dict, settings: dict) -> list[str]:
    """Objects, floor, background, lights and world for one scene spec.

    Returns the material status of each instance, in ``spec["instances"]`` order.
    """
    rng = np.random.default_rng(int(spec.get("seed", 0)) + 7)  # simple materials of meshes new to this worker
    # floor and world draw from their own stream, as lights do: the stream above is consumed only
    # when a mesh is not cached yet, which would tie the floor's colour to the worker's history
    env_rng = np.random.default_rng([int(spec.get("seed", 0)), 13])
    reset_scene()
    sc = configure(settings)
    col = sc.collection
    mode = str(settings.get("materials", "authored"))
    statuses = []
    for inst in spec["instances"]:
        meshes, status = _asset_meshes(inst["sha256"], inst["path"], rng, mode)
        statuses.append(status)
        _link_parts(col, f"inst_{inst['index']}", meshes, inst["object_to_world"], int(inst["index"]))
    for k, bg in enumerate(spec.get("background", [])):
        meshes, _ = _asset_meshes(f"bg_{bg['path']}", bg["path"], rng, mode)
        _link_parts(col, f"bg_{k}", meshes, bg["object_to_world"], 0)
    if spec.get("floor", False) and settings.get("floor", True):
        me = bpy.data.meshes.new("floor")
        s = 60.0
        me.from_pydata([(-s, -s, 0), (s, -s, 0), (s, s, 0), (-s, s, 0)], [], [(0, 1, 2, 3)])
        mat = bpy.data.materials.new("floor")
        mat.use_nodes = True
        bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
        bsdf.inputs["Base Color"].default_value = (*env_rng.uniform(0.05, 0.8, 3), 1.0)
        bsdf.inputs["Roughness"].default_value = float(env_rng.uniform(0.2, 1.0))
        me.materials.append(mat)
        ob = bpy.data.objects.new("floor", me)
        ob.pass_index = 0
        col.objects.link(ob)
    world = bpy.data.worlds.get("iscene") or bpy.data.worlds.new("iscene")
    world.use_nodes = True
    bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (*env_rng.uniform(0.3, 1.0, 3), 1.0)
    bg.inputs["Strength"].default_value = float(env_rng.uniform(0.3, 1.2))
    sc.world = world
    # lights draw from their own stream: the material stream above depends on the mesh cache
    _add_lights(spec, np.random.default_rng([int(spec.get("seed", 0)), 11]), col)
    return statuses


def _scene_extent(spec: dict) -> tuple[np.ndarray, float]:
    boxes = np.array([inst["world_aabb"] for inst in spec["instances"]], dtype=np.float64).reshape(-1, 2, 3)
    lo, hi = boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0)
    return 0.5 * (lo + hi), float(max(np.max(hi - lo), 1e-3))


def _add_lights(spec: dict, rng: np.random.Generator, col) -> None:
    """Varied lighting: a sun, a large soft area light over the scene, or both.

    A sun's irradiance does not depend on the scene's size; an area light's does, so its power is
    set from the scene's extent for a chosen irradiance at the scene (E ~ P / (pi h^2) at height h):
    a 10 cm and a 3 m scene are lit alike.
    """
    kind = ("sun", "area", "sun+area")[int(rng.integers(3))]
    centre, extent = _scene_extent(spec)
    if "sun" in kind:
        sun = bpy.data.lights.new("sun", "SUN")
        sun.energy = float(rng.uniform(1.5, 5.0) * (0.6 if kind == "sun+area" else 1.0))
        sun.angle = float(np.radians(rng.uniform(0.5, 10.0)))  # soft to crisp shadows
        sun_ob = bpy.data.objects.new("sun", sun)
        el, az = np.radians(rng.uniform(25, 80)), rng.uniform(0, 2 * np.pi)
        sun_ob.rotation_euler = (float(np.pi / 2 - el), 0.0, float(az))
        col.objects.link(sun_ob)
    if "area" in kind:
        area = bpy.data.lights.new("area", "AREA")
        area.shape = "DISK"
        area.size = float(extent * rng.uniform(0.8, 2.0))
        h = float(extent * rng.uniform(1.5, 3.0))
        irradiance = float(rng.uniform(2.0, 6.0) * (0.5 if kind == "sun+area" else 1.0))
        area.energy = irradiance * np.pi * h * h
        ob = bpy.data.objects.new("area", area)
        off = rng.normal(size=2) * 0.5 * extent
        ob.location = (float(centre[0] + off[0]), float(centre[1] + off[1]), float(centre[2] + h))
        ob.rotation_euler = (0.0, 0.0, 0.0)  # an area light emits along its -Z: straight down
        col.objects.link(ob)


def set_camera(cam_spec: dict) -> None:
    """OpenCV K / world_to_cam -> a Blender camera (looks down -Z, +Y up)."""
    sc = bpy.context.scene
    K = np.asarray(cam_spec["K"], dtype=np.float64)
    w, h = int(cam_spec["width"]), int(cam_spec["height"])
    if abs(K[0, 0] - K[1, 1]) > 1e-6 * K[0, 0]:
        raise ValueError("only square pixels (fx == fy) are supported")
    if sc.camera is None:
        cam = bpy.data.cameras.new("cam")
        ob = bpy.data.objects.new("cam", cam)
        sc.collection.objects.link(ob)
        sc.camera = ob
    ob, cam = sc.camera, sc.camera.data
    sc.render.resolution_x, sc.render.resolution_y = w, h
    cam.sensor_fit = "HORIZONTAL" if w >= h else "VERTICAL"
    sensor = 36.0
    cam.sensor_width = cam.sensor_height = sensor
    big = max(w, h)
    cam.lens = K[0, 0] * sensor / big
    cam.shift_x = -(K[0, 2] - w / 2.0) / big
    cam.shift_y = (K[1, 2] - h / 2.0) / big
    cam.clip_start, cam.clip_end = 0.005, 1000.0
    c2w = np.linalg.inv(np.asarray(cam_spec["world_to_cam"], dtype=np.float64)) @ np.diag([1.0, -1.0, -1.0, 1.0])
    ob.matrix_world = _matrix(c2w)


def _srgb(linear: np.ndarray) -> np.ndarray:
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def _display_rgb(sc) -> np.ndarray:
    """The render result through the scene's view transform (Blender's own OCIO), as 8-bit RGB.

    The multilayer EXR holds scene-linear values; ``save_render`` to an 8-bit PNG applies the view
    transform (AgX). The image settings are switched for the save and restored.
    """
    from PIL import Image

    s = sc.render.image_settings
    saved = (s.media_type, s.file_format, s.color_depth, s.exr_codec)
    fd, png = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        s.media_type = "IMAGE"
        s.file_format = "PNG"
        s.color_mode = "RGB"
        s.color_depth = "8"
        bpy.data.images["Render Result"].save_render(png, scene=sc)
        with Image.open(png) as im:
            out = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    finally:
        s.media_type = saved[0]
        s.file_format = saved[1]
        s.color_depth = saved[2]
        s.exr_codec = saved[3]
        Path(png).unlink(missing_ok=True)
    return out


def render_view(cam_spec: dict, seed: int) -> dict:
    """Render the built scene from one camera; returns rgb uint8, inst uint16, depth float32."""
    import OpenEXR

    sc = bpy.context.scene
    set_camera(cam_spec)
    sc.cycles.seed = int(seed) % (2**31)
    fd, path = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        sc.render.filepath = path
        bpy.ops.render.render(write_still=True)
        channels = {}
        with OpenEXR.File(path, separate_channels=True) as f:
            for part in f.parts:
                for name, ch in part.channels.items():
                    channels[name.split(".", 1)[-1] if name.startswith("ViewLayer.") else name] = np.array(ch.pixels)
    finally:
        Path(path).unlink(missing_ok=True)
    rgb = np.stack([channels[f"Combined.{c}"] for c in "RGB"], axis=-1)
    depth = channels["Depth.Z"].astype(np.float32)
    index = channels["Object Index.X"]
    depth[(depth > 1e8) | ~np.isfinite(depth)] = 0.0
    if sc.view_settings.view_transform == "Standard":
        rgb8 = np.round(_srgb(rgb) * 255.0).astype(np.uint8)
    else:
        rgb8 = _display_rgb(sc)
    return {
        "rgb": rgb8,
        "inst": np.round(index).astype(np.uint16),
        "depth": depth,
    }
