"""The two kinds of failure iscene-eval distinguishes."""

from __future__ import annotations


class EvalError(RuntimeError):
    """Bad arguments or paths (exit 2): missing bench, unreadable manifest, unknown protocol."""


class SceneError(RuntimeError):
    """One scene cannot be scored (corrupt GLB, no instance nodes...): recorded, the rest go on."""
