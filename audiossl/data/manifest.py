"""The dataset manifest: ``DIR/manifest.json``, the one file that says what a shard folder holds.

Layout of a dataset folder::

    DIR/manifest.json                      written last, atomically, by the shard writer
    DIR/{split}/{split}-000000.tar ...     shards: {key}.flac (16-bit mono) + {key}.json per sample
    DIR/rejected.tsv                       inputs that were not written: source<TAB>reason
    DIR/{split}_weights.csv                per-sample sampling weights (AudioSet), key,weight in shard order

``manifest.json`` (``format_version`` 1)::

    {"format_version": 1,
     "labels": {"names": [...], "mids": [...]},      # the label space, index order
     "num_classes": C, "multi_label": bool,
     "sample_rate": 16000,                            # null when --keep-rate left mixed rates
     "splits": {"train": {"samples": N, "duration": seconds, "min_duration": s, "max_duration": s,
                          "duration_percentiles": {"p50": s, "p90": s, "p95": s, "p99": s},  # older manifests: absent
                          "weights": "train_weights.csv" | null,
                          "shards": [{"path": "train/train-000000.tar", "samples": n, "duration": s,
                                      "bytes": b, "folds": [fold per sample] | absent}, ...]}, ...},
     "evaluation": {"split": "eval"} | {"protocol": ..., "fold_field": "fold", "folds": [...]} | null,
     "params": {...},                                 # how it was made (converter, options)
     "stats": {"mean": m, "std": s, "method": ..., ...} | null,   # set by `audiossl stats`
     "ontology": {group: [class names]} | null}

``DIR`` may also be a URL (``s3://``, ``gs://``, ``https://``, ``pipe:``; :mod:`audiossl.data.storage`): the manifest is
read from ``DIR/manifest.json`` there and every path in it is relative to ``DIR``.

Only shards listed here exist as far as readers are concerned: a crashed or running conversion never has its
half-written shards listed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from audiossl.data import storage
from audiossl.data.labels import LabelSpace
from audiossl.errors import DatasetError, DatasetNotFoundError, SplitNotFoundError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class ShardInfo:
    """One tar shard: ``path`` relative to the dataset folder, sample count, total audio seconds, size in bytes."""

    path: str
    samples: int
    duration: float
    bytes: int
    folds: list[int] | None = None  # the fold of each sample in shard order, for datasets with folds (ESC-50)

    def to_dict(self) -> dict:
        d = {"path": self.path, "samples": self.samples, "duration": round(self.duration, 3), "bytes": self.bytes}
        if self.folds is not None:
            d["folds"] = list(self.folds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardInfo":
        return cls(d["path"], int(d["samples"]), float(d.get("duration", 0.0)), int(d.get("bytes", 0)), d.get("folds"))


@dataclass
class SplitInfo:
    """A split: its shards in order plus totals."""

    shards: list[ShardInfo] = field(default_factory=list)
    min_duration: float = 0.0
    max_duration: float = 0.0
    weights: str | None = None  # relative path of the key,weight CSV, when samples carry weights
    duration_percentiles: dict[str, float] | None = None  # {"p50", "p90", "p95", "p99"} seconds; None: older manifest

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.shards)

    @property
    def has_folds(self) -> bool:
        return bool(self.shards) and all(s.folds is not None for s in self.shards)

    def duration_percentile(self, p: int) -> float | None:
        """The ``p``-th percentile of the clip durations (seconds) written at prep time; ``None`` if not recorded."""
        value = (self.duration_percentiles or {}).get(f"p{p}")
        return None if value is None else float(value)

    def to_dict(self) -> dict:
        d = {
            "samples": self.samples,
            "duration": round(self.duration, 3),
            "min_duration": round(self.min_duration, 3),
            "max_duration": round(self.max_duration, 3),
        }
        if self.duration_percentiles is not None:
            d["duration_percentiles"] = dict(self.duration_percentiles)
        d["weights"] = self.weights
        d["shards"] = [s.to_dict() for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SplitInfo":
        return cls(
            [ShardInfo.from_dict(s) for s in d.get("shards", [])],
            float(d.get("min_duration", 0.0)),
            float(d.get("max_duration", 0.0)),
            d.get("weights"),
            d.get("duration_percentiles"),
        )


@dataclass
class Manifest:
    """In-memory form of ``manifest.json`` (see the module docstring for the file layout)."""

    labels: LabelSpace
    multi_label: bool
    sample_rate: int | None
    splits: dict[str, SplitInfo]
    params: dict = field(default_factory=dict)
    evaluation: dict | None = None
    stats: dict | None = None
    ontology: dict | None = None
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> SplitInfo:
        """The split called ``name``; a ``SplitNotFoundError`` (a ``KeyError``) listing the splits there are otherwise."""
        if name not in self.splits:
            raise SplitNotFoundError(f"split {name!r} is not in this dataset; it has {sorted(self.splits)}")
        return self.splits[name]

    def evaluation_split(self) -> str | None:
        """``eval`` if there is one, else the split named by ``evaluation.split``, else ``None``."""
        if "eval" in self.splits:
            return "eval"
        split = (self.evaluation or {}).get("split")
        return split if split in self.splits else None

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "labels": self.labels.to_dict(),
            "num_classes": self.num_classes,
            "multi_label": self.multi_label,
            "sample_rate": self.sample_rate,
            "splits": {k: v.to_dict() for k, v in self.splits.items()},
            "evaluation": self.evaluation,
            "params": self.params,
            "stats": self.stats,
            "ontology": self.ontology,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = MANIFEST_NAME) -> "Manifest":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{source}: format_version {version!r} is not supported (this audiossl reads {FORMAT_VERSION}); "
                "re-create the dataset with `audiossl prep` or upgrade audiossl"
            )
        try:
            return cls(
                labels=LabelSpace.from_dict(d["labels"]),
                multi_label=bool(d["multi_label"]),
                sample_rate=d.get("sample_rate"),
                splits={k: SplitInfo.from_dict(v) for k, v in d["splits"].items()},
                params=d.get("params") or {},
                evaluation=d.get("evaluation"),
                stats=d.get("stats"),
                ontology=d.get("ontology"),
            )
        except KeyError as e:
            raise DatasetError(f"{source}: missing field {e}; the manifest is damaged, re-run `audiossl prep`") from None


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the complete new one, never a part.

    Writes ``path.tmp``, fsyncs it, renames it over ``path`` and fsyncs the folder.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def manifest_path(root: str | Path) -> Path:
    return Path(root) / MANIFEST_NAME


def read_manifest(root: str | Path) -> Manifest:
    """Read ``ROOT/manifest.json`` (a local folder or a URL, :mod:`audiossl.data.storage`); clear errors for a missing
    folder, a missing or damaged manifest, an unsupported URL."""
    if storage.is_url(root):
        url = storage.join(root, MANIFEST_NAME)
        storage.check_url(str(root))
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"no dataset at {root}: {MANIFEST_NAME} is not there; build it with `audiossl prep NAME ... --out "
                f"{root}` (a conversion that has not finished has no manifest yet)") from None
        try:
            d = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{url} is not valid JSON ({e}); re-run `audiossl prep`") from None
        return Manifest.from_dict(d, url)
    root = Path(storage.local_path(root))
    path = manifest_path(root)
    if not path.is_file():
        what = "does not exist" if not root.exists() else ("is a file" if root.is_file() else "has no manifest.json")
        raise DatasetNotFoundError(
            f"dataset folder {root} {what}: build it with `audiossl prep NAME ... --out {root}` "
            "(a folder whose conversion crashed has no manifest until a re-run completes)"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); re-run `audiossl prep`") from None
    return Manifest.from_dict(d, str(path))


def write_manifest(root: str | Path, manifest: Manifest) -> None:
    """Write ``ROOT/manifest.json`` atomically (a local rename, or one PUT of the object)."""
    data = (json.dumps(manifest.to_dict(), indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    if storage.is_url(root):
        storage.write_bytes(storage.join(root, MANIFEST_NAME), data)
    else:
        atomic_write(manifest_path(storage.local_path(root)), data)
