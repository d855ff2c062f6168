"""id-3dfront: make-bench on a 3D-FRONT-format dataset finds 3D-FUTURE models by uid and filters by split."""

from __future__ import annotations

import json

import pytest

from iscene_core.evaluation.cli import main as eval_main
from tests.front3d_fixture import build_front3d_fixture

pytestmark = pytest.mark.blender


def test_make_bench_from_3dfront_by_split(tmp_path, monkeypatch, capsys):
    from datagen.cli import main as datagen_main

    monkeypatch.setenv("ISCENE_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    front, future = build_front3d_fixture(tmp_path / "fx")
    data = tmp_path / "front"
    assert datagen_main(["--source", "3dfront", "--front-dir", str(front), "--future-dir", str(future), "--n", "2",
                         "--views-per-scene", "1", "--resolution", "64", "--samples", "2", "--no-denoise",
                         "--min-visible-pixels", "2", "--out", str(data), "--no-ray", "--name", "front"]) == 0
    split = json.loads((data / "split.jsonl").read_text().splitlines()[0])["split"]
    other = "train" if split == "test" else "test"
    # GT meshes come from 3D-FUTURE by uid (sha256 checked) and must re-voxelise to the shard's voxels
    assert eval_main(["make-bench", "--from", str(data), "--future-dir", str(future), "--split", split,
                      "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert len(m["scenes"]) == 1 and m["skipped"] == [] and m["scenes"][0]["source"] == "3d-front"
    assert {a["uid"] for a in m["assets"]} == {"jid-table", "jid-cabinet", "jid-box"}
    assert eval_main(["score", "--bench", str(tmp_path / "b"), "--pred", str(tmp_path / "b" / "gt"), "--points", "500",
                      "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "s" / "scores.json").read_text())["protocols"]["iscene"]["summary"]["f_s"] == 100.0
    # the other side of the split has no room: a clear one-line exit 2
    assert eval_main(["make-bench", "--from", str(data), "--future-dir", str(future), "--split", other,
                      "--out", str(tmp_path / "b2"), "--no-progress"]) == 2
    assert "no scene passed the filters" in capsys.readouterr().err
