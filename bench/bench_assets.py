"""Assets ingested per second on ../shared/assets, against plain loading of the same files.

    python bench/bench_assets.py [--workers 1 2]
Ingest = load + validate + normalise + decimated collision proxy + sha256 + manifest row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import SHARED, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    import trimesh

    from assets_manifest import build_catalog, load_manifest
    from assets_manifest.sources import dir_items

    src = SHARED / "assets"
    files = [i.path for i in dir_items(src)]
    t0 = time.perf_counter()
    for f in files:
        trimesh.load(f, force="mesh", process=False)
    load_s = time.perf_counter() - t0
    rows = {"files": len(files), "plain_load_s": load_s, "plain_load_per_s": len(files) / load_s}
    for w in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            n = len(load_manifest(build_catalog("dir", tmp, inputs=src, workers=w, progress=False)))
            dt = time.perf_counter() - t0
            rows[f"ingest_workers{w}_s"] = dt
            rows[f"ingest_workers{w}_per_s"] = n / dt
            rows[f"ingest_workers{w}_vs_plain_load"] = dt / load_s
    for k, v in rows.items():
        print(f"{k:32s} {v:10.3f}" if isinstance(v, float) else f"{k:32s} {v:10d}")
    print("->", write_result("assets", rows))


if __name__ == "__main__":
    main()
