"""3D-FRONT converter: parsing, z-up placement, cleaning counts, split, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from datagen.front3d import Front3DFormatError, Front3DSource, load_house
from datagen.front3d.placement import Y_UP_TO_Z_UP, child_to_world
from datagen.front3d.split import split_of
from tests.front3d_fixture import LIVING, build_front3d_fixture


@pytest.fixture()
def fixture_dirs(tmp_path):
    return build_front3d_fixture(tmp_path)


def test_y_up_to_z_up_is_a_proper_rotation():
    r = Y_UP_TO_Z_UP[:3, :3]
    np.testing.assert_allclose(r @ r.T, np.eye(3))
    assert np.isclose(np.linalg.det(r), 1.0)
    # 3D-FRONT's up (+y) becomes the engine's up (+z); its +z (towards the viewer) becomes -y
    np.testing.assert_allclose(r @ [0, 1, 0], [0, 0, 1])
    np.testing.assert_allclose(r @ [0, 0, 1], [0, -1, 0])


def test_placement_is_scale_then_rotate_then_translate():
    pos, rot, scale = [1.0, 2.0, 3.0], Rotation.from_euler("xyz", [10, 40, -25], degrees=True).as_quat(), [2.0, 0.5, 1.5]
    v = np.array([0.3, -0.2, 0.7])
    expected_front = Rotation.from_quat(rot).apply(v * scale) + pos
    expected = np.array([expected_front[0], -expected_front[2], expected_front[1]])
    m = child_to_world(pos, rot, scale)
    np.testing.assert_allclose(m[:3, :3] @ v + m[:3, 3], expected, atol=1e-12)


def test_parse_house(fixture_dirs):
    front, _ = fixture_dirs
    house = load_house(front / "house_a.json")
    assert [r.room_id for r in house.rooms] == ["LivingRoom-1", "Bedroom-2"]
    assert house.furniture["f-invalid"].valid is False
    child = [c for c in house.rooms[0].children if c.ref == "f-table"][0]
    np.testing.assert_allclose(child.rot_xyzw, LIVING[0][3])
    assert house.meshes["LivingRoom-1-floor"].faces.shape == (2, 3)


def test_cleaning_counts(fixture_dirs, tmp_path):
    front, future = fixture_dirs
    src = Front3DSource(front, future, None, 0, cache_dir=tmp_path / "cache")
    assert src.num_scenes() == 1  # house_b's living room duplicates house_a's
    info = src.dataset_info(tmp_path)
    assert info["cleaning"]["dropped"] == {
        "invalid_furniture": 2, "missing_model": 2, "absurd_scale": 2, "too_few_furniture": 1, "duplicate_room": 1,
    }
    assert info["cleaning"] == {**info["cleaning"], "houses": 2, "rooms_seen": 3, "rooms_kept": 1}
    rows = [json.loads(line) for line in open(info["split_manifest"])]
    assert rows == [{"room_key": "house_a/LivingRoom-1", "scene_id": "s00000000", "split": split_of("house_a/LivingRoom-1")}]
    assert [k.jid for k in src.rooms[0].furniture] == ["jid-table", "jid-cabinet", "jid-box"]


def test_split_is_deterministic_and_near_fraction():
    keys = [f"house{i}/room{j}" for i in range(400) for j in range(5)]
    splits = [split_of(k, 0.1) for k in keys]
    assert splits == [split_of(k, 0.1) for k in keys]
    frac = splits.count("test") / len(splits)
    assert 0.08 < frac < 0.12  # 2000 rooms: 3 sigma of a binomial(2000, 0.1) is about 0.02


def test_malformed_json_names_the_file(fixture_dirs, tmp_path):
    front, future = fixture_dirs
    bad = front / "house_c.json"
    bad.write_text('{"uid": "c", "furniture": [')
    with pytest.raises(Front3DFormatError, match="house_c.json"):
        Front3DSource(front, future, None, 0, cache_dir=tmp_path / "cache")
    src = Front3DSource(front, future, None, 0, cache_dir=tmp_path / "cache", on_bad_house="skip")
    assert src.num_scenes() == 1 and src.bad_houses[0]["file"].endswith("house_c.json")


def test_missing_model_folder_strict_names_the_folder(fixture_dirs, tmp_path):
    front, future = fixture_dirs
    with pytest.raises(FileNotFoundError, match="jid-does-not-exist"):
        Front3DSource(front, future, None, 0, cache_dir=tmp_path / "cache", on_missing_model="error")


def test_wrong_folders_give_clear_errors(fixture_dirs, tmp_path):
    front, future = fixture_dirs
    with pytest.raises(FileNotFoundError, match="--future-dir"):
        Front3DSource(front, tmp_path / "nope", None, 0)
    with pytest.raises(FileNotFoundError, match="--front-dir"):
        Front3DSource(tmp_path / "nope", future, None, 0)
    empty = tmp_path / "empty_future"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="none of the referenced furniture models"):
        Front3DSource(front, empty, None, 0, cache_dir=tmp_path / "cache")


def test_spec_places_furniture_vertices_in_z_up_world(fixture_dirs, tmp_path):
    from assets_manifest import load_mesh

    front, future = fixture_dirs
    src = Front3DSource(front, future, type("C", (), {"width": 160, "height": 120, "views_per_scene": 2})(), 7,
                        cache_dir=tmp_path / "cache")
    spec = src.spec(0)
    assert spec["source"] == "3d-front" and spec["floor"] is False
    assert [i["support"] for i in spec["instances"]] == [None, None, None]
    for inst, (_, jid, pos, rot, scale) in zip(spec["instances"], LIVING[:3]):
        mesh = load_mesh(inst["path"])
        placed = mesh.vertices @ np.asarray(inst["object_to_world"])[:3, :3].T + np.asarray(inst["object_to_world"])[:3, 3]
        # independent computation: scale, rotate (quaternion x, y, z, w), translate, then y-up -> z-up
        front_pts = Rotation.from_quat(rot).apply(mesh.vertices * scale) + pos
        expected = np.stack([front_pts[:, 0], -front_pts[:, 2], front_pts[:, 1]], axis=1)
        np.testing.assert_allclose(placed, expected, atol=1e-9)
        np.testing.assert_allclose(inst["world_aabb"], [expected.min(0), expected.max(0)], atol=1e-9)
        assert inst["uid"] == jid
    # pieces turned about the vertical only stand on the floor: models start at y = 0 and pos y = 0
    assert [i["world_aabb"][0][2] for i in spec["instances"][:2]] == pytest.approx([0.0, 0.0], abs=1e-6)
    # the floor is background, written once as a world-frame mesh
    assert [b["kind"] for b in spec["background"]] == ["floor"]
    floor = load_mesh(spec["background"][0]["path"])
    assert np.allclose(floor.vertices[:, 2], 0.0) and np.ptp(floor.vertices[:, 0]) == pytest.approx(7.0)


def test_spec_cameras_frame_every_instance(fixture_dirs, tmp_path):
    from iscene_core import space

    front, future = fixture_dirs
    src = Front3DSource(front, future, type("C", (), {"width": 160, "height": 120, "views_per_scene": 3})(), 3,
                        cache_dir=tmp_path / "cache")
    spec = src.spec(0)
    assert len(spec["cameras"]) == 3
    for cam in spec["cameras"]:
        for inst in spec["instances"]:
            lo, hi = np.asarray(inst["world_aabb"])
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            uv, z = space.project_points(cam["K"], cam["world_to_cam"], corners)
            assert np.all(z > 0)
            assert np.all((uv[:, 0] >= 0) & (uv[:, 0] <= cam["width"]) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam["height"]))
    # the same (seed, index) gives the same spec; relations hold in the boxes
    assert src.spec(0) == spec
    boxes = {i["index"]: np.asarray(i["world_aabb"]) for i in spec["instances"]}
    for rel in spec["relations"]:
        a, b = boxes[rel["subject"]], boxes[rel["object"]]
        if rel["relation"] == "left_of":
            assert a[1, 0] < b[0, 0]
        elif rel["relation"] == "behind":
            assert a[0, 1] > b[1, 1]


def test_bad_model_file_costs_that_room_only(fixture_dirs, tmp_path):
    from datagen.errors import SceneFailure

    front, future = fixture_dirs
    src = Front3DSource(front, future, None, 0, cache_dir=tmp_path / "cache")
    (future / "jid-cabinet" / "raw_model.obj").write_text("this is not an obj\n")
    with pytest.raises(SceneFailure) as err:
        src.spec(0)
    assert "jid-cabinet" in err.value.reason


@pytest.mark.blender
def test_front3d_dataset_passes_verify(fixture_dirs, tmp_path):
    from datagen.cli import main as datagen_main
    from iscene_core.shards import iter_samples, load_dataset_json
    from datagen.verify import verify_dataset

    front, future = fixture_dirs
    out = tmp_path / "front"
    assert datagen_main(["--source", "3dfront", "--front-dir", str(front), "--future-dir", str(future), "--n", "5",
                         "--views-per-scene", "2", "--resolution", "128", "--samples", "2", "--no-denoise",
                         "--min-visible-pixels", "4", "--out", str(out), "--no-ray", "--name", "front"]) == 0
    info = load_dataset_json(out)
    assert info["counts"]["scenes_requested"] == 1  # one usable room in the fixture
    assert info["source_info"]["cleaning"]["dropped"] == {
        "invalid_furniture": 2, "missing_model": 2, "absurd_scale": 2, "too_few_furniture": 1, "duplicate_room": 1,
    }
    assert (out / "split.jsonl").is_file()
    rep = verify_dataset(out)
    assert rep.ok, rep.problems[:5]
    _, s = next(iter_samples(out))
    assert s["meta"]["source"] == "3d-front" and all(i["support"] is None for i in s["meta"]["instances"])
    assert s["meta"]["room"]["room_id"] == "LivingRoom-1"
    # the floor is rendered (depth there) but is never an instance (id 0)
    assert ((s["inst"] == 0) & (s["depth"] > 0)).sum() > 0
