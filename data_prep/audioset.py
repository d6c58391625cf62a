"""AudioSet -> shards (``audiossl prep audioset --segments CSV [CSV ...] --audio-dir DIR``).

Segment CSVs in the official format: three ``#`` header lines, then ``YTID, start_seconds, end_seconds,
"mid,mid,..."`` (fields separated by ``, ``, the MIDs comma-joined in double quotes). Each CSV becomes a split named
after the file (``balanced_train_segments.csv`` -> ``balanced_train``). Labels map through the packaged 527-class
``class_labels_indices.csv`` (the logit order of every published AudioSet model).

Clips are found anywhere under ``--audio-dir`` (scanned once, recursively) by file stem, with any audio extension:
``Y{YTID}``, ``{YTID}``, ``{YTID}_{start}`` (start as ``30``, ``30.0``, ``30.000``), ``{YTID}_{start*1000}_{end*1000}``,
``{YTID}_{start}_{end}``, each also with a ``Y`` prefix. Clips that cannot be found are counted and listed in
``rejected.tsv`` as ``missing``: every real copy of AudioSet lacks some.

Balancing weights (the AudioMAE recipe for AS-2M): over the found clips of all training splits converted together
(every split except ``eval``), label weight ``1000 / (count + 0.01)`` and sample weight the sum over the clip's labels;
stored as ``weight`` in each json and in ``DIR/{split}_weights.csv`` (rows in shard order, which is shuffled like
every converter's unless ``--keep-order``). Convert ``balanced_train`` and
``unbalanced_train`` in one run and train with ``AudioDataModule(train_split="balanced_train+unbalanced_train",
weighted=True)`` for AS-2M.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from audiossl.frontend.audio import AUDIO_EXTENSIONS
from audiossl.data.labels import audioset_labels
from audiossl.data.writer import (
    MISSING, Clip, LazyClips, WriterOptions, add_writer_args, options_from_args, safe_key, write_dataset,
)
from audiossl.data.storage import input_file
from data_prep import report_bad_input

EVAL_SPLITS = ("eval",)


@dataclass
class Segment:
    ytid: str
    start: float
    end: float
    mids: list[str]
    line: int


def split_name(csv_path: str | Path) -> str:
    stem = Path(csv_path).stem
    return stem[: -len("_segments")] if stem.endswith("_segments") else stem


def read_segments(path: str | Path) -> tuple[list[Segment], list[tuple[str, str]]]:
    """``(segments, bad lines as (source, reason))`` of an official segment CSV."""
    path = input_file(path, "segment CSV")
    segments, bad = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for line, rec in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            if not rec or not "".join(rec).strip() or rec[0].lstrip().startswith("#"):
                continue
            source = f"{path.name}:{line}"
            if len(rec) < 4:
                bad.append((source, f"malformed line: expected YTID, start, end, \"labels\"; got {rec!r}"))
                continue
            try:
                start, end = float(rec[1]), float(rec[2])
            except ValueError:
                bad.append((source, f"malformed line: start/end {rec[1]!r}, {rec[2]!r} are not numbers"))
                continue
            mids = [m.strip() for m in ",".join(rec[3:]).split(",") if m.strip()]
            segments.append(Segment(rec[0].strip(), start, end, mids, line))
    return segments, bad


def index_audio(audio_dir: str | Path) -> dict[str, str]:
    """``{file stem: path}`` of every audio file under ``audio_dir`` (sorted walk: the first path wins)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(audio_dir):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in AUDIO_EXTENSIONS:
                found.setdefault(stem, os.path.join(dirpath, name))
    return found


def _number_forms(x: float) -> list[str]:
    forms = [f"{x:.3f}", f"{x:.1f}", f"{x:g}"]
    if float(x).is_integer():
        forms.append(str(int(x)))
    return list(dict.fromkeys(forms))


def candidate_stems(ytid: str, start: float, end: float) -> list[str]:
    """File stems a clip may have on disk, most specific first."""
    stems = [f"{ytid}_{round(start * 1000)}_{round(end * 1000)}"]
    stems += [f"{ytid}_{s}_{e}" for s, e in zip(_number_forms(start), _number_forms(end))]
    stems += [f"{ytid}_{s}" for s in _number_forms(start)]
    stems += [ytid]
    return list(dict.fromkeys([f"Y{s}" for s in stems] + stems))


def find_clip(index: dict[str, str], seg: Segment) -> str | None:
    for stem in candidate_stems(seg.ytid, seg.start, seg.end):
        if stem in index:
            return index[stem]
    return None


def label_weights(label_lists: list[list[int]]) -> dict[int, float]:
    """AudioMAE's AS-2M balancing: ``1000 / (count + 0.01)`` per label over the given clips."""
    counts = Counter(i for labels in label_lists for i in labels)
    return {i: 1000.0 / (n + 0.01) for i, n in counts.items()}


def convert(segments: list[str], audio_dir: str, out: str, options: WriterOptions | None = None):
    """Convert the clips of the segment CSVs found under ``audio_dir``; returns the writer's report."""
    if not Path(audio_dir).is_dir():
        raise ValueError(f"--audio-dir {audio_dir} is not a folder")
    for path in segments:  # before the (long) scan of the audio folder
        input_file(path, "segment CSV")
    names = [split_name(p) for p in segments]
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup:
        raise ValueError(f"two segment CSVs make the same split {dup}: rename one")
    space = audioset_labels()
    print(f"indexing audio files under {audio_dir} ...", flush=True)
    index = index_audio(audio_dir)
    print(f"  {len(index)} audio files", flush=True)
    rejected: list[tuple[str, str]] = []
    found: list[tuple[str, Segment, str, list[int]]] = []
    for csv_path, split in zip(segments, names):
        segs, bad = read_segments(csv_path)
        rejected += bad
        for seg in segs:
            source = f"{split}/{seg.ytid}"
            idx, unknown = space.split_known(seg.mids)
            if unknown:
                rejected.append((source, f"unknown label(s) {unknown}: not among the 527 AudioSet classes"))
                continue
            idx = sorted(set(idx))  # index order, each label once
            path = find_clip(index, seg)
            if path is None:
                rejected.append((source, MISSING))
                continue
            found.append((split, seg, path, idx))
    weights = label_weights([idx for split, _, _, idx in found if split not in EVAL_SPLITS])

    def make(i: int) -> Clip:  # made on demand: ~2M Clip objects with their json dicts would hold gigabytes
        split, seg, path, idx = found[i]
        meta = {"id": seg.ytid, "labels": [space.mids[j] for j in idx], "label_idx": idx,
                "source": f"audioset/{split}", "start": seg.start, "end": seg.end}
        if split not in EVAL_SPLITS:
            meta["weight"] = round(sum(weights[j] for j in idx), 6)
        return Clip(key=safe_key(f"{seg.ytid}_{round(seg.start * 1000)}"), split=split, meta=meta, path=path)

    evaluation = {"split": "eval", "metric": "mAP"} if "eval" in names else None
    return write_dataset(
        out,
        LazyClips(len(found), make),
        labels=space,
        multi_label=True,
        options=options,
        params={"converter": "audioset", "segments": [str(s) for s in segments], "audio_dir": str(audio_dir),
                "weights": "AudioMAE: label weight 1000/(count+0.01) over found clips of all non-eval splits; "
                           "sample weight = sum over its labels"},
        rejected=rejected,
        evaluation=evaluation,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl prep audioset", description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", nargs="+", required=True, help="official segment CSVs (one split each)")
    p.add_argument("--audio-dir", required=True, help="folder holding the downloaded clips (searched recursively)")
    add_writer_args(p)
    args = p.parse_args(argv)
    return report_bad_input("audioset", lambda: convert(args.segments, args.audio_dir, args.out,
                                                        options_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
