"""The floors a trained model is compared with, and scoring of world-space predictions.

- ``iscene-eval baseline --kind mean-box``: the box is the mean of the training instances' voxel
  boxes (computed here independently from the shards), every bench instance gets it, and the
  folder scores like any prediction.
- ``iscene-eval predict --space world``: a world-grid output is brought into the bench's view grid
  with the scene's own transforms. Checked on ground truth: the world-grid GT voxels of every
  instance, moved by that map, land on the view-grid GT voxels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iscene_core.evaluation.bench import load_bench
from iscene_core.evaluation.cli import main as eval_main
from iscene_core.evaluation.layout import read_scene_glb
from tests.rendered_bench import make_rendered_bench

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def both_spaces(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("baselines")
    return make_rendered_bench(root, "both", scenes=4, catalog=24, min_instances=2, max_instances=4, extra=("--space", "both"))


def _instance_boxes(ds: Path, space: str = "view") -> list[tuple[np.ndarray, np.ndarray]]:
    from iscene_core.shards import iter_valid_samples

    prefix = "" if space == "view" else "world_"
    boxes = []
    for s in iter_valid_samples(ds, lambda where, why: pytest.fail(f"{where}: {why}"), spaces=("view", "world")):
        offs, coords = s["vox"][f"{prefix}inst_offsets"], s["vox"][f"{prefix}inst_coords"]
        for a, b in zip(offs[:-1], offs[1:]):
            if b > a:
                c = coords[a:b].astype(float)
                boxes.append((c.min(0), c.max(0) + 1))
    return boxes


def test_mean_box_baseline_places_every_instance_at_the_training_mean(both_spaces, tmp_path):
    pred = tmp_path / "mb"
    assert eval_main(["baseline", "--kind", "mean-box", "--from", str(both_spaces["ds"]), "--bench", str(both_spaces["bench"]),
                      "--out", str(pred)]) == 0
    boxes = _instance_boxes(both_spaces["ds"])
    lo, hi = np.mean([b[0] for b in boxes], 0), np.mean([b[1] for b in boxes], 0)
    info = json.loads((pred / "prediction.json").read_text())
    assert info["frame"] == "grid" and np.allclose(info["box"]["min"], lo) and np.allclose(info["box"]["max"], hi)
    bench = load_bench(both_spaces["bench"])
    for s in bench.scenes:
        meshes = read_scene_glb(pred / f"{s.key}.glb")
        assert sorted(meshes) == s.instance_ids
        for m in meshes.values():  # grid coordinates: voxel corner v sits at v / R - 0.5
            assert np.allclose(m.bounds, [lo / s.resolution - 0.5, hi / s.resolution - 0.5], atol=1e-6)
    assert eval_main(["score", "--bench", str(both_spaces["bench"]), "--pred", str(pred), "--points", "500",
                      "--out", str(tmp_path / "sc"), "--no-progress"]) == 0
    summ = json.loads((tmp_path / "sc" / "scores.json").read_text())["protocols"]["iscene"]["summary"]
    assert summ["n_failed"] == 0 and 0.0 <= summ["iou_b"] < 1.0


def test_mean_box_baseline_errors_are_one_line(both_spaces, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert eval_main(["baseline", "--from", str(f), "--bench", str(both_spaces["bench"]), "--out", str(tmp_path / "p")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err
    assert eval_main(["baseline", "--from", str(tmp_path), "--bench", str(both_spaces["bench"]), "--out", str(tmp_path / "p")]) == 2


def test_world_grid_output_lands_on_the_view_grid(both_spaces):
    from iscene_core.evaluation.predict import move_voxels, world_grid_to_view_grid
    from iscene_core.shards import iter_valid_samples

    bench = load_bench(both_spaces["bench"])
    by_key = {s["key"]: s for s in iter_valid_samples(both_spaces["ds"], lambda where, why: pytest.fail(f"{where}: {why}"),
                                                        spaces=("view", "world"))}
    checked = 0
    for scene in bench.scenes:
        sample = by_key[scene.key]
        m = world_grid_to_view_grid(scene)
        vox = sample["vox"]
        for i in range(len(vox["inst_offsets"]) - 1):
            world = vox["world_inst_coords"][vox["world_inst_offsets"][i]:vox["world_inst_offsets"][i + 1]]
            view = vox["inst_coords"][vox["inst_offsets"][i]:vox["inst_offsets"][i + 1]]
            if len(world) < 20 or len(view) < 20:
                continue
            moved = move_voxels(world, m, scene.resolution).astype(int)
            # the two grids have different voxel sizes, so compare boxes (within a voxel and a half) and overlap
            assert np.all(np.abs(moved.min(0) - view.min(0)) <= 1.5) and np.all(np.abs(moved.max(0) - view.max(0)) <= 1.5)
            a, b = {tuple(x) for x in moved}, {tuple(int(v) for v in x) for x in view}
            assert len(a & b) / len(a | b) > 0.3
            checked += 1
    assert checked >= 2


def test_a_scene_whose_instances_all_decode_empty_is_still_a_prediction(tmp_path):
    """An untrained or collapsed model can decode nothing; the GLB must still list every instance
    (scored as missing geometry), not crash the whole predict run."""
    from iscene_core.infer import GRID_TO_GLTF
    from iscene_core.mesh_export import export_scene

    faces = export_scene({"instance_1": -np.ones((8, 8, 8)), "instance_4": -np.ones((8, 8, 8))}, tmp_path / "e.glb",
                         node_transform=np.asarray(GRID_TO_GLTF))
    assert faces == {"instance_1": 0, "instance_4": 0}
    meshes = read_scene_glb(tmp_path / "e.glb")
    assert sorted(meshes) == [1, 4] and all(len(m.faces) == 0 for m in meshes.values())
