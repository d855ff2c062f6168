"""iscene-datagen end to end on CPU: render, voxelise, shard, verify; crashes, kills and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datagen.cli import main as datagen_main
from iscene_core.shards import iter_raw, iter_samples, load_dataset_json
from datagen.verify import verify_dataset

pytestmark = pytest.mark.blender

FAST = ["--procedural", "--procedural-n", "40", "--views-per-scene", "2", "--resolution", "128", "--samples", "2",
        "--no-denoise", "--min-visible-pixels", "4", "--scenes-per-shard", "2", "--name", "ds"]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    os.environ["ISCENE_CACHE"] = str(tmp_path_factory.mktemp("iscene_cache"))


def _content(root: Path) -> dict:
    """Keys -> (voxels, meta) of a dataset: what a resumed run must reproduce exactly."""
    out = {}
    for shard in load_dataset_json(root)["shards"]:
        for key, files in iter_raw(root / shard["file"]):
            out[key] = (files["vox.npz"], files["meta.json"])
    return out


def test_end_to_end_passes_verify(tmp_path):
    out = tmp_path / "ds"
    assert datagen_main(FAST + ["--n", "3", "--out", str(out), "--no-ray", "--space", "both"]) == 0
    info = load_dataset_json(out)
    assert info["format"] == "iscene-shard/1" and info["counts"]["samples"] >= 4
    rep = verify_dataset(out)
    assert rep.ok, rep.problems[:5]
    assert rep.summary()["agreement_min"]["mask_pixels_in_voxels"] >= 0.99
    key, s = next(iter_samples(out))
    assert s["vox"]["world_scene"].dtype == np.uint8 and "world_to_grid" in s["meta"]["grid"]
    assert s["meta"]["render"] == {"engine": "cycles", "samples": 2, "denoise": False, "floor": True, "materials": "authored"}
    # procedural PLY-like meshes have no authored materials: each instance says why it fell back
    assert all(str(i["materials"]).startswith(("authored", "simple", "fallback: ")) for i in s["meta"]["instances"])
    # preview and stats run on it
    assert datagen_main(["preview", str(out), "--out", str(tmp_path / "sheet.png")]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 5000
    assert datagen_main(["stats", str(out)]) == 0


def test_verify_catches_corrupted_samples(tmp_path):
    import io
    import tarfile

    out = tmp_path / "ds"
    assert datagen_main(FAST + ["--n", "1", "--out", str(out), "--no-ray"]) == 0
    info = load_dataset_json(out)
    shard = out / info["shards"][0]["file"]
    key, files = next(iter_raw(shard))

    def rewrite(mutate):
        new = dict(files)
        mutate(new)
        with tarfile.open(shard, "w") as tar:
            for ext, data in new.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
        from iscene_core.shards import file_sha256 as sha256_file

        info["shards"][0]["sha256"] = sha256_file(shard)
        info["shards"][0]["samples"] = info["counts"]["samples"] = 1
        (out / "dataset.json").write_text(json.dumps(info))
        return verify_dataset(out)

    assert rewrite(lambda f: None).ok
    meta = json.loads(files["meta.json"])

    def shifted_grid(f):
        m = json.loads(files["meta.json"])
        c2g = np.asarray(m["grid"]["cam_to_grid"])
        c2g[:3, 3] += [0.1, 0.0, 0.0]  # voxels no longer where the camera sees the objects
        m["grid"]["cam_to_grid"] = c2g.tolist()
        f["meta.json"] = json.dumps(m).encode()

    assert any("voxels" in p for p in rewrite(shifted_grid).problems)

    def wrong_pixels(f):
        m = json.loads(files["meta.json"])
        m["instances"][0]["mask_pixels"] += 5
        f["meta.json"] = json.dumps(m).encode()

    assert any("mask_pixels" in p for p in rewrite(wrong_pixels).problems)

    def drop_depth(f):
        del f["depth.npy"]

    assert any("missing files" in p for p in rewrite(drop_depth).problems)

    def bad_scene(f):
        with np.load(io.BytesIO(files["vox.npz"])) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["scene"] = arrays["scene"][:-3]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f["vox.npz"] = buf.getvalue()

    assert any("union" in p for p in rewrite(bad_scene).problems)

    def false_relation(f):
        m = json.loads(files["meta.json"])
        a, b = m["instances"][0], m["instances"][1]
        rel = "left_of" if a["world_aabb"][0][0] > b["world_aabb"][1][0] else "right_of"
        m["relations"].append({"subject": 1, "relation": rel, "object": 2})
        f["meta.json"] = json.dumps(m).encode()

    if len(meta["instances"]) >= 2:
        assert any("does not hold" in p for p in rewrite(false_relation).problems)


def test_blender_crash_costs_one_scene(tmp_path, monkeypatch):
    from datagen import runner
    from datagen.render import RenderSettings

    orig = runner.make_shard

    def with_crash(source, k, cfg):
        from dataclasses import replace

        return orig(source, k, replace(cfg, render=replace(cfg.render, crash_on_scene="s00000001")))

    monkeypatch.setattr(runner, "make_shard", with_crash)
    out = tmp_path / "ds"
    assert datagen_main(FAST + ["--n", "3", "--out", str(out), "--no-ray"]) == 0
    fails = [json.loads(l) for l in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["scene_id"], f["stage"]) for f in fails] == [("s00000001", "render")]
    assert "died" in fails[0]["reason"]
    keys = {k.split("_")[0] for k in _content(out)}
    assert keys == {"s00000000", "s00000002"}  # the scene after the crash was rendered by a fresh Blender
    assert verify_dataset(out).ok


def test_bad_asset_costs_one_scene(tmp_path):
    from assets_manifest import build_catalog, load_manifest

    cat = tmp_path / "cat"
    build_catalog("procedural", cat, n=6, seed=0, progress=False)
    rec = load_manifest(cat)[2]
    out = tmp_path / "ds"
    Path(rec.path).write_bytes(b"ply\nformat ascii 1.0\nelement vertex 9\nend_header\n0 0\n")  # corrupt after ingest
    args = [a for a in FAST if a not in ("--procedural", "--procedural-n", "40")]
    assert datagen_main(args + ["--assets", str(cat), "--n", "4", "--out", str(out), "--no-ray", "--min-instances", "3"]) == 0
    fails = [json.loads(l) for l in (out / "failures.jsonl").read_text().splitlines()]
    assert fails and all(f["stage"] in ("spec", "sample", "layout") for f in fails)
    assert load_dataset_json(out)["counts"]["scenes_ok"] == 4 - len({f["scene_id"] for f in fails})
    assert verify_dataset(out).ok


@pytest.mark.timeout(600)
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    assert datagen_main(FAST + ["--n", "6", "--out", str(ref), "--no-ray"]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "datagen.cli", *FAST, "--n", "6", "--out", str(out), "--no-ray"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = out / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("*.tar.json"))) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its Blender child, mid-way
    proc.wait()
    done_before = len(list(shards.glob("*.tar.json")))
    assert 1 <= done_before < 3 and not (out / "dataset.json").exists()
    assert datagen_main(FAST + ["--n", "6", "--out", str(out), "--no-ray"]) == 0
    assert _content(out) == _content(ref)
    assert [s["sha256"] for s in load_dataset_json(out)["shards"]] == [s["sha256"] for s in load_dataset_json(ref)["shards"]]
    assert not list(shards.glob(".*tmp*"))


def test_ray_run_matches_in_process(tmp_path):
    ref = tmp_path / "ref"
    assert datagen_main(FAST + ["--n", "4", "--out", str(ref), "--no-ray"]) == 0
    out = tmp_path / "ray"
    assert datagen_main(FAST + ["--n", "4", "--out", str(out), "--workers", "2"]) == 0
    assert _content(out) == _content(ref)
    import ray

    ray.shutdown()


def test_clear_errors_for_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse: one line and exit 2
        datagen_main(["--n", "2", "--out", str(tmp_path / "x"), "--space", "sideways"])
    assert exc.value.code == 2
    assert datagen_main(["--assets", str(tmp_path / "nope"), "--n", "2", "--out", str(tmp_path / "x")]) == 2
    assert "no such catalog" in capsys.readouterr().err
    assert datagen_main(["--source", "3dfront", "--n", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--front-dir" in err and len(err.strip().splitlines()) == 1
