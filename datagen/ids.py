"""Scene identities: (dataset seed, scene index) -> scene id and per-scene seed.

Every stage derives its randomness from the per-scene seed alone, so a scene can be regenerated
by itself and a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import numpy as np


def scene_id(index: int) -> str:
    """Scene id of the ``index``-th scene of a dataset, e.g. ``s00001234``."""
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    return f"s{index:08d}"


def scene_seed(dataset_seed: int, index: int) -> int:
    """Per-scene 32-bit seed from (dataset seed, scene index); stable across numpy versions."""
    return int(np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def scene_rng(dataset_seed: int, index: int, stream: str = "layout") -> np.random.Generator:
    """Independent generator for one stage (``stream``) of one scene."""
    tag = int.from_bytes(stream.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng(np.random.SeedSequence([int(dataset_seed), int(index), tag]))
