"""Converters from source datasets to audiossl shards, one module per source, each thin over
:func:`audiossl.data.writer.write_dataset`:

- ``folder``   a user's own audio files listed in a CSV (``path,labels[,split][,fold]``)
- ``esc50``    an ``ESC-50-master`` download
- ``audioset`` the official AudioSet segment CSVs plus a folder of downloaded clips
- ``synth``    the procedural demo corpus
- ``speech``   a spoken-digit benchmark synthesised with espeak-ng + sox (audio folder + CSV for ``folder``)

Each runs as ``audiossl prep NAME ... --out DIR`` or ``python -m data_prep.NAME ... --out DIR``.
"""

CONVERTERS = ("folder", "esc50", "audioset", "synth", "speech")


def report_bad_input(name: str, run) -> int:
    """Call ``run()`` (a converter); bad input (a ``ValueError`` or ``audiossl.errors.UserError``) becomes one line,
    ``audiossl prep NAME: error: ...``, and status 1. Returns 0 on success."""
    import sys

    from audiossl.errors import UserError

    try:
        run()
    except (ValueError, UserError) as e:
        print(f"audiossl prep {name}: error: {e}", file=sys.stderr)
        return 1
    return 0
