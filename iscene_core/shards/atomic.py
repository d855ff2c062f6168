"""Writes that are never seen half-done, file hashes, and a lock on an output folder.

Every file the project writes is written under a temporary name in the same folder and renamed
(``os.replace`` is atomic on POSIX), so a kill at any moment leaves either the old or the new file.
The folder lock is an ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops it when the holder
dies, so a SIGKILLed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (the project's one file-hash helper)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON through a temporary file."""
    write_bytes_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


class LockedError(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """Exclusive lock on an output folder for the lifetime of a run (a context manager).

    ``wait=False`` raises :class:`LockedError` naming the holder (its pid and command, read from the
    lock file) instead of blocking, so a second writer gets a message, not a silent interleave.
    """

    def __init__(self, folder: str | Path, purpose: str = "run", wait: bool = False):
        self.folder = Path(folder)
        self.purpose = purpose
        self.wait = wait
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / ".lock"

    def __enter__(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.folder} is in use by {holder}; wait for it to finish or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({self.purpose})\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
