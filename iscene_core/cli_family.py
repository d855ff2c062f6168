"""What every I-Scene command does the same way: argument errors, path checks, exit codes.

The four tools (iscene-assets, iscene-datagen, iscene-train, iscene-infer) and their subcommands
share these rules, so the same mistake gives the same result everywhere:

- a bad argument, a missing input or an unusable output path: one line on stderr, exit 2;
- a run that starts and fails: one line naming the failure, exit 1;
- a traceback only with ``--debug`` (or ``ISCENE_DEBUG=1``).

This module imports only the standard library, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable


class UsageError(Exception):
    """A mistake in what the user asked for (flag, value, path): exit 2."""


class FamilyParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ... (see --help)``) and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_debug_flag(p: argparse.ArgumentParser, subcommand: bool = False) -> None:
    """``--debug``; on a subcommand's parser it must not reset a ``--debug`` given before the subcommand."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if subcommand else False,
                   help="show the full traceback when something fails")


def int_in(lo: int, hi: int | None = None, what: str = "value") -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi] (hi None = no upper bound)."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {s!r}") from None
        if v < lo or (hi is not None and v > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {v}")
        return v

    parse.__name__ = what
    return parse


def float_in(lo: float, hi: float, what: str = "value", lo_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in [lo, hi] (or (lo, hi] with ``lo_open``)."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {s!r}") from None
        if not (v > lo if lo_open else v >= lo) or not v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be in {'(' if lo_open else '['}{lo}, {hi}], got {s}")
        return v

    parse.__name__ = what
    return parse


def existing_dir(s: str) -> Path:
    """argparse type: a folder that exists (a file or a missing path is a usage error)."""
    p = Path(s)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{s}: no such folder")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{s}: is a file, expected a folder")
    return p


def existing_path(s: str) -> Path:
    p = Path(s)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{s}: no such file or folder")
    return p


def output_dir(s: str) -> Path:
    """argparse type: a folder we can write to (made if missing); a file or a read-only place is an error."""
    p = Path(s)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{s}: is a file, expected an output folder")
    probe = p.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not _can_write(probe):
        raise argparse.ArgumentTypeError(f"{s}: cannot write there ({probe} is not a writable folder)")
    return p


def _can_write(folder: Path) -> bool:
    """A real write probe: permission bits say nothing to root, and read-only mounts lie to os.access."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".iscene-write-probe", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def output_file(s: str) -> Path:
    """argparse type: a file path whose folder is (or can be made) writable; not a folder."""
    p = Path(s)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{s}: is a folder, expected a file name")
    output_dir(str(p.parent if str(p.parent) else "."))
    return p


USAGE_ERRORS: tuple[type[BaseException], ...] = (UsageError, argparse.ArgumentTypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                                 PermissionError, FileExistsError)


def run_guarded(prog: str, fn: Callable[[], int | None], debug: bool = False,
                usage_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``fn`` and map what escapes it to the family's exit codes (see module docs).

    ``usage_errors`` adds exception types that mean "the input was wrong" for this tool (for example
    the shard contract's DatasetError) to the standard ones.
    """
    debug = debug or os.environ.get("ISCENE_DEBUG") == "1"
    try:
        return int(fn() or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS + usage_errors as exc:
        if debug:
            raise
        print(f"{prog}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a run that failed: one line, the traceback only on request
        if debug:
            raise
        print(f"{prog}: failed: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and msg.startswith(("'", '"')):
        msg = msg[1:-1]
    return " ".join(msg.split())
