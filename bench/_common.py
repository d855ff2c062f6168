"""Small helpers shared by the benchmark scripts: where shared fixtures are, writing results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ISCENE_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "bench" / "results"


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **result}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
