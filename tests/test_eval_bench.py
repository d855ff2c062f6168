"""iscene-eval on a real (small, Blender-rendered) dataset: make-bench, verify, score, broken inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh

from iscene_core.evaluation import align as al
from iscene_core.evaluation.bench import load_bench
from iscene_core.evaluation.cli import main as eval_main
from iscene_core.evaluation.layout import read_scene_glb, write_scene_glb
from iscene_core.evaluation.protocols import PROTOCOLS, sample_points, scene_frame
from tests.rendered_bench import make_rendered_bench

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    return make_rendered_bench(root, "evt", scenes=7, catalog=40, min_instances=3, max_instances=5)["bench"]


def _scores(path: Path) -> dict:
    return json.loads((path / "scores.json").read_text())


def test_make_bench_is_self_contained_and_verify_catches_changes(bench, tmp_path, capsys):
    m = json.loads((bench / "bench.json").read_text())
    assert m["format"] == "iscene-bench/1" and m["generator"]["version"] and len(m["scenes"]) >= 5
    key = m["scenes"][0]["key"]
    for f in ("image.png", "inst.png", "camera.json", "spec.json", "voxels.npz"):
        assert f"scenes/{key}/{f}" in m["files"]
    assert f"gt/{key}.glb" in m["files"] and "assets.txt" in m["files"]
    assert all(a["uid"] and len(a["sha256"]) == 64 for a in m["assets"])
    assert eval_main(["verify", str(bench)]) == 0
    # GT meshes are metres in the view frame and voxelise to the shard's voxels
    b = load_bench(bench)
    s = b.scenes[0]
    gt = read_scene_glb(s.gt_glb)
    assert sorted(gt) == s.instance_ids
    vox = s.gt_voxels()
    from iscene_core.evaluation.boxes import voxel_iou, voxelize_in_grid

    for i, mesh in gt.items():
        assert voxel_iou(voxelize_in_grid(mesh.vertices, mesh.faces, s.view_to_grid, s.resolution), vox[i]) > 0.98
    # an altered or missing file fails verify
    copy = tmp_path / "copy"
    shutil.copytree(bench, copy)
    p = copy / "scenes" / key / "camera.json"
    p.write_text(p.read_text().replace("[", "[ ", 1))
    assert eval_main(["verify", str(copy)]) == 1
    assert "camera.json: sha256 differs" in capsys.readouterr().err
    shutil.copytree(bench, tmp_path / "copy2")
    (tmp_path / "copy2" / "gt" / f"{key}.glb").unlink()
    assert eval_main(["verify", str(tmp_path / "copy2")]) == 1


def test_gt_scored_against_itself_is_perfect_under_every_protocol(bench, tmp_path):
    out = tmp_path / "scores"
    assert eval_main(["score", "--bench", str(bench), "--pred", str(bench / "gt"), "--protocol", "all", "--points", "1500",
                      "--out", str(out), "--no-progress"]) == 0
    doc = _scores(out)
    assert set(doc["protocols"]) == set(PROTOCOLS)
    for name, res in doc["protocols"].items():
        s = res["summary"]
        assert s["n_failed"] == 0 and s["n_skipped"] == 0 and s["n_scored"] == len(load_bench(bench).scenes), name
        assert s["cd_s"] == pytest.approx(0.0, abs=1e-12), name
        assert s["f_s"] == 100.0 and s["iou_b"] == pytest.approx(1.0, abs=1e-12) and s["voxel_iou"] == 1.0, name
        if PROTOCOLS[name].object_level:
            assert s["cd_o"] == pytest.approx(0.0, abs=1e-12) and s["f_o"] == 100.0, name
        assert s["interpenetration"] == s["gt_interpenetration"], name
    for f in ("scores.md", "scenes.csv", "histograms.png", "worst.png"):
        assert (out / f).stat().st_size > 100
    assert "| iscene | 0.0000 | 100.00 |" in (out / "scores.md").read_text()


def _pred_copy(bench: Path, dst: Path) -> Path:
    shutil.copytree(bench / "gt", dst)
    return dst


def test_known_translation_and_scale_give_analytic_iou_b(bench, tmp_path):
    b = load_bench(bench)
    s = b.scenes[0]
    gt = read_scene_glb(s.gt_glb)
    i = s.instance_ids[0]
    lo, hi = gt[i].bounds
    ext = hi - lo
    pred = _pred_copy(bench, tmp_path / "pred_t")
    t = 0.3 * ext[0]
    moved = dict(gt)
    moved[i] = gt[i].copy().apply_translation([t, 0, 0])
    write_scene_glb(pred / f"{s.key}.glb", moved)
    assert eval_main(["score", "--bench", str(bench), "--pred", str(pred), "--points", "800", "--out", str(tmp_path / "st"),
                      "--no-progress"]) == 0
    row = [r for r in _scores(tmp_path / "st")["protocols"]["iscene"]["scenes"] if r["key"] == s.key][0]
    obj = {o["id"]: o for o in row["objects"]}
    assert obj[i]["iou_b"] == pytest.approx((ext[0] - t) / (ext[0] + t), rel=1e-6)  # GLB stores float32
    assert all(obj[j]["iou_b"] == pytest.approx(1.0) for j in obj if j != i)
    # uniform scale about the box centre: IoU = 1 / s^3
    sc = 1.25
    c = 0.5 * (lo + hi)
    scaled = dict(gt)
    scaled[i] = gt[i].copy().apply_translation(-c).apply_scale(sc).apply_translation(c)
    write_scene_glb(pred / f"{s.key}.glb", scaled)
    assert eval_main(["score", "--bench", str(bench), "--pred", str(pred), "--points", "800", "--protocol", "midi,depr",
                      "--out", str(tmp_path / "ss"), "--no-progress"]) == 0
    for name in ("midi", "depr"):
        row = [r for r in _scores(tmp_path / "ss")["protocols"][name]["scenes"] if r["key"] == s.key][0]
        assert {o["id"]: o for o in row["objects"]}[i]["iou_b"] == pytest.approx(1 / sc**3, rel=1e-6)


def test_icp_recovers_a_random_rigid_transform_of_a_bench_scene(bench, tmp_path):
    b = load_bench(bench)
    s = b.scenes[1]
    gt = read_scene_glb(s.gt_glb)
    F = scene_frame(PROTOCOLS["iscene"], gt)
    pts = np.concatenate([sample_points(al.apply(F, gt[i].vertices) is not None and trimesh.Trimesh(al.apply(F, gt[i].vertices), gt[i].faces), 3000, i)
                          for i in sorted(gt)])
    rng = np.random.default_rng(7)
    for trial in range(3):
        axis = rng.normal(size=3)
        T = trimesh.transformations.rotation_matrix(np.deg2rad(rng.uniform(-10, 10)), axis / np.linalg.norm(axis))
        T[:3, 3] = rng.uniform(-0.1, 0.1, 3)
        for method in ("robust_icp", "icp"):
            est = al.align(method, al.apply(T, pts), pts, iters=300, tol=1e-12)
            assert np.abs(est @ T - np.eye(4)).max() < 1e-3, (trial, method)
    # end to end: a rigidly moved prediction is put back by the iscene protocol and scores perfectly
    pred = _pred_copy(bench, tmp_path / "pred_r")
    Tv = s.grid_to_view @ np.eye(4)  # view frame
    Tr = trimesh.transformations.rotation_matrix(np.deg2rad(4.0), [0.3, 0.2, 1.0], point=gt[s.instance_ids[0]].centroid)
    write_scene_glb(pred / f"{s.key}.glb", {i: m.copy().apply_transform(Tr) for i, m in gt.items()})
    assert Tv.shape == (4, 4)
    assert eval_main(["score", "--bench", str(bench), "--pred", str(pred), "--points", "3000", "--out", str(tmp_path / "sr"),
                      "--no-progress"]) == 0
    row = [r for r in _scores(tmp_path / "sr")["protocols"]["iscene"]["scenes"] if r["key"] == s.key][0]
    assert row["f_s"] == 100.0 and row["cd_s"] < 1e-5


def test_broken_predictions_are_recorded_and_the_rest_scored(bench, tmp_path):
    b = load_bench(bench)
    keys = [s.key for s in b.scenes]
    pred = _pred_copy(bench, tmp_path / "pred_bad")
    glb = pred / f"{keys[0]}.glb"
    glb.write_bytes(glb.read_bytes()[:200])  # truncated / corrupt
    (pred / f"{keys[1]}.glb").write_bytes(b"")  # empty
    sc = trimesh.Scene()
    sc.add_geometry(trimesh.creation.box(), node_name="chair", geom_name="chair")
    (pred / f"{keys[2]}.glb").write_bytes(sc.export(file_type="glb"))  # no instance nodes
    gt3 = read_scene_glb(b.scenes[3].gt_glb)
    first = b.scenes[3].instance_ids[0]
    renamed = {(99 if i == first else i): m for i, m in gt3.items()}
    write_scene_glb(pred / f"{keys[3]}.glb", renamed)  # mismatched ids
    assert eval_main(["score", "--bench", str(bench), "--pred", str(pred), "--protocol", "iscene,scenegen,gen3dsr", "--points", "600",
                      "--out", str(tmp_path / "sb"), "--no-progress"]) == 0
    doc = _scores(tmp_path / "sb")
    rows = {r["key"]: r for r in doc["protocols"]["iscene"]["scenes"]}
    assert rows[keys[0]]["status"] == "failed" and "unreadable GLB" in rows[keys[0]]["message"]
    assert rows[keys[1]]["status"] == "failed" and "empty file" in rows[keys[1]]["message"]
    assert rows[keys[2]]["status"] == "failed" and "no node named instance_<id>" in rows[keys[2]]["message"]
    r3 = rows[keys[3]]
    assert r3["status"] == "ok" and r3["missing"] == [first] and r3["extra"] == [99]
    assert {o["id"]: o["status"] for o in r3["objects"]}[first] == "missing"
    for k in keys[4:]:
        assert rows[k]["status"] == "ok" and rows[k]["f_s"] == 100.0
    s = doc["protocols"]["iscene"]["summary"]
    assert s["n_failed"] == 3 and s["n_scored"] == len(keys) - 3 and s["n_missing"] == 1 and s["n_extra"] == 1
    # SceneGen pairs by order when counts match; Gen3DSR scores the union
    assert {r["key"]: r for r in doc["protocols"]["scenegen"]["scenes"]}[keys[3]]["status"] == "ok"
    g = {r["key"]: r for r in doc["protocols"]["gen3dsr"]["scenes"]}[keys[3]]
    assert g["status"] == "ok" and g["f_s"] == 100.0 and g["cd_s"] == pytest.approx(0.0, abs=1e-12)  # union: ids ignored
    md = (tmp_path / "sb" / "scores.md").read_text()
    assert "Scenes not scored" in md and "unreadable GLB" in md
    csv = (tmp_path / "sb" / "scenes.csv").read_text()
    assert csv.count("failed") == 9  # 3 scenes x 3 protocols


def test_cli_errors_are_one_line_exit_2(bench, tmp_path, capsys):
    assert eval_main(["score", "--bench", str(tmp_path / "nope"), "--pred", str(bench / "gt")]) == 2
    assert eval_main(["score", "--bench", str(bench), "--pred", str(tmp_path / "nope")]) == 2
    assert eval_main(["make-bench", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert eval_main(["make-bench", "--from", str(tmp_path), "--out", str(bench)]) == 2
    assert eval_main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("iscene-eval ") for line in err)
    with pytest.raises(SystemExit) as exc:
        eval_main(["score", "--bench", str(bench), "--pred", str(bench / "gt"), "--protocol", "nope"])
    assert exc.value.code == 2


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> dict:
    """Random TRELLIS-layout weights and a tiny DINOv2, as tests/test_infer.py makes them."""
    import torch

    from iscene_core.trellis import SparseStructureDecoder, SparseStructureFlowModel
    from tests.test_conditioning import _tiny_transformers_folder
    from tests.test_infer import DEC_ARGS, FLOW_ARGS, _save

    root = tmp_path_factory.mktemp("w")
    ckpts = root / "weights" / "ckpts"
    ckpts.mkdir(parents=True)
    torch.manual_seed(0)
    flow, dec = SparseStructureFlowModel(**FLOW_ARGS), SparseStructureDecoder(**DEC_ARGS)
    with torch.no_grad():
        for _, p in flow.named_parameters():
            p.normal_(0, 0.05 if p.ndim > 1 else 0.02)
        dec.out_layer[-1].bias.fill_(-0.3)
    _save(flow, "ss_flow_img_dit_L_16l8_fp16", FLOW_ARGS, ckpts)
    _save(dec, "ss_dec_conv3d_16l8_fp16", DEC_ARGS, ckpts)
    (root / "weights" / "pipeline.json").write_text(json.dumps({"name": "TrellisImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16", "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16"},
        "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                     "params": {"steps": 2, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
        "image_cond_model": "dinov2_vitl14_reg"}}))
    _tiny_transformers_folder(root / "dino", channels=32)
    return {"weights": root / "weights", "dino": root / "dino"}


@pytest.mark.slow  # ~100 s on a shared 2-core CPU (three predict runs of the tiny model)
def test_predict_is_batched_resumable_and_scoreable(bench, tiny_weights, tmp_path):
    small = tmp_path / "bench2"  # two scenes: CPU attention over 16^3 tokens per row is the cost here
    assert eval_main(["make-bench", "--from", str(bench.parent / "ds"), "--out", str(small), "--n", "2", "--no-progress"]) == 0
    bench = small
    base = ["predict", "--bench", str(bench), "--weights", str(tiny_weights["weights"]), "--dinov2", str(tiny_weights["dino"]),
            "--device", "cpu", "--steps", "1", "--cfg", "0", "--no-progress"]
    b = load_bench(bench)
    assert eval_main(base + ["--out", str(tmp_path / "p1"), "--batch-scenes", "1"]) == 0
    assert eval_main(base + ["--out", str(tmp_path / "p3"), "--batch-scenes", "2"]) == 0
    for s in b.scenes:  # a node per bench instance; batching does not change a scene's result
        one, three = read_scene_glb(tmp_path / "p1" / f"{s.key}.glb"), read_scene_glb(tmp_path / "p3" / f"{s.key}.glb")
        assert sorted(one) == s.instance_ids
        v1, v3 = np.load(tmp_path / "p1" / f"{s.key}.npz"), np.load(tmp_path / "p3" / f"{s.key}.npz")
        for name in v1.files:
            a, c = {tuple(x) for x in v1[name]}, {tuple(x) for x in v3[name]}
            assert len(a ^ c) <= 0.01 * max(1, len(a)), (s.key, name)
    # resumable: a finished scene is kept, a removed one is redone
    victim = tmp_path / "p1" / f"{b.scenes[0].key}.json"
    kept_mtime = (tmp_path / "p1" / f"{b.scenes[1].key}.glb").stat().st_mtime_ns
    victim.unlink()
    assert eval_main(base + ["--out", str(tmp_path / "p1")]) == 0
    assert victim.is_file() and (tmp_path / "p1" / f"{b.scenes[1].key}.glb").stat().st_mtime_ns == kept_mtime
    assert json.loads((tmp_path / "p1" / "prediction.json").read_text())["frame"] == "grid"
    # random weights give a poor but scoreable prediction
    assert eval_main(["score", "--bench", str(bench), "--pred", str(tmp_path / "p1"), "--points", "500", "--out", str(tmp_path / "ps"),
                      "--no-progress"]) == 0
    s = _scores(tmp_path / "ps")["protocols"]["iscene"]["summary"]
    assert s["n_failed"] == 0 and s["f_s"] < 100.0
    assert eval_main(base + ["--out", str(tmp_path / "p9"), "--weights", str(tmp_path / "nope")]) == 2


def test_convert_per_instance_meshes_in_yup_metres(bench, tmp_path):
    """Another system's output: one PLY per object, glTF +Y-up axes, metres; converts and scores perfectly."""
    b = load_bench(bench)
    src = tmp_path / "src"
    from iscene_core.evaluation.layout import GLTF_FROM_OURS

    for s in b.scenes:
        (src / s.key).mkdir(parents=True)
        for i, m in read_scene_glb(s.gt_glb).items():
            m.copy().apply_transform(GLTF_FROM_OURS).export(src / s.key / f"object_{i}.ply")
    assert eval_main(["convert", "--src", str(src), "--bench", str(bench), "--out", str(tmp_path / "conv"), "--frame", "view",
                      "--axes", "yup", "--system", "other"]) == 0
    assert eval_main(["score", "--bench", str(bench), "--pred", str(tmp_path / "conv"), "--points", "800", "--out", str(tmp_path / "cs"),
                      "--no-progress"]) == 0
    s = _scores(tmp_path / "cs")["protocols"]["iscene"]["summary"]
    assert s["f_s"] == 100.0 and s["iou_b"] == pytest.approx(1.0, abs=1e-6) and s["cd_s"] < 1e-10
    assert eval_main(["convert", "--src", str(tmp_path / "nope"), "--bench", str(bench), "--out", str(tmp_path / "c2")]) == 2
