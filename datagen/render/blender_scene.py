"""Inside the Blender process: build a scene from a spec, render each view, read the passes back.

Runs only in the worker process (it imports bpy). Geometry comes from the project's one loader
(``assets_manifest.load_mesh``) and is turned into Blender meshes directly, rather than through
Blender's importers, whose axis conversions (glTF Y-up -> Z-up) and decoders (e.g. quantised
Draco) differ from trimesh's: masks and voxels must come from the very same triangles.
Mesh datablocks are cached by sha256 and shared by linked duplicates across scenes; objects are
removed between scenes.

Per view: RGB (Cycles, linear EXR -> sRGB 8-bit through the Standard view transform), the
Object Index pass (instance id per pixel, not anti-aliased; floor and background 0) and the Depth
pass (planar camera z; background set to 0), all from one multilayer EXR.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
import numpy as np

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
    sc.view_settings.view_transform = "Standard"
    sc.view_settings.look = "None"
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


def _bpy_mesh(key: str, path: str, rng: np.random.Generator) -> bpy.types.Mesh:
    """Blender mesh from the project's loader (cached by sha256 across scenes in this worker)."""
    if key in _MESH_CACHE:
        return _MESH_CACHE[key]
    from assets_manifest import load_mesh

    tm = load_mesh(path)
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


def build_scene(spec: dict, settings: dict) -> None:
    """Objects, floor, background, lights and world for one scene spec."""
    rng = np.random.default_rng(int(spec.get("seed", 0)) + 7)
    reset_scene()
    sc = configure(settings)
    col = sc.collection
    for inst in spec["instances"]:
        me = _bpy_mesh(inst["sha256"], inst["path"], rng)
        ob = bpy.data.objects.new(f"inst_{inst['index']}", me)  # linked duplicate of the cached mesh
        ob.matrix_world = _matrix(inst["object_to_world"])
        ob.pass_index = int(inst["index"])
        col.objects.link(ob)
    for k, bg in enumerate(spec.get("background", [])):
        me = _bpy_mesh(f"bg_{bg['path']}", bg["path"], rng)
        ob = bpy.data.objects.new(f"bg_{k}", me)
        ob.matrix_world = _matrix(bg["object_to_world"])
        ob.pass_index = 0
        col.objects.link(ob)
    if spec.get("floor", False) and settings.get("floor", True):
        me = bpy.data.meshes.new("floor")
        s = 60.0
        me.from_pydata([(-s, -s, 0), (s, -s, 0), (s, s, 0), (-s, s, 0)], [], [(0, 1, 2, 3)])
        mat = bpy.data.materials.new("floor")
        mat.use_nodes = True
        bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
        bsdf.inputs["Base Color"].default_value = (*rng.uniform(0.05, 0.8, 3), 1.0)
        bsdf.inputs["Roughness"].default_value = float(rng.uniform(0.2, 1.0))
        me.materials.append(mat)
        ob = bpy.data.objects.new("floor", me)
        ob.pass_index = 0
        col.objects.link(ob)
    world = bpy.data.worlds.get("iscene") or bpy.data.worlds.new("iscene")
    world.use_nodes = True
    bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (*rng.uniform(0.3, 1.0, 3), 1.0)
    bg.inputs["Strength"].default_value = float(rng.uniform(0.3, 1.2))
    sc.world = world
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = float(rng.uniform(1.5, 5.0))
    sun_ob = bpy.data.objects.new("sun", sun)
    el, az = np.radians(rng.uniform(25, 80)), rng.uniform(0, 2 * np.pi)
    sun_ob.rotation_euler = (float(np.pi / 2 - el), 0.0, float(az))
    col.objects.link(sun_ob)


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
    return {
        "rgb": np.round(_srgb(rgb) * 255.0).astype(np.uint8),
        "inst": np.round(index).astype(np.uint16),
        "depth": depth,
    }
