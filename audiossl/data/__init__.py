"""Sharded audio data: label spaces, the manifest, the shard writer, the streaming pipeline and the DataModule.

Names are imported lazily so that ``audiossl prep`` and the converter worker processes do not pay for Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LabelSpace": "labels",
    "read_label_file": "labels",
    "audioset_labels": "labels",
    "esc50_labels": "labels",
    "audioset_ontology": "labels",
    "Manifest": "manifest",
    "ShardInfo": "manifest",
    "SplitInfo": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "Clip": "writer",
    "WriterOptions": "writer",
    "WriteReport": "writer",
    "write_dataset": "writer",
    "safe_key": "writer",
    "TrainStream": "pipeline",
    "EvalStream": "pipeline",
    "read_shard": "pipeline",
    "AudioDataModule": "datamodule",
    "compute_stats": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"audiossl.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audiossl.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
