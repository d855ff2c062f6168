"""A small rendered dataset and its evaluation bench, made the way a user makes them.

Both `iscene-datagen` (procedural assets, Blender, no Ray) and `iscene-eval make-bench` run for
real, so tests of the evaluation commands score data with the renderer's own masks and voxels.
The registry and asset cache go under ``root`` so a test module never touches the user's.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_rendered_bench(root: Path, name: str, *, scenes: int, catalog: int, min_instances: int, max_instances: int,
                        extra: tuple[str, ...] = ()) -> dict[str, Path]:
    """Render ``scenes`` scenes at 64 px into ``root/ds`` and make ``root/bench`` from them;
    returns ``{"ds": ..., "bench": ...}``. ``extra`` adds datagen flags (e.g. ``--space both``)."""
    from datagen.cli import main as datagen_main
    from iscene_core.evaluation.cli import main as eval_main

    os.environ["ISCENE_CACHE"] = str(root / "cache")
    os.environ["ISCENE_REGISTRY"] = str(root / "registry.json")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    flags = ["--procedural", "--procedural-n", str(catalog), "--n", str(scenes), "--views-per-scene", "1",
             "--resolution", "64", "--samples", "2", "--no-denoise", "--min-visible-pixels", "4", "--no-ray",
             "--min-instances", str(min_instances), "--max-instances", str(max_instances), *extra,
             "--out", str(root / "ds"), "--name", name]
    assert datagen_main(flags) == 0, f"iscene-datagen {' '.join(flags)} failed"
    assert eval_main(["make-bench", "--from", str(root / "ds"), "--out", str(root / "bench"), "--no-progress"]) == 0
    return {"ds": root / "ds", "bench": root / "bench"}
