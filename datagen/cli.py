"""`iscene-datagen`: one entry point, thin over library functions.

    iscene-datagen [generate options]      make a dataset (default when no subcommand is given)
    iscene-datagen layout ...               scene specs only (JSONL), no rendering
    iscene-datagen verify DIR               check every sample against SHARD_FORMAT.md
    iscene-datagen preview DIR --out PNG    contact sheet
    iscene-datagen stats DIR                dataset statistics and a plot

Each subcommand lives in its own module exposing ``build_parser()`` and ``main(argv)``; modules are
imported lazily so `--help` stays fast and a missing optional dependency only hurts its own command.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "generate": "datagen.generate_cli",
    "layout": "datagen.layout_cli",
    "verify": "datagen.verify",
    "preview": "datagen.preview",
    "stats": "datagen.stats",
}

USAGE = __doc__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(USAGE.strip())
        print("\nGenerate options:\n")
        argv = ["generate", "--help"]
    name = argv[0] if argv and argv[0] in SUBCOMMANDS else "generate"
    rest = argv[1:] if argv and argv[0] in SUBCOMMANDS else argv
    module = importlib.import_module(SUBCOMMANDS[name])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
