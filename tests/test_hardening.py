"""Issue 10, data side: hostile and careless use of the data tools loses nothing and crashes nothing.

Each test is named after the case it reproduces (docs/RELIABILITY.md lists them). They run the real
tools on small real datasets made by iscene-datagen (Blender at 64 px, 2 spp).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from datagen.cli import main as datagen_main
from datagen.verify import verify_dataset
from iscene_core.shards import (DatasetError, FolderLock, SampleError, file_sha256, iter_raw, load_dataset_json, parse_mix,
                                register_dataset, registry_path, resolve, validate_sample)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["--procedural", "--procedural-n", "30", "--views-per-scene", "1", "--resolution", "64", "--samples", "2",
        "--no-denoise", "--min-visible-pixels", "1", "--scenes-per-shard", "2", "--no-ray"]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    os.environ["ISCENE_CACHE"] = str(tmp_path_factory.mktemp("iscene_cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 4-scene, 2-shard dataset, made once; tests copy it before damaging it."""
    pytest.importorskip("bpy")
    out = tmp_path_factory.mktemp("base") / "base"
    assert datagen_main(TINY + ["--n", "4", "--out", str(out), "--name", "base"]) == 0
    return out


def _copy(base: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(base, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def _cli(*args: str, cmd: str = "iscene-datagen") -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([str(BIN / cmd), *args], capture_output=True, text=True, env=env, timeout=600)


def _rewrite_tar(shard: Path, mutate) -> None:
    """Rewrite a shard with ``mutate({key: {ext: bytes}})`` applied, keeping tar order."""
    samples = dict(iter_raw(shard))
    mutate(samples)
    with tarfile.open(shard, "w") as tar:
        for key, files in samples.items():
            for ext, data in files.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))


# ------------------------------------------------------------------------------- data loss --


@pytest.mark.blender
def test_rerun_with_larger_n_extends_and_keeps_every_shard(base, tmp_path):
    ds = _copy(base, tmp_path)
    before = {s["file"]: s["sha256"] for s in load_dataset_json(ds)["shards"]}
    assert datagen_main(TINY + ["--n", "7", "--out", str(ds), "--name", "base"]) == 0
    info = load_dataset_json(ds)
    after = {s["file"]: s["sha256"] for s in info["shards"]}
    assert len(after) == 4 and info["counts"]["scenes_requested"] == 7
    # the two old shards are kept byte for byte (shard 1 covered scenes 2-3 before and after)
    assert all(after[f] == h for f, h in before.items())
    assert resolve("base").samples == info["counts"]["samples"] >= 4
    assert verify_dataset(ds).ok


@pytest.mark.blender
def test_rerun_with_other_settings_refuses_unless_overwrite(base, tmp_path):
    ds = _copy(base, tmp_path)
    index = (ds / "dataset.json").read_bytes()
    r = _cli(*[a if a != "2" or i != TINY.index("--samples") + 1 else "3" for i, a in enumerate(TINY)], "--n", "4", "--out", str(ds), "--name", "base")
    assert r.returncode == 2 and "other settings" in r.stderr and "render.samples: 2 -> 3" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (ds / "dataset.json").read_bytes() == index
    r = _cli(*[a if i != TINY.index("--samples") + 1 else "3" for i, a in enumerate(TINY)], "--n", "2", "--out", str(ds), "--name", "base", "--overwrite")
    assert r.returncode == 0, r.stderr
    info = load_dataset_json(ds)
    assert info["config"]["render"]["samples"] == 3 and info["counts"]["scenes_requested"] == 2
    assert sorted(p.name for p in (ds / "shards").glob("*.tar")) == [s["file"].split("/")[-1] for s in info["shards"]]


@pytest.mark.blender
def test_rerun_with_smaller_n_refuses_to_shrink_the_index(base, tmp_path):
    ds = _copy(base, tmp_path)
    index = (ds / "dataset.json").read_bytes()
    r = _cli(*TINY, "--n", "2", "--out", str(ds), "--name", "base")
    assert r.returncode == 2 and "would drop 2" in r.stderr, r.stderr
    assert (ds / "dataset.json").read_bytes() == index


def test_second_writer_on_the_same_out_exits_with_a_message(tmp_path):
    out = tmp_path / "busy"
    with FolderLock(out, "another iscene-datagen"):
        r = _cli(*TINY, "--n", "1", "--out", str(out))
    assert r.returncode == 2 and "in use by pid" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "dataset.json").exists()


def test_datagen_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    out = tmp_path / "home_like"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    r = _cli(*TINY, "--n", "1", "--out", str(out), "--overwrite")
    assert r.returncode == 2 and "no dataset" in r.stderr
    assert (out / "thesis.tex").read_text() == "precious"


@pytest.mark.blender
def test_sample_config_sha256_equals_dataset_json(base):
    info = load_dataset_json(base)
    key, files = next(iter_raw(base / info["shards"][0]["file"]))
    assert json.loads(files["meta.json"])["generator"]["config_sha256"] == info["generator"]["config_sha256"]


# --------------------------------------------------------------------------- untrusted files --


def _fake_dataset(root: Path, entry: str) -> Path:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"format": "iscene-shard/1", "name": "evil", "counts": {"samples": 1},
                                                   "shards": [{"file": entry, "samples": 1, "sha256": "0" * 64}]}))
    return root


@pytest.mark.parametrize("entry", ["pipe:touch {marker}", "/etc/passwd", "../../outside.tar", "https://example.org/a.tar",
                                   "shards/../../x.tar"])
def test_dataset_json_shard_entry_must_be_a_relative_path_inside(tmp_path, entry):
    marker = tmp_path / "ran"
    ds = _fake_dataset(tmp_path / "ds", entry.format(marker=marker))
    with pytest.raises(DatasetError, match="dataset"):
        resolve(str(ds))
    rep = verify_dataset(ds)
    assert not rep.ok
    assert not marker.exists()  # nothing was run


def test_registry_urls_need_an_enabled_scheme(tmp_path, monkeypatch):
    info = {"counts": {"samples": 2}, "shards": []}
    monkeypatch.delenv("ISCENE_URL_SCHEMES", raising=False)
    with pytest.raises(DatasetError, match="not enabled"):
        register_dataset("remote", ["pipe:curl http://x | cat"], info)
    monkeypatch.setenv("ISCENE_URL_SCHEMES", "https")
    register_dataset("remote", ["https://bucket/a-000000.tar"], info)
    assert resolve("remote").shards == ("https://bucket/a-000000.tar",)
    monkeypatch.setenv("ISCENE_URL_SCHEMES", "")
    with pytest.raises(DatasetError, match="ISCENE_URL_SCHEMES=https"):
        resolve("remote")


def test_deeply_nested_dataset_json_is_a_clear_error(tmp_path):
    ds = tmp_path / "deep"
    ds.mkdir()
    (ds / "dataset.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_dataset_json(ds)
    r = _cli("verify", str(ds))
    assert r.returncode == 1 and "nested too deeply" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.blender
def test_meta_grid_resolution_3000_is_a_sample_error_not_an_allocation(base):
    key, files = next(iter_raw(base / load_dataset_json(base)["shards"][0]["file"]))
    meta = json.loads(files["meta.json"])
    meta["grid"]["resolution"] = 3000
    with pytest.raises(SampleError, match="grid.resolution 3000 outside"):
        validate_sample({"__key__": key, **files, "meta.json": json.dumps(meta).encode()})
    nested = b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(SampleError, match="nested too deeply"):
        validate_sample({"__key__": key, **files, "meta.json": nested})


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.blender
@pytest.mark.parametrize("case,reason", [
    ("id_beyond_instances", "instance id"), ("offsets_not_monotone", "non-decreasing offsets"),
    ("offsets_short", "non-decreasing offsets"), ("coords_outside_grid", r"outside the 64\^3 grid"),
    ("coords_not_uint8", "expected uint8"), ("png_corrupt", "rgb.png"), ("grid_not_the_models", "the model needs 32"),
    ("missing_file", "missing files"),
])
def test_validate_sample_rejects_each_broken_field(base, case, reason):
    key, files = next(iter_raw(base / load_dataset_json(base)["shards"][0]["file"]))
    raw = {"__key__": key, **files}
    assert validate_sample(raw, expected_resolution=64)["meta"]["grid"]["resolution"] == 64
    with np.load(io.BytesIO(files["vox.npz"])) as z:
        vox = {k: z[k] for k in z.files}
    expected = 64
    if case == "id_beyond_instances":
        from PIL import Image

        inst = np.asarray(Image.open(io.BytesIO(files["inst.png"]))).astype(np.uint16).copy()
        inst[0, 0] = 99
        buf = io.BytesIO()
        Image.fromarray(inst).save(buf, format="PNG")
        raw["inst.png"] = buf.getvalue()
    elif case == "offsets_not_monotone":
        o = vox["inst_offsets"].copy()
        o[1] = o[-1] + 5  # jumps past the end: not monotone (or not ending at len(coords) for one instance)
        vox["inst_offsets"] = o
        raw["vox.npz"] = _npz(**vox)
    elif case == "offsets_short":
        vox["inst_offsets"] = vox["inst_offsets"][:-1]
        raw["vox.npz"] = _npz(**vox)
    elif case == "coords_outside_grid":
        c = vox["inst_coords"].copy()
        c[0] = 200
        vox["inst_coords"] = c
        raw["vox.npz"] = _npz(**vox)
    elif case == "coords_not_uint8":
        vox["inst_coords"] = vox["inst_coords"].astype(np.int32)
        raw["vox.npz"] = _npz(**vox)
    elif case == "png_corrupt":
        raw["rgb.png"] = files["rgb.png"][:40] + b"\0" * 20 + files["rgb.png"][60:]
    elif case == "grid_not_the_models":
        expected = 32
    elif case == "missing_file":
        del raw["vox.npz"]
    with pytest.raises(SampleError, match=reason):
        validate_sample(raw, expected_resolution=expected)


@pytest.mark.parametrize("mix", ["a:nan", "a:inf", "a:-inf", "a:0", "a:1,b:nan"])
def test_mix_weight_nan_or_inf_is_rejected_at_parse_time(mix):
    with pytest.raises(ValueError, match="finite number > 0"):
        parse_mix(mix)


# ----------------------------------------------------- verify/preview/stats survive damage --


def _damage(ds: Path, how: str) -> str:
    """Damage the first shard of ``ds``; returns the shard's file name."""
    info = load_dataset_json(ds)
    entry = info["shards"][0]
    shard = ds / entry["file"]
    data = bytearray(shard.read_bytes())
    if how == "truncated_tar":  # cut inside the last member's data: a fixed fraction can land on a member boundary
        import tarfile

        with tarfile.open(shard) as tf:
            last = tf.getmembers()[-1]
        shard.write_bytes(bytes(data[: last.offset_data + max(1, last.size // 2)]))
    elif how == "flipped_header_byte":
        data[150] ^= 0xFF  # inside the first member's header (name/mode/size fields and checksum)
        shard.write_bytes(bytes(data))
    elif how in ("corrupt_png", "corrupt_npz", "invalid_json"):
        ext, bad = {"corrupt_png": ("rgb.png", b"\x89PNG\r\n\x1a\nbroken"), "corrupt_npz": ("vox.npz", b"PK\x03\x04junk"),
                    "invalid_json": ("meta.json", b'{"format": "iscene-shard/1", ')}[how]

        def mutate(samples):
            first = next(iter(samples))
            samples[first][ext] = bad

        _rewrite_tar(shard, mutate)
    return entry["file"]


@pytest.mark.blender
@pytest.mark.parametrize("how", ["truncated_tar", "flipped_header_byte", "corrupt_png", "corrupt_npz", "invalid_json"])
def test_verify_preview_stats_report_damage_and_check_the_rest(base, tmp_path, how):
    ds = _copy(base, tmp_path)
    shard_file = _damage(ds, how)
    rep = verify_dataset(ds)
    assert not rep.ok
    assert any(p.startswith(shard_file) and "sha256 differs" in p for p in rep.problems)  # the mismatch is still reported
    assert any(p.startswith(shard_file) and "sha256" not in p for p in rep.problems), rep.problems
    assert rep.samples >= 2  # the intact second shard was verified in depth
    r = _cli("verify", str(ds))
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr and "FAIL" in r.stdout
    r = _cli("preview", str(ds), "--out", str(tmp_path / "sheet.png"))
    assert r.returncode == 0 and "skipped" in r.stderr and (tmp_path / "sheet.png").is_file(), r.stderr
    r = _cli("stats", str(ds), "--plot", str(tmp_path / "stats.png"))
    assert r.returncode == 1 and "damaged" in r.stderr and "Traceback" not in r.stderr


def test_empty_dataset_is_not_ok(tmp_path):
    ds = tmp_path / "empty"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps({"format": "iscene-shard/1", "counts": {"samples": 0}, "shards": []}))
    rep = verify_dataset(ds)
    assert not rep.ok and "no sample" in rep.problems[-1]
    assert _cli("verify", str(ds)).returncode == 1


@pytest.mark.blender
def test_datagen_with_no_sample_exits_1_and_is_not_registered(tmp_path):
    out = tmp_path / "none"
    tiny = TINY[:TINY.index("--min-visible-pixels")] + TINY[TINY.index("--min-visible-pixels") + 2:]
    r = _cli(*tiny, "--min-visible-pixels", "100000", "--n", "2",
             "--out", str(out), "--name", "nothing")
    assert r.returncode == 1 and "no sample was produced" in r.stderr
    with pytest.raises(KeyError):
        resolve("nothing")


def test_datagen_says_bpy_is_missing_before_starting(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bpy" else real(name, *a))
    assert datagen_main(TINY + ["--n", "1", "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'iscene[render]'" in capsys.readouterr().err
    assert not (tmp_path / "x" / "failures.jsonl").exists()


@pytest.mark.blender
def test_crashed_blender_stderr_goes_into_failures(tmp_path):
    from datagen.layout_cli import procedural_catalog
    from datagen.layout import LayoutConfig, RandomSceneSource
    from datagen.render import RenderSettings
    from datagen.runner import RunConfig, run_dataset
    from datagen.sample import SampleConfig

    # at 64 px, 32 visible pixels for each of up to 10 instances is rarely possible: few instances,
    # so that scene s00000001 reaches the renderer (the crash is what this test is about)
    src = RandomSceneSource(procedural_catalog(30), LayoutConfig(views_per_scene=1, width=64, height=64, max_instances=3), 0)
    cfg = RunConfig(out=str(tmp_path / "crash"), name="crash", n=2, scenes_per_shard=2, use_ray=False,
                    render=RenderSettings(samples=2, denoise=False, crash_on_scene="s00000001"),
                    sample=SampleConfig(dataset="crash", min_visible_pixels=1))
    run_dataset(src, cfg, progress=False)
    failures = [json.loads(l) for l in (tmp_path / "crash" / "failures.jsonl").read_text().splitlines()]
    crash = [f for f in failures if f["stage"] == "render"]
    assert crash and "simulated Blender abort on scene s00000001" in crash[0]["reason"]


# ------------------------------------------------------------------------------- 3D-FRONT --


@pytest.mark.blender
def test_front3d_malformed_house_is_recorded_and_conversion_goes_on(tmp_path):
    from tests.front3d_fixture import build_front3d_fixture

    front, future = build_front3d_fixture(tmp_path / "fx")
    (front / "zz_broken.json").write_text('{"furniture": "not a list", "scene": {"room": 3}}')
    (front / "zz_truncated.json").write_text('{"furniture": [')
    out = tmp_path / "front"
    args = ["--source", "3d-front", "--front-dir", str(front), "--future-dir", str(future), "--n", "50", "--views-per-scene", "1",
            "--resolution", "64", "--samples", "2", "--no-denoise", "--min-visible-pixels", "1", "--no-ray", "--out", str(out)]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    info = load_dataset_json(out)
    bad = {Path(b["file"]).name for b in info["source_info"]["bad_houses"]}
    assert {"zz_broken.json", "zz_truncated.json"} <= bad and info["source_info"]["bad_house_count"] >= 2
    r = _cli(*args[:-1], str(tmp_path / "strict"), "--strict")
    assert r.returncode == 1 and "zz_broken.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_front3d_missing_front_dir_is_a_one_line_error(tmp_path):
    r = _cli("--source", "3d-front", "--front-dir", str(tmp_path / "nope"), "--future-dir", str(tmp_path), "--n", "1",
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--front-dir" in r.stderr


# -------------------------------------------------------------------------- Ray on a cluster --


@pytest.mark.blender
def test_datagen_on_a_node_where_a_ray_cluster_runs(tmp_path):
    """`ray start --head` is the usual state of a cluster node: without --address we still run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard",
                             "false", "--block", "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the head answers
            if subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{port}"], env=env,
                              capture_output=True).returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("ray head did not start")
        args = [a for a in TINY if a != "--no-ray"]
        r = subprocess.run([str(BIN / "iscene-datagen"), *args, "--n", "2", "--out", str(tmp_path / "ray_default")],
                           capture_output=True, text=True, env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert load_dataset_json(tmp_path / "ray_default")["counts"]["samples"] >= 1
    finally:
        import signal

        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        current = Path("/tmp/ray/ray_current_cluster")  # do not leave later ray.init() calls a dead head to join
        if current.is_file() and str(port) in current.read_text():
            current.unlink()


# ----------------------------------------------------------------------------- CLI family --


@pytest.mark.parametrize("args", [
    ["--n", "1", "--out", "{file}"],
    ["--n", "1", "--out", "/proc/iscene-out"],
    ["--n", "1", "--scenes-per-shard", "0", "--out", "{tmp}/o"],
    ["--n", "1", "--grid", "0", "--out", "{tmp}/o"],
    ["--n", "1", "--grid", "256", "--out", "{tmp}/o"],
    ["--n", "1", "--resolution", "7", "--out", "{tmp}/o"],
    ["--n", "0", "--out", "{tmp}/o"],
    ["--n", "1", "--views-per-scene", "0", "--out", "{tmp}/o"],
    ["--n", "1", "--min-instances", "5", "--max-instances", "2", "--out", "{tmp}/o"],
    ["--n", "1", "--assets", "{tmp}/no-catalog", "--out", "{tmp}/o"],
    ["stats", "{tmp}/missing"], ["preview", "{tmp}/missing", "--out", "{tmp}/p.png"], ["verify", "{file}"],
    ["layout", "--procedural", "--n", "0", "--out", "{tmp}/l.jsonl"],
])
def test_datagen_bad_arguments_give_one_line_and_exit_2(tmp_path, args):
    f = tmp_path / "a_file"
    f.write_text("x")
    argv = [a.format(file=f, tmp=tmp_path) for a in args]
    if argv[0] not in ("stats", "preview", "verify", "layout"):
        argv = ["--procedural", "--no-ray"] + argv
    r = _cli(*argv)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args", [["build", "--source", "procedural", "--n", "0", "--out", "{tmp}/c"],
                                  ["build", "--source", "dir", "{tmp}/nope", "--out", "{tmp}/c"],
                                  ["build", "--source", "dir", "{file}", "--out", "{tmp}/c"],
                                  ["build", "--source", "procedural", "--out", "{file}"],
                                  ["stats", "{tmp}/missing"], ["validate", "{tmp}/missing"]])
def test_assets_bad_arguments_give_one_line_and_exit_2(tmp_path, args):
    f = tmp_path / "a_file"
    f.write_text("x")
    r = _cli(*[a.format(file=f, tmp=tmp_path) for a in args], cmd="iscene-assets")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("module,argv", [("datagen.cli", ["--help"]), ("datagen.cli", ["verify", "--help"]),
                                         ("datagen.cli", ["layout", "--help"]), ("assets_manifest.cli", ["build", "--help"])])
def test_help_imports_nothing_heavy(module, argv):
    """--help must answer in well under a second: no torch, bpy, ray, trimesh or scipy before parsing."""
    code = (f"import sys, time; t = time.perf_counter(); from {module} import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'bpy', 'ray', 'trimesh', 'scipy', 'pyarrow', 'webdataset') if m in sys.modules)\n"
            "print(heavy, time.perf_counter() - t, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    heavy, seconds = r.stderr.strip().splitlines()[-1].rsplit(" ", 1)
    assert heavy == "[]", heavy
    assert "usage" in r.stdout


def test_tests_use_a_temporary_registry_and_cache():
    home_cache = str(Path.home() / ".cache")
    assert not str(registry_path()).startswith(home_cache)
    assert not os.environ["ISCENE_CACHE"].startswith(home_cache)
