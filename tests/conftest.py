"""Shared fixtures: where ../shared lives, and clean skips for Blender / GPU tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ISCENE_SHARED", REPO.parent / "shared"))


def _has_bpy() -> bool:
    return importlib.util.find_spec("bpy") is not None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    skip_bpy = pytest.mark.skip(reason="bpy (Blender as a module) is not importable")
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    has_bpy, has_gpu = _has_bpy(), _has_cuda()
    for item in items:
        if "blender" in item.keywords and not has_bpy:
            item.add_marker(skip_bpy)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def private_registry(tmp_path_factory) -> Path:
    """Every test registers datasets in a temporary registry and caches procedural catalogs in a
    temporary folder: nothing is written to the user's ~/.cache/iscene."""
    path = tmp_path_factory.mktemp("registry") / "datasets.json"
    saved = {k: os.environ.get(k) for k in ("ISCENE_REGISTRY", "ISCENE_CACHE")}
    os.environ["ISCENE_REGISTRY"] = str(path)
    os.environ["ISCENE_CACHE"] = str(tmp_path_factory.mktemp("iscene_cache"))
    yield path
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def shared_assets(shared_dir: Path) -> Path:
    return shared_dir / "assets"


@pytest.fixture(scope="session")
def trellis_reference(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "trellis_stage1"
