"""Bounded JSON parsing for files that come from outside (dataset folders, shards, benches).

A hostile or broken file must cost a clear error, not a RecursionError deep in the decoder or a
multi-gigabyte allocation: the size is checked before decoding, nesting is bounded by the decoder's
own recursion guard (turned into a ValueError), and callers check value ranges before they allocate.
"""

from __future__ import annotations

import json
from pathlib import Path


class BadJSON(ValueError):
    """A JSON document that is too large, too deeply nested or not JSON."""


def loads_bounded(data: bytes | str, max_bytes: int, what: str = "JSON") -> object:
    """Parse ``data`` (at most ``max_bytes``); every failure is a :class:`BadJSON` naming ``what``."""
    if len(data) > max_bytes:
        raise BadJSON(f"{what}: {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        return json.loads(data)
    except RecursionError:
        raise BadJSON(f"{what}: nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadJSON(f"{what}: not valid JSON ({exc})") from None


def load_bounded(path: str | Path, max_bytes: int) -> object:
    """Parse a JSON file after checking its size on disk."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise BadJSON(f"{path}: {size} bytes, more than the limit of {max_bytes}")
    return loads_bounded(path.read_bytes(), max_bytes, str(path))


def require_dict(obj: object, what: str) -> dict:
    if not isinstance(obj, dict):
        raise BadJSON(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj
