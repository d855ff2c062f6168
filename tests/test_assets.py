"""Asset catalog: real meshes in, corrupt files rejected with reasons, resumable, deterministic."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from assets_manifest import build_catalog, load_manifest, load_mesh
from assets_manifest.cli import main as assets_cli

MESH_SUFFIXES = {".glb", ".obj", ".ply", ".stl"}


def _make_corrupt_files(folder: Path, shared_assets: Path) -> dict[str, str]:
    """Each corrupt file and the rejection stage it must get."""
    folder.mkdir(parents=True, exist_ok=True)
    glb = (shared_assets / "Duck.glb").read_bytes()
    (folder / "truncated.glb").write_bytes(glb[: len(glb) // 3])
    (folder / "zero.glb").write_bytes(b"")
    (folder / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    (folder / "nofaces.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (folder / "huge.obj").write_text("v 0 0 0\nv 1e30 0 0\nv 0 1 0\nf 1 2 3\n")
    shutil.copy(shared_assets / "capsule0.jpg", folder / "picture.glb")  # wrong extension: a JPEG
    (folder / "model.xyz").write_text("0 0 0\n")  # unsupported geometry extension
    return {"truncated.glb": "load", "zero.glb": "read", "nan.obj": "validate", "nofaces.obj": "validate",
            "huge.obj": "validate", "picture.glb": "read", "model.xyz": "read"}


def test_dir_catalogs_every_shared_asset_and_rejects_corrupt_files(shared_assets, tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(shared_assets, inputs)
    expected = _make_corrupt_files(inputs / "corrupt", shared_assets)
    out = tmp_path / "catalog"
    assert assets_cli(["build", "--source", "dir", str(inputs), "--out", str(out)]) == 0
    records = load_manifest(out)
    real = sorted(p.name for p in shared_assets.iterdir() if p.suffix.lower() in MESH_SUFFIXES)
    assert sorted(Path(r.path).name for r in records) == real
    rejects = {Path(r["file"]).name: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert {k: v["stage"] for k, v in rejects.items()} == expected
    assert "NaN" in rejects["nan.obj"]["reason"] and "no faces" in rejects["nofaces.obj"]["reason"]
    assert "huge" in rejects["huge.obj"]["reason"] and "magic" in rejects["picture.glb"]["reason"]
    # every row is usable: normalisation puts the mesh in the canonical frame, proxies exist
    for r in records:
        mesh = load_mesh(r.path)
        n = np.asarray(r.normalization)
        v = mesh.vertices[np.unique(mesh.faces)] @ n[:3, :3].T + n[:3, 3]
        assert np.isclose(np.ptp(v, axis=0).max(), 1.0) and np.isclose(v[:, 2].min(), 0.0, atol=1e-9)
        assert np.allclose((v.min(0)[:2] + v.max(0)[:2]) / 2, 0.0, atol=1e-9)
        assert Path(r.collision_proxy).is_file() and r.proxy_faces <= max(r.faces, 2000)
    by_name = {Path(r.path).name: r for r in records}
    assert by_name["Duck.glb"].up_axis == "+y" and by_name["Duck.glb"].has_texture
    assert by_name["pins.glb"].up_axis == "+z"  # Z-up content in a glb: flat plate lies flat
    assert by_name["testplate.glb"].canonical_extents[2] < 0.05
    # a rerun skips everything already ingested or rejected
    before = (out / "rejects.jsonl").read_text()
    assert assets_cli(["build", "--source", "dir", str(inputs), "--out", str(out)]) == 0
    assert (out / "rejects.jsonl").read_text() == before
    assert [r.sha256 for r in load_manifest(out)] == [r.sha256 for r in records]
    assert assets_cli(["validate", str(out)]) == 0


def test_procedural_is_deterministic_and_varied(tmp_path):
    a = load_manifest(build_catalog("procedural", tmp_path / "a", n=60, seed=0, progress=False))
    b = load_manifest(build_catalog("procedural", tmp_path / "b", n=60, seed=0, progress=False))
    c = load_manifest(build_catalog("procedural", tmp_path / "c", n=60, seed=1, progress=False))
    assert [r.sha256 for r in a] == [r.sha256 for r in b]
    assert len({r.sha256 for r in a}) == 60 and not {r.sha256 for r in a} & {r.sha256 for r in c}
    ext = np.array([r.canonical_extents for r in a])
    ratio = ext.max(1) / ext.min(1)
    assert ratio.min() < 1.3 and ratio.max() > 4.0  # compact blobs and slabs/columns
    faces = np.array([r.faces for r in a])
    assert faces.min() <= 24 and faces.max() >= 500
    assert len({r.meta["family"] for r in a}) == 6
    assert all(r.watertight for r in a if r.meta["family"] != "revolved")


def test_resume_after_interrupted_build(tmp_path):
    out = tmp_path / "cat"
    build_catalog("procedural", out, n=10, seed=3, progress=False)
    first = load_manifest(out)
    build_catalog("procedural", out, n=25, seed=3, progress=False)
    second = load_manifest(out)
    assert [r.sha256 for r in second[:10]] == [r.sha256 for r in first] and len(second) == 25


def _objaverse_cache(root: Path, shared_assets: Path) -> list[str]:
    """A cache laid out exactly as the objaverse 0.1.7 package reads it (no network needed)."""
    base = root / "hf-objaverse-v1"
    uids = ["a" * 32, "b" * 32, "c" * 32]
    paths = {}
    for uid, src in zip(uids, ["Duck.glb", "chairDesk.glb", "table.glb"]):
        rel = f"glbs/000-001/{uid}.glb"
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_assets / src, base / rel)
        paths[uid] = rel
    with gzip.open(base / "object-paths.json.gz", "wt") as f:
        json.dump(paths, f)
    (base / "metadata").mkdir()
    with gzip.open(base / "metadata" / "000-001.json.gz", "wt") as f:
        json.dump({uids[0]: {"faceCount": 4212}, uids[1]: {"faceCount": 588}, uids[2]: {"faceCount": 120}}, f)
    with gzip.open(base / "lvis-annotations.json.gz", "wt") as f:
        json.dump({"duck": [uids[0]], "chair": [uids[1]]}, f)
    return uids


def test_objaverse_source_through_the_real_package_offline(shared_assets, tmp_path):
    import objaverse

    cache = tmp_path / "objaverse"
    uids = _objaverse_cache(cache, shared_assets)
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text("file_identifier,sha256,aesthetic_score\n"
                        f"https://sketchfab.com/3d-models/{uids[0]},x,5.5\n"
                        f"https://sketchfab.com/3d-models/{uids[1]},y,3.0\n")
    saved = (objaverse.BASE_PATH, objaverse._VERSIONED_PATH)
    try:
        out = tmp_path / "cat"
        build_catalog("objaverse", out, inputs=cache, lvis=True, progress=False, download_processes=1)
        assert sorted(r.uid for r in load_manifest(out)) == uids[:2]  # LVIS subset
        rec = {r.uid: r for r in load_manifest(out)}
        assert rec[uids[0]].meta["lvis_category"] == "duck" and rec[uids[0]].source == "objaverse"
        out2 = tmp_path / "cat2"
        build_catalog("objaverse", out2, inputs=cache, metadata_csv=csv_path, min_aesthetic=4.5, progress=False, download_processes=1)
        assert [r.uid for r in load_manifest(out2)] == [uids[0]]
        out3 = tmp_path / "cat3"
        build_catalog("objaverse", out3, inputs=cache, max_faces=1000, progress=False, download_processes=1)
        assert sorted(r.uid for r in load_manifest(out3)) == uids[1:]
        # resumable: a second run adds nothing and keeps rows
        build_catalog("objaverse", out3, inputs=cache, max_faces=1000, progress=False, download_processes=1)
        assert sorted(r.uid for r in load_manifest(out3)) == uids[1:]
    finally:
        objaverse.BASE_PATH, objaverse._VERSIONED_PATH = saved


def test_stats_cli_writes_plot_and_counts(tmp_path, capsys):
    out = tmp_path / "cat"
    build_catalog("procedural", out, n=12, seed=0, progress=False)
    (out / "rejects.jsonl").write_text(json.dumps({"file": "x.glb", "stage": "read", "reason": "empty file (0 bytes)"}) + "\n")
    assert assets_cli(["stats", str(out), "--plot", str(tmp_path / "s.png")]) == 0
    stats = json.loads(capsys.readouterr().out.split("plot:")[0])
    assert stats["assets"] == 12 and stats["rejects_by_reason"] == {"read: empty file": 1}
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_validate_catches_a_changed_file(tmp_path):
    out = tmp_path / "cat"
    build_catalog("procedural", out, n=3, seed=0, progress=False)
    rec = load_manifest(out)[0]
    trimesh.creation.box().export(rec.path)
    assert assets_cli(["validate", str(out)]) == 1


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "assets_manifest.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "build" in res.stdout


def _glb_with_extension(path: Path, extension: str, required: bool) -> None:
    """A valid box .glb whose JSON declares ``extension`` (as a meshopt-compressed file does)."""
    import struct

    data = trimesh.creation.box().export(file_type="glb")
    n = struct.unpack("<I", data[12:16])[0]
    doc = json.loads(data[20:20 + n])
    doc["extensionsUsed"] = [extension]
    if required:
        doc["extensionsRequired"] = [extension]
        doc["buffers"].append({"byteLength": 64, "extensions": {extension: {"fallback": True}}})
        doc["bufferViews"][0]["buffer"] = len(doc["buffers"]) - 1  # geometry lives in the compressed stream
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    rest = data[20 + n:]
    body = struct.pack("<II", len(js), 0x4E4F534A) + js + rest
    path.write_bytes(data[:8] + struct.pack("<I", 12 + len(body)) + body)


def test_meshopt_gltf_rejected_naming_the_extension(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _glb_with_extension(inputs / "meshopt.glb", "EXT_meshopt_compression", required=True)
    trimesh.creation.box().export(inputs / "box.glb")
    out = tmp_path / "cat"
    assert assets_cli(["build", "--source", "dir", str(inputs), "--out", str(out)]) == 0
    assert [Path(r.path).name for r in load_manifest(out)] == ["box.glb"]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["stage"] == "load"
    assert "EXT_meshopt_compression" in rejects[0]["reason"] and "IndexError" not in rejects[0]["reason"]


def test_stable_poses_stored_and_ply_up_axis_from_resting_poses(shared_assets, tmp_path):
    """The Y-up bunny PLY stands upright; every asset carries resting poses whose probabilities
    sum to 1 and whose rotations are proper and make the asset rest on a face of its hull."""
    from assets_manifest.stable_poses import from_record

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("bunny.ply", "teapot.stl", "monkey.glb", "Duck.glb", "SheenCloth.glb"):
        shutil.copy(shared_assets / name, inputs / name)
    records = {Path(r.path).name: r for r in load_manifest(build_catalog("dir", tmp_path / "cat", inputs=inputs, progress=False))}
    assert records["bunny.ply"].up_axis == "+y"  # scanned Y-up: "+z" would lay it on its side
    assert records["teapot.stl"].up_axis == "+z"
    for name, rec in records.items():
        rots, probs = from_record(rec.stable_poses)
        assert len(rots) >= 1 and abs(probs.sum() - 1) < 1e-9, name
        np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-6)
        mesh = load_mesh(rec.path)
        n = np.asarray(rec.normalization)
        canonical = mesh.vertices @ n[:3, :3].T + n[:3, 3]
        for rot in rots:  # resting on a hull facet: several vertices share the lowest height
            z = (canonical @ rot.T)[:, 2]
            hull_z = (trimesh.Trimesh(canonical @ rot.T, mesh.faces, process=False).convex_hull.vertices)[:, 2]
            assert np.sum(hull_z <= z.min() + 0.02 * np.ptp(z)) >= 3, name
