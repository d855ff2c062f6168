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
    """Every test registers datasets in a temporary registry, never in the user's ~/.cache/iscene."""
    path = tmp_path_factory.mktemp("registry") / "datasets.json"
    old = os.environ.get("ISCENE_REGISTRY")
    os.environ["ISCENE_REGISTRY"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ISCENE_REGISTRY", None)
    else:
        os.environ["ISCENE_REGISTRY"] = old


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
