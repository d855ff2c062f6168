"""`iscene-datagen --exclude-assets FILE`: a training set never places a bench's assets."""

from __future__ import annotations

import json

import pytest

from datagen.cli import main as datagen_main


def test_layout_excludes_listed_assets_by_uid_or_sha(tmp_path, monkeypatch):
    monkeypatch.setenv("ISCENE_CACHE", str(tmp_path / "cache"))
    from assets_manifest import load_manifest
    from datagen.layout_cli import procedural_catalog

    records = load_manifest(procedural_catalog(12))
    drop_uid, drop_sha = records[0], records[1]
    excl = tmp_path / "assets.txt"
    excl.write_text(f"{drop_uid.uid}\n{drop_sha.sha256}\n\n")
    out = tmp_path / "layouts.jsonl"
    assert datagen_main(["layout", "--procedural", "--procedural-n", "12", "--n", "6", "--min-instances", "3",
                         "--max-instances", "6", "--exclude-assets", str(excl), "--out", str(out)]) == 0
    used = [(i["uid"], i["sha256"]) for line in out.read_text().splitlines() for i in json.loads(line)["instances"]]
    assert len(used) >= 18
    assert drop_uid.uid not in {u for u, _ in used} and drop_sha.sha256 not in {h for _, h in used}
    # without the flag the same seed does place them (the test can fail)
    out2 = tmp_path / "all.jsonl"
    assert datagen_main(["layout", "--procedural", "--procedural-n", "12", "--n", "6", "--min-instances", "3",
                         "--max-instances", "6", "--out", str(out2)]) == 0
    used_all = {i["uid"] for line in out2.read_text().splitlines() for i in json.loads(line)["instances"]}
    assert {drop_uid.uid, drop_sha.uid} & used_all


def test_exclude_assets_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ISCENE_CACHE", str(tmp_path / "cache"))
    rc = datagen_main(["layout", "--procedural", "--procedural-n", "12", "--n", "2", "--exclude-assets", str(tmp_path / "none.txt"),
                       "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2 and "--exclude-assets" in capsys.readouterr().err
    from assets_manifest import load_manifest
    from datagen.layout_cli import procedural_catalog

    every = tmp_path / "all.txt"
    every.write_text("".join(r.uid + "\n" for r in load_manifest(procedural_catalog(12))))
    rc = datagen_main(["layout", "--procedural", "--procedural-n", "12", "--n", "2", "--exclude-assets", str(every),
                       "--out", str(tmp_path / "y.jsonl")])
    assert rc == 2 and "excludes every asset" in capsys.readouterr().err
