"""A user's own audio listed in a CSV -> shards (``audiossl prep folder``).

The CSV has one row per clip: ``path,labels[,split][,fold]`` — ``path`` relative to ``--audio-root`` (or absolute),
``labels`` ``;``-separated class names (may be empty for unlabelled audio), ``split`` (default ``train``), ``fold``
(an integer, for cross-validation with ``AudioDataModule(eval_fold=K)``). A header line naming the columns is
optional; with one, columns may come in any order. The CSV may list the clips in any order (by class, speaker,
folder): the writer shuffles them (``--seed``; ``--keep-order`` to opt out), so every shard holds a mix.

Label space: the sorted union of the labels, or ``--labels FILE`` (a ``index,mid,display_name`` CSV or one name per
line), in which case a label outside it is an error listing every unknown label, or, with ``--drop-unknown``, the
rows holding one are left out and listed in ``rejected.tsv``. The dataset is multi-label if any row has more than one
label or none — unlabelled rows get an all-zero target, so a CSV of unlabelled audio makes a pretraining set
(``--multi-label``/``--single-label`` override; single-label rejects rows without exactly one label).

Example::

    path,labels,split
    dogs/rex_01.wav,dog,train
    street/0007.flac,car;horn,eval
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from audiossl.data.labels import LabelSpace, read_label_file
from audiossl.data.writer import (
    MISSING, Clip, WriterOptions, add_writer_args, options_from_args, safe_key, write_dataset,
)
from audiossl.data.storage import input_file
from data_prep import report_bad_input

COLUMNS = ("path", "labels", "split", "fold")
# first-line cells that mean "this is a header", so a header with other column names is an error, not a clip
_HEADER_LIKE = {"file", "filename", "file_name", "filepath", "file_path", "audio", "audio_path", "label", "class",
                "classes", "category", "target"}


@dataclass
class Row:
    line: int
    path: str
    labels: list[str]
    split: str
    fold: int | None


def read_rows(csv_path: str | Path) -> list[Row]:
    """Parse the CSV; a malformed line (no path, a non-integer fold, a bad split name) is an error naming it."""
    csv_path = input_file(csv_path, "CSV file")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        records = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if any(c.strip() for c in r)]
    if not records:
        raise ValueError(f"{csv_path} holds no rows")
    columns: dict[str, int] = {c: i for i, c in enumerate(COLUMNS)}
    head = [c.strip().lower() for c in records[0][1]]
    if any(c in COLUMNS or c in _HEADER_LIKE for c in head):  # a header line (a clip path is never just "labels")
        unknown = [c for c in head if c not in COLUMNS]
        if unknown or "path" not in head:
            raise ValueError(
                f"{csv_path}: the header names columns {head}"
                + (f"; unknown: {unknown}" if unknown else "") + (" and no 'path' column" if "path" not in head else "")
                + f". Name the columns {', '.join(COLUMNS)} (path at least), or drop the header line "
                "to use that order"
            )
        columns = {c: head.index(c) for c in COLUMNS if c in head}
        records = records[1:]
    rows = []
    for line, rec in records:
        def cell(name: str, rec=rec) -> str:
            i = columns.get(name)
            return rec[i].strip() if i is not None and i < len(rec) else ""

        path = cell("path")
        if not path:
            raise ValueError(f"{csv_path} line {line}: empty path")
        labels = [x.strip() for x in cell("labels").split(";") if x.strip()]
        split = cell("split") or "train"
        if not split.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{csv_path} line {line}: split {split!r} must be letters, digits, '_' or '-'")
        fold_text = cell("fold")
        try:
            fold = int(fold_text) if fold_text else None
        except ValueError:
            raise ValueError(f"{csv_path} line {line}: fold {fold_text!r} is not an integer") from None
        rows.append(Row(line, path, labels, split, fold))
    return rows


def _key(path: str) -> str:
    p = Path(path)
    return safe_key(str(p.with_suffix("")).lstrip("/"))


def convert(
    csv_path: str,
    audio_root: str,
    out: str,
    labels_file: str | None = None,
    drop_unknown: bool = False,
    multi_label: bool | None = None,
    options: WriterOptions | None = None,
):
    """Convert the clips listed in ``csv_path``; returns the writer's report."""
    rows = read_rows(csv_path)
    root = Path(audio_root)
    if not root.is_dir():
        raise ValueError(f"--audio-root {root} is not a folder")
    rejected: list[tuple[str, str]] = []
    if labels_file:
        space = read_label_file(labels_file)
        unknown = Counter(label for r in rows for label in r.labels if label not in space)
        if unknown and not drop_unknown:
            listed = ", ".join(f"{k!r} ({n} rows)" for k, n in sorted(unknown.items())[:30])
            more = f" and {len(unknown) - 30} more" if len(unknown) > 30 else ""
            raise ValueError(
                f"{len(unknown)} labels in {csv_path} are not in {labels_file}: {listed}{more}. "
                "Fix the CSV or the label file, or pass --drop-unknown to leave those rows out."
            )
    else:
        space = LabelSpace.from_names(sorted({label for r in rows for label in r.labels}))
    if multi_label is None:  # an unlabelled row is an all-zero multi-hot target (e.g. audio for pretraining)
        multi_label = any(len(r.labels) != 1 for r in rows)
    clips = []
    for r in rows:
        idx, unknown_labels = space.split_known(r.labels)
        path = Path(r.path) if Path(r.path).is_absolute() else root / r.path
        source = str(path)
        if unknown_labels:
            rejected.append((source, f"unknown label(s) {unknown_labels} not in {labels_file}"))
            continue
        idx = sorted(set(idx))  # index order, each label once
        if not multi_label and len(idx) != 1:
            rejected.append((source, f"single-label dataset but line {r.line} has {len(idx)} labels"))
            continue
        if not path.is_file():
            rejected.append((source, MISSING))
            continue
        meta = {"id": r.path, "labels": [space.names[i] for i in idx], "label_idx": idx, "source": "folder"}
        if r.fold is not None:
            meta["fold"] = r.fold
        clips.append(Clip(key=_key(r.path), split=r.split, meta=meta, path=str(path)))
    splits = {r.split for r in rows}
    folds = sorted({r.fold for r in rows if r.fold is not None})
    if "eval" in splits:
        evaluation = {"split": "eval"}
    elif folds:
        evaluation = {"protocol": "cross-validation over the fold column (AudioDataModule eval_fold=K)",
                      "fold_field": "fold", "folds": folds}
    else:
        evaluation = None
    return write_dataset(
        out,
        clips,
        labels=space,
        multi_label=multi_label,
        options=options,
        params={"converter": "folder", "csv": str(csv_path), "audio_root": str(audio_root), "labels": labels_file,
                "drop_unknown": drop_unknown},
        rejected=rejected,
        evaluation=evaluation,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl prep folder", description=__doc__.split("\n\n")[0],
                                epilog="CSV columns: path,labels[,split][,fold]; labels ';'-separated")
    p.add_argument("--csv", required=True, help="CSV listing the clips: path,labels[,split][,fold]")
    p.add_argument("--audio-root", required=True, help="folder the CSV paths are relative to")
    p.add_argument("--labels", default=None, help="fix the label space (index,mid,display_name CSV or names)")
    p.add_argument("--drop-unknown", action="store_true", help="leave out rows with labels outside --labels")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--multi-label", dest="multi_label", action="store_true", default=None)
    kind.add_argument("--single-label", dest="multi_label", action="store_false")
    add_writer_args(p)
    args = p.parse_args(argv)
    return report_bad_input("folder", lambda: convert(args.csv, args.audio_root, args.out, args.labels,
                                                      args.drop_unknown, args.multi_label, options_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
