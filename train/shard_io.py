"""Reading one shard for training: sha256 check on first open, samples from an offset on.

The trainer resumes by *seeking*: a checkpoint stores, per source, which shard it was reading and
how many samples of it were consumed, and :func:`read_shard` skips that many samples by reading
tar headers only (``tarfile`` seeks over member data in a local file), instead of replaying every
earlier batch. Remote shards (registry URLs with an enabled scheme) are streamed with WebDataset's
``gopen``; skipping there reads and drops bytes of that one shard only.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

from iscene_core.shards import file_sha256

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_verified: dict[str, str] = {}  # per process: shard -> sha256 already checked


class DataError(RuntimeError):
    """Training data that cannot be used (a changed shard, too many bad samples, nothing usable).

    One argument only, so it survives the DataLoader's re-raise in the main process intact.
    """


def is_local(url: str) -> bool:
    return not _REMOTE.match(url) or url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(url[len("file://"):] if url.startswith("file://") else url)


def verify_shard(url: str, expected: str | None) -> None:
    """Compare a local shard's sha256 with the dataset's record once per process (DataError on mismatch)."""
    if expected is None or not is_local(url) or _verified.get(url) == expected:
        return
    path = local_path(url)
    if not path.is_file():
        raise DataError(f"shard {url}: missing (listed in the dataset's index); regenerate or re-download the dataset")
    got = file_sha256(path)
    if got != expected:
        raise DataError(f"shard {url}: sha256 {got[:16]}... differs from the dataset's record {expected[:16]}... "
                        "(changed or damaged since it was made: run `iscene-datagen verify`, or pass --no-verify)")
    _verified[url] = expected


def read_shard(url: str, start: int = 0) -> Iterator[tuple[int, dict]]:
    """``(index, raw sample)`` for samples ``start, start + 1, ...`` of a shard, in tar order.

    A raw sample is ``{"__key__": key, "rgb.png": bytes, ...}`` (the WebDataset convention). Samples
    before ``start`` are skipped without reading their data. A truncated or corrupt tar raises
    :class:`tarfile.TarError`/``OSError`` from the point where it breaks; the caller decides.
    """
    if is_local(url):
        tar = tarfile.open(local_path(url), mode="r:")
    else:
        from webdataset.gopen import gopen

        tar = tarfile.open(fileobj=gopen(url, "rb"), mode="r|*")
    with tar:
        index, key, files = -1, None, {}
        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = Path(member.name).name.partition(".")
            if k != key:
                if key is not None and index >= start:
                    yield index, {"__key__": key, **files}
                index, key, files = index + 1, k, {}
            if index >= start:
                files[ext] = tar.extractfile(member).read()
        if key is not None and index >= start:
            yield index, {"__key__": key, **files}


READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
