"""The ``audiossl prep NAME ...`` and ``audiossl stats DIR`` verbs.

``prep`` dispatches to the converter ``data_prep.NAME`` (``folder``, ``esc50``, ``audioset``, ``synth``); each is also
runnable as ``python -m data_prep.NAME``. ``stats`` computes fbank mean/std into the manifest (:mod:`.stats`).
"""

from __future__ import annotations

import importlib
import sys

USAGE = """usage: audiossl prep NAME [ARGS...] --out DIR [--workers N] [--seed S] [--keep-order]

Convert a dataset into audiossl shards (DIR/manifest.json + DIR/{split}/*.tar). Samples are written in a
seeded random order (--seed, default 0), so no shard holds only one label or source; --keep-order keeps the
input order.

converters:
  folder    your own audio listed in a CSV: --csv FILE --audio-root DIR [--labels FILE] [--drop-unknown]
  esc50     an ESC-50-master download: --root DIR [--esc10]
  audioset  official segment CSVs + downloaded clips: --segments CSV [CSV ...] --audio-dir DIR
  synth     the procedural demo corpus: [--num-clips N] [--seed S] [--clip-seconds 2.0]
  speech    spoken digits in many voices (espeak-ng + sox): audio folder + CSV for folder [--shards DIR]

audiossl prep NAME --help shows a converter's options."""


def prep(argv: list[str]) -> int:
    from data_prep import CONVERTERS

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in CONVERTERS:
        print(f"audiossl prep: unknown converter {name!r}; choose one of: {', '.join(CONVERTERS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"data_prep.{name}").main(rest) or 0)


def stats(argv: list[str]) -> int:
    from audiossl.data.stats import main

    return int(main(argv) or 0)
