"""Materials as authored: our render of a textured asset looks like Blender's own import of the file.

The reference is built without the project's import code: the file goes through Blender's importer
with its default options (its own axis conversion), under an empty carrying the same placement, in
the very same world, floor, lights and camera. The old simple-material path is measured against the
same reference in the same test, so "agrees" is relative to what the change fixed, not only a number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datagen.render.geometry_match import compare_triangles

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
if not ASSETS.is_dir():
    ASSETS = Path("/work/shared/assets")

Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # (x, y, z) -> (x, -z, y)


def _asset(name: str) -> Path:
    path = ASSETS / name
    if not path.is_file():
        pytest.skip(f"shared asset {path} not available")
    return path


# ---------------------------------------------------------------- geometry check (no Blender)


def _box_triangles() -> np.ndarray:
    import trimesh

    box = trimesh.creation.box((1.0, 2.0, 0.5))
    return np.asarray(box.vertices)[box.faces]


def test_same_surface_in_any_order_matches():
    tris = _box_triangles()
    rng = np.random.default_rng(0)
    shuffled = tris[rng.permutation(len(tris))][:, [2, 0, 1]]  # other face order, rotated corners
    degenerate = np.repeat(tris[:1, :1], 3, axis=1)  # a point: importers drop these
    assert compare_triangles(tris, np.concatenate([shuffled, shuffled[:2], degenerate])) is None


def test_moved_missing_or_extra_triangles_are_reported():
    tris = _box_triangles()
    tol = 1e-4 * 2.0
    moved = tris.copy()
    moved[3, 1] += (0.0, 0.0, 20 * tol)
    assert compare_triangles(tris, moved).startswith("geometry differs: 1 of 12 catalog triangles not in the import")
    assert compare_triangles(tris, tris[1:]).startswith("geometry differs: 1 of 12 catalog triangles")
    inner = tris[:2] * 0.5  # extra triangles inside the box: same bounds, not the same surface
    assert compare_triangles(tris, np.concatenate([tris, inner])).startswith("geometry differs: 2 of 14 imported")
    assert "bounds" in compare_triangles(tris, tris * 1.01)
    within = tris + 0.2 * tol  # below the tolerance: the same surface
    assert compare_triangles(tris, within) is None


# ---------------------------------------------------------------- renders (Blender)


def _spec(path: Path, seed: int = 5, size: int = 96) -> dict:
    """One asset, Y-up file laid Z-up and scaled to 1 unit, on the floor; a fixed camera."""
    from assets_manifest import load_mesh
    from datagen.cameras import intrinsics
    from iscene_core.space import look_at_world_to_cam

    tm = load_mesh(path)
    v = np.asarray(tm.vertices)[np.unique(tm.faces)]
    lo, hi = v.min(axis=0), v.max(axis=0)
    s = 1.0 / float(np.max(hi - lo))
    place = np.eye(4)
    place[:3, :3] *= s
    z_up = Y_UP_TO_Z_UP @ place
    corners = (np.stack([lo, hi]) * s) @ Y_UP_TO_Z_UP[:3, :3].T  # an axis permutation: the box stays a box
    lo_w, hi_w = corners.min(axis=0), corners.max(axis=0)
    z_up[:3, 3] = (-0.5 * (lo_w[0] + hi_w[0]), -0.5 * (lo_w[1] + hi_w[1]), -lo_w[2])
    aabb = [(lo_w + z_up[:3, 3]).tolist(), (hi_w + z_up[:3, 3]).tolist()]
    eye = np.array([1.3, -1.6, 1.2])
    target = np.array([0.0, 0.0, 0.5 * (hi_w[2] - lo_w[2])])
    cam = {"K": intrinsics(40.0, size, size).tolist(), "world_to_cam": look_at_world_to_cam(eye, target).tolist(),
           "width": size, "height": size}
    return {"scene_id": "materials", "seed": seed, "floor": True, "cameras": [cam],
            "instances": [{"index": 1, "sha256": f"test-{path}", "path": str(path), "uid": path.stem,
                           "object_to_world": z_up.tolist(), "world_aabb": aabb, "support": None}]}


SETTINGS = {"samples": 8, "denoise": False, "threads": 2, "device": "cpu"}


def _blender_reference(spec: dict) -> tuple[dict, dict]:
    """Blender's own import of the file (default options) in our world/lights/camera, placed by the spec.

    Rendered with our seed and with another one: the second measures the sampling noise floor.
    """
    import bpy
    import mathutils

    from datagen.render import blender_scene as B

    B.build_scene(spec, SETTINGS)  # world, floor, lights exactly as ours
    for ob in [o for o in bpy.data.objects if o.name.startswith("inst_")]:
        bpy.data.objects.remove(ob, do_unlink=True)
    inst = spec["instances"][0]
    before = set(bpy.data.objects)
    if inst["path"].endswith(".obj"):
        bpy.ops.wm.obj_import(filepath=inst["path"])  # default axes: Y-up file -> Z-up
    else:
        bpy.ops.import_scene.gltf(filepath=inst["path"])  # glTF is Y-up; Blender makes it Z-up
    new = [o for o in bpy.data.objects if o not in before]
    holder = bpy.data.objects.new("reference", None)
    bpy.context.scene.collection.objects.link(holder)
    # both importers map file (x, y, z) to Blender (x, -z, y): undo it, then place as the spec says
    holder.matrix_world = mathutils.Matrix((np.asarray(inst["object_to_world"]) @ Y_UP_TO_Z_UP.T).tolist())
    for ob in new:
        if ob.parent is None:
            ob.parent = holder
        if ob.type == "MESH":
            ob.pass_index = 1
    bpy.context.view_layer.update()
    return B.render_view(spec["cameras"][0], 0), B.render_view(spec["cameras"][0], 1)


def _masked_mad(a: dict, b: dict) -> tuple[float, float]:
    """Mean |RGB difference| (0-255) over pixels either render gives to the asset, and the masks' IoU."""
    ma, mb = a["inst"] == 1, b["inst"] == 1
    union = ma | mb
    assert union.sum() > 500, "the asset should cover a good part of the view"
    diff = np.abs(a["rgb"].astype(np.float64) - b["rgb"].astype(np.float64)).mean(axis=-1)
    return float(diff[union].mean()), float((ma & mb).sum() / union.sum())


@pytest.mark.blender
@pytest.mark.slow
@pytest.mark.parametrize("name", ["WickerChair.glb", "fuze.obj", "CesiumMilkTruck.glb"])
def test_authored_render_matches_blenders_own_import(name):
    """WickerChair: base colour with alpha, normal and ORM maps; fuze: a textured OBJ + MTL;
    CesiumMilkTruck: a node hierarchy with animated wheels (Blender's import shows frame 1)."""
    from datagen.render import blender_scene as B

    spec = _spec(_asset(name))
    ref, ref_other_seed = _blender_reference(spec)
    statuses = B.build_scene(spec, {**SETTINGS, "materials": "authored"})
    ours = B.render_view(spec["cameras"][0], 0)
    assert statuses == ["authored"]
    assert B.build_scene(spec, {**SETTINGS, "materials": "simple"}) == ["simple"]
    old = B.render_view(spec["cameras"][0], 0)
    mad, iou = _masked_mad(ours, ref)
    mad_old, _ = _masked_mad(old, ref)
    noise, _ = _masked_mad(ref_other_seed, ref)
    print(f"{name}: masked mean |diff| to Blender's import (0-255): authored {mad:.2f}, simple {mad_old:.2f}, "
          f"Blender's import with another seed {noise:.2f}; mask IoU {iou:.4f}")
    assert iou > 0.98
    assert mad <= 1.25 * noise + 0.5  # as close as the reference is to itself: sampling noise only
    assert mad_old > 4.0 * max(mad, 1.0)  # and the old path was clearly worse


@pytest.mark.blender
@pytest.mark.parametrize("name", ["Fox.glb", "CesiumMilkTruck.glb"])
def test_skinned_and_animated_files_keep_their_materials(name):
    """Fox.glb is skinned (Blender posed it into another shape and added a bone-shape icosphere),
    CesiumMilkTruck's wheels are animated (at frame 1 they had turned): both fell back to the simple
    material. Baked at their rest geometry, the catalog's, they render as authored, textures loaded."""
    import bpy

    from datagen.render import blender_scene as B

    spec = _spec(_asset(name), size=64)
    frame = bpy.context.scene.frame_current
    assert B.build_scene(spec, {**SETTINGS, "samples": 2, "materials": "authored"}) == ["authored"]
    assert bpy.context.scene.frame_current == frame  # the bake does not move the scene's frame
    images = [n.image for ob in bpy.data.objects if ob.name.startswith("inst_") for m in ob.data.materials if m and m.node_tree
              for n in m.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None]
    assert images and all(tuple(im.size) != (0, 0) for im in images)
    out = B.render_view(spec["cameras"][0], 0)
    assert (out["inst"] == 1).sum() > 50


@pytest.mark.blender
def test_geometry_mismatch_falls_back_with_reason_and_still_renders():
    """DenseSphere.glb's quantised positions: trimesh reads them unscaled, so the catalog's bounds
    are 32767x Blender's. Another surface: the simple material, with the reason."""
    from datagen.render import blender_scene as B

    spec = _spec(_asset("DenseSphere.glb"), size=64)
    statuses = B.build_scene(spec, {**SETTINGS, "samples": 2, "materials": "authored"})
    assert len(statuses) == 1 and statuses[0].startswith("fallback: geometry differs: bounds"), statuses
    out = B.render_view(spec["cameras"][0], 0)
    assert (out["inst"] == 1).sum() > 50  # drawn with the catalog's triangles and the simple material
    with pytest.raises(ValueError, match="materials must be one of"):
        B.build_scene(spec, {**SETTINGS, "materials": "fancy"})


@pytest.mark.blender
def test_obj_polygons_split_as_the_catalog_splits_them():
    """rabbit.obj's 16-gons are not planar: split by Blender's own rule they made another surface
    (78 of 1252 triangles differed) and the asset lost its material; fanned from their first corner,
    as trimesh's OBJ loader does, the import is the catalog's surface and keeps its material."""
    from assets_manifest import load_mesh
    from datagen.render import authored

    path = _asset("rabbit.obj")
    assert sum(1 for line in path.read_text().splitlines() if line.startswith("f ") and len(line.split()) > 5) > 0
    meshes, status = authored.authored_meshes("test-rabbit-fan", str(path), load_mesh(str(path)))
    assert status == "authored", status
    assert len(np.concatenate([authored._triangles(me) for me in meshes])) == 1252


@pytest.mark.blender
def test_missing_texture_or_no_material_falls_back(tmp_path):
    """Same geometry, but the import would not look as authored: magenta for a lost texture, grey without materials."""
    import shutil

    from datagen.render import blender_scene as B

    for name in ("fuze.obj", "fuze.obj.mtl"):  # the OBJ and its MTL, without the texture they name
        shutil.copy(_asset(name), tmp_path / name)
    lost = B.build_scene(_spec(tmp_path / "fuze.obj", size=32), {**SETTINGS, "samples": 1})
    assert lost[0].startswith("fallback: texture") and "could not be loaded" in lost[0], lost
    bare = B.build_scene(_spec(_asset("fandisk.obj"), size=32), {**SETTINGS, "samples": 1})
    assert bare == ["fallback: the file defines no materials"]


@pytest.mark.blender
@pytest.mark.slow
def test_worker_reports_material_status_per_instance():
    """Through the worker process: each view carries the status of every instance, in spec order."""
    from datagen.render import BlenderWorker, RenderSettings

    a, b, c = (_spec(_asset(n), size=48) for n in ("Duck.glb", "rabbit.obj", "fandisk.obj"))
    shifted = []
    for k, other in ((2, b), (3, c)):
        inst = {**other["instances"][0], "index": k}
        inst["object_to_world"] = (np.asarray(inst["object_to_world"]) + np.array([[0, 0, 0, 1.5 * (k - 1)]] + [[0] * 4] * 3)).tolist()
        shifted.append(inst)
    spec = {**a, "instances": [a["instances"][0], *shifted]}
    with pytest.raises(ValueError, match="materials must be"):
        RenderSettings(materials="pbr")
    with BlenderWorker(RenderSettings(samples=1, denoise=False, threads=2, device="cpu")) as worker:
        views = worker.render(spec)
    # rabbit.obj has non-planar 16-gons: kept only because they are split as trimesh splits them (a fan)
    assert views[0]["materials"][:2] == ["authored", "authored"], views[0]["materials"]
    assert views[0]["materials"][2] == "fallback: the file defines no materials"
