"""Label spaces: the ordered list of classes a dataset's ``label_idx`` values index into.

A label space is two parallel lists in index order: display ``names`` and machine ``mids`` (AudioSet's ``/m/...``
identifiers; datasets without mids reuse the names). Files use AudioSet's ``class_labels_indices.csv`` layout
(``index,mid,display_name`` with a header line) or, for a user's own data, one class name per line.

The package ships the 527-class AudioSet file (the logit order of every published AudioSet model), the 50 ESC-50
classes in ``target`` order and the AudioSet ontology.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

from audiossl.data.storage import input_file

_PACKAGED = {
    "audioset": "audioset_class_labels_indices.csv",
    "esc50": "esc50_class_labels_indices.csv",
}


@dataclass(frozen=True)
class LabelSpace:
    """Classes in index order: ``names[i]`` and ``mids[i]`` describe class ``i``."""

    names: tuple[str, ...]
    mids: tuple[str, ...]
    _lookup: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        names, mids = tuple(self.names), tuple(self.mids)
        if len(names) != len(mids):
            raise ValueError(f"label space: {len(names)} names but {len(mids)} mids")
        for what, seq in (("name", names), ("mid", mids)):
            dup = sorted(x for x, n in Counter(seq).items() if n > 1)
            if dup:
                raise ValueError(f"label space: duplicate class {what}s {dup}")
        lookup = {n: i for i, n in enumerate(names)}
        lookup.update({m: i for i, m in enumerate(mids)})  # a mid wins over an equal display name
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "mids", mids)
        object.__setattr__(self, "_lookup", lookup)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, label: str) -> bool:
        return label in self._lookup

    def index(self, label: str) -> int:
        """Index of ``label`` given as a mid or a display name; ``KeyError`` naming the label otherwise."""
        try:
            return self._lookup[label]
        except KeyError:
            raise KeyError(f"label {label!r} is not in this label space of {len(self)} classes") from None

    def split_known(self, labels: Iterable[str]) -> tuple[list[int], list[str]]:
        """``(indices of the known labels, the unknown labels)``, both in input order."""
        known, unknown = [], []
        for label in labels:
            i = self._lookup.get(label)
            (unknown.append(label) if i is None else known.append(i))
        return known, unknown

    # --- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Iterable[str]) -> "LabelSpace":
        """A label space whose mids are its names (user data, the synthetic corpus)."""
        names = tuple(names)
        return cls(names, names)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpace":
        return cls(tuple(d["names"]), tuple(d.get("mids") or d["names"]))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mids": list(self.mids)}

    def subset(self, indices: Iterable[int]) -> "LabelSpace":
        """The classes at ``indices``, re-indexed from 0 in the given order."""
        idx = list(indices)
        return LabelSpace(tuple(self.names[i] for i in idx), tuple(self.mids[i] for i in idx))


def parse_label_file(text: str, source: str = "<labels>") -> LabelSpace:
    """Parse a ``index,mid,display_name`` CSV (with its header) or a plain list of names (one per line)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{source}: the label file is empty")
    header = [h.strip().lower() for h in next(csv.reader([lines[0]]))]
    if {"index", "mid", "display_name"} <= set(header):
        rows = list(csv.DictReader(io.StringIO("\n".join(lines)), skipinitialspace=True))
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in rows]
        try:
            order = sorted(rows, key=lambda r: int(r["index"]))
        except ValueError as e:
            raise ValueError(f"{source}: the index column must hold integers ({e})") from None
        idx = [int(r["index"]) for r in order]
        if idx != list(range(len(idx))):
            raise ValueError(f"{source}: indices must be 0..{len(idx) - 1} without gaps")
        return LabelSpace(tuple(r["display_name"] for r in order), tuple(r["mid"] for r in order))
    return LabelSpace.from_names(ln.strip() for ln in lines)


def read_label_file(path: str | Path) -> LabelSpace:
    """Read a label file from disk (see :func:`parse_label_file` for the two accepted layouts)."""
    path = input_file(path, "label file")
    return parse_label_file(path.read_text(encoding="utf-8"), str(path))


def packaged(name: str) -> LabelSpace:
    """A label space shipped with the package: ``"audioset"`` (527 classes) or ``"esc50"`` (50 classes)."""
    if name not in _PACKAGED:
        raise KeyError(f"no packaged label space {name!r}; choose one of {sorted(_PACKAGED)}")
    text = resources.files("audiossl.data").joinpath("labels", _PACKAGED[name]).read_text(encoding="utf-8")
    return parse_label_file(text, f"audiossl/data/labels/{_PACKAGED[name]}")


def audioset_labels() -> LabelSpace:
    """The 527 evaluated AudioSet classes in the order of every published model's logits."""
    return packaged("audioset")


def esc50_labels() -> LabelSpace:
    """The 50 ESC-50 classes in ``target`` order (names as in ``meta/esc50.csv``'s ``category`` column)."""
    return packaged("esc50")


def audioset_ontology() -> list[dict]:
    """The AudioSet ontology: 632 nodes with ``id``, ``name``, ``description``, ``child_ids``, ``restrictions``."""
    text = resources.files("audiossl.data").joinpath("labels", "audioset_ontology.json").read_text(encoding="utf-8")
    return json.loads(text)
