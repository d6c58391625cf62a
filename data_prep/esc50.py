"""ESC-50 -> shards (``audiossl prep esc50 --root ESC-50-master``).

Reads the official download: ``meta/esc50.csv`` (``filename,fold,target,category,esc10,src_file,take``) and
``audio/{fold}-{freesound id}-{take}-{target}.wav`` (5 s, 44.1 kHz, resampled to 16 kHz). All 2,000 clips go to one
``train`` split with their ``fold`` in the json; label order is ``target`` (the packaged 50-class list). ESC-50 is
evaluated by 5-fold cross-validation over the predefined folds — train on four, test on the held-out one
(``AudioDataModule(eval_fold=K)``), report the mean accuracy — which the manifest records. ``--esc10``: the
ESC-10 subset (400 clips, 10 classes re-indexed in target order).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from audiossl.data.labels import esc50_labels
from audiossl.data.writer import (
    MISSING, Clip, WriterOptions, add_writer_args, options_from_args, safe_key, write_dataset,
)
from data_prep import report_bad_input

META_COLUMNS = ("filename", "fold", "target", "category", "esc10")


def read_meta(root: Path) -> list[dict]:
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise ValueError(f"{meta} not found: --root must be the ESC-50-master folder (with audio/ and meta/)")
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in META_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{meta}: missing columns {missing}; expected {','.join(META_COLUMNS)},...")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append({"filename": r["filename"].strip(), "fold": int(r["fold"]), "target": int(r["target"]),
                             "category": r["category"].strip(), "esc10": r["esc10"].strip().lower() == "true"})
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{meta} line {line}: {e}") from None
    return rows


def convert(root: str, out: str, esc10: bool = False, options: WriterOptions | None = None):
    """Convert an ``ESC-50-master`` folder; returns the writer's report."""
    base = Path(root)
    rows = read_meta(base)
    space = esc50_labels()
    for r in rows:
        if not 0 <= r["target"] < len(space) or space.names[r["target"]] != r["category"]:
            raise ValueError(f"meta/esc50.csv: {r['filename']} has target {r['target']} / category "
                             f"{r['category']!r}, which does not match the ESC-50 class list")
    if esc10:
        rows = [r for r in rows if r["esc10"]]
        targets = sorted({r["target"] for r in rows})
        space = space.subset(targets)
        remap = {t: i for i, t in enumerate(targets)}
    else:
        remap = {i: i for i in range(len(space))}
    rejected, clips = [], []
    for r in rows:
        path = base / "audio" / r["filename"]
        if not path.is_file():
            rejected.append((str(path), MISSING))
            continue
        stem = Path(r["filename"]).stem
        idx = remap[r["target"]]
        meta = {"id": stem, "labels": [space.names[idx]], "label_idx": [idx], "source": "esc50", "fold": r["fold"]}
        clips.append(Clip(key=safe_key(stem), split="train", meta=meta, path=str(path)))
    folds = sorted({r["fold"] for r in rows})
    evaluation = {
        "protocol": f"{len(folds)}-fold cross-validation over the predefined folds: train on the others, test on "
        "the held-out fold (AudioDataModule eval_fold=K), report the mean top-1 accuracy over the folds",
        "fold_field": "fold",
        "folds": folds,
        "metric": "accuracy",
    }
    return write_dataset(
        out,
        clips,
        labels=space,
        multi_label=False,
        options=options,
        params={"converter": "esc50", "root": str(root), "esc10": esc10},
        rejected=rejected,
        evaluation=evaluation,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl prep esc50", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the ESC-50-master folder (audio/ and meta/esc50.csv)")
    p.add_argument("--esc10", action="store_true", help="only the ESC-10 subset (10 classes, 400 clips)")
    add_writer_args(p)
    args = p.parse_args(argv)
    return report_bad_input("esc50", lambda: convert(args.root, args.out, args.esc10, options_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
