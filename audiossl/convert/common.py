"""What every importer shares: reading weight files and label lists, the conversion report, checks of the
source's geometry (patches, blocks, heads, stored position tables), and building the model from a mapped state dict."""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from audiossl.hub.reader import load_weights, read_safetensors, safe_torch_load
from audiossl.errors import CheckpointError, ExportError, UserError
from audiossl.frontend.features import FrontEndConfig
from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.models.encoder import EncoderConfig
from audiossl.models.pos_embed import sincos_2d

POS_TOLERANCE = 1e-4  # stored sin-cos tables are float32 copies of the float64 formula
_LABEL_DIR = Path(__file__).parent.parent / "data" / "labels"


class ConversionError(UserError, ValueError):
    """Weights this importer cannot map onto the shared encoder, or inconsistent options."""


@dataclass
class ConversionReport:
    source: str
    format: str
    kind: str = ""  # "classifier" | "encoder-only"
    notes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # source keys deliberately left out (decoder, EMA teacher, ...)

    def summary(self) -> str:
        lines = [f"converted {self.format} weights from {self.source} -> {self.kind} model"]
        lines += [f"  {n}" for n in self.notes]
        if self.ignored:
            shown = ", ".join(self.ignored[:6]) + (f", ... ({len(self.ignored) - 6} more)" if len(self.ignored) > 6 else "")
            lines.append(f"  ignored {len(self.ignored)} training-only entries: {shown}")
        return "\n".join(lines)


def _data_only_globals() -> tuple:
    """Data-only types fairseq/timm checkpoints may carry besides tensors (numpy scalars/arrays, argparse args)."""
    import argparse as _argparse

    import numpy as np

    allowed = [_argparse.Namespace, np.ndarray, np.dtype]
    try:
        allowed += [np._core.multiarray._reconstruct, np._core.multiarray.scalar]  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        allowed += [np.core.multiarray._reconstruct, np.core.multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    return tuple(allowed)


def read_weights(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """A weights file -> (flat state dict, the checkpoint's own config or None). ``.safetensors`` are read directly;
    anything else with ``torch.load(weights_only=True)`` (fairseq/timm dicts: ``model`` or ``state_dict`` entry)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return read_safetensors(path), None
        except ExportError as e:
            raise ConversionError(str(e)) from None
    try:
        obj = safe_torch_load(path, what="weights file", allow=_data_only_globals())
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    cfg = obj.get("cfg") if isinstance(obj.get("cfg"), dict) else None
    for key in ("model", "state_dict", "module"):
        if isinstance(obj.get(key), dict):
            return obj[key], cfg
    if any(torch.is_tensor(v) for v in obj.values()):
        return obj, cfg
    raise ConversionError(f"{path}: no state dict found (top-level keys: {', '.join(sorted(map(str, obj))[:12])})")


def read_label_names(path: str | os.PathLike) -> list[str]:
    """Label names from a CSV with a ``display_name``/``name``/``label`` column (AudioSet's
    ``class_labels_indices.csv`` layout) or a text file with one name per line."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"label file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text.strip() else ""
    header = [h.strip().lower() for h in next(csv.reader([first]))] if first else []
    for col in ("display_name", "name", "label"):
        if col in header:
            rows = list(csv.DictReader(text.splitlines()))
            key = next(h for h in rows[0] if h.strip().lower() == col) if rows else col
            return [r[key] for r in rows]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ConversionError(f"label file {path} is empty")
    return names


def default_labels(num_classes: int) -> tuple[list[str], bool]:
    """(label names, multi_label) for a head without given labels: AudioSet for 527 classes, ESC-50 for 50."""
    if num_classes == 527:
        return read_label_names(_LABEL_DIR / "audioset_class_labels_indices.csv"), True
    if num_classes == 50:
        return read_label_names(_LABEL_DIR / "esc50_class_labels_indices.csv"), False
    return [f"class_{i}" for i in range(num_classes)], True


def _resolve_labels(num_classes: int, labels, multi_label: bool | None, report: ConversionReport):
    if labels is None:
        names, multi = default_labels(num_classes)
        report.notes.append(f"labels: {'AudioSet' if num_classes == 527 else 'ESC-50' if num_classes == 50 else 'class_i'} names "
                            f"({num_classes})")
    else:
        names = read_label_names(labels) if isinstance(labels, (str, os.PathLike)) else list(labels)
        multi = True
        if len(names) != num_classes:
            raise ConversionError(f"{len(names)} label names for a head with {num_classes} classes")
    multi = multi if multi_label is None else multi_label
    report.notes.append(f"{'multi-label (sigmoid)' if multi else 'single-label (softmax)'} outputs")
    return names, multi


def _check_num_classes(num_classes: int | None, head_classes: int | None, source: str) -> None:
    if num_classes is None:
        return
    if head_classes is None:
        raise ConversionError(f"{source} has no classifier head; drop --num-classes to convert it as an encoder-only model")
    if num_classes != head_classes:
        raise ConversionError(f"{source} has a head with {head_classes} classes, not the {num_classes} asked for")


def _fixed_positions(table: torch.Tensor, prefix_rows: int, grid_f: int, what: str, report: ConversionReport):
    """A stored ``[1, prefix_rows + R, D]`` table: (``None`` if it equals our sin-cos on its rows, else the learned
    table ``[1, P + R, D]`` with its ``pos_grid``), and the prefix rows ``[1, P, D]``."""
    D = table.shape[-1]
    rows = table.shape[1] - prefix_rows
    if rows <= 0 or rows % grid_f:
        raise ConversionError(
            f"{what} has {table.shape[1]} rows: not {prefix_rows} prefix row(s) + a grid of {grid_f} frequency patches"
        )
    grid_t = rows // grid_f
    ours = sincos_2d(D, grid_t, grid_f).to(table.dtype)
    diff = float((table[0, prefix_rows:].float() - ours.float()).abs().max())
    pre = table[:, :prefix_rows]
    if diff <= POS_TOLERANCE:
        report.notes.append(f"positions: the stored {grid_t}x{grid_f} table equals 2-D sin-cos (max diff {diff:.1e}); "
                            f"computed for any length")
        return None, [grid_t, grid_f], pre
    msg = (f"{what}: the stored position table differs from 2-D sin-cos by up to {diff:.3g}; keeping it as a table "
           f"({grid_t} time x {grid_f} freq patches; longer inputs interpolate it)")
    warnings.warn(msg, stacklevel=3)
    report.notes.append("WARNING " + msg)
    return table, [grid_t, grid_f], pre


def _check_patch(weight: torch.Tensor, key: str) -> tuple[int, int]:
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ConversionError(
            f"{key} has shape {tuple(weight.shape)}; the encoder takes one input channel and square patches "
            f"([D, 1, p, p])"
        )
    return weight.shape[0], weight.shape[2]


def _block_count(keys, what: str) -> int:
    idx = sorted({int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not idx:
        raise ConversionError(f"{what}: no transformer blocks found")
    if idx != list(range(len(idx))):
        raise ConversionError(f"{what}: transformer blocks {idx} are not numbered 0..{len(idx) - 1}")
    return len(idx)


def _heads(embed_dim: int, given: int | None, from_config, report: ConversionReport) -> int:
    heads = given or from_config
    if heads:
        return int(heads)
    heads = max(1, embed_dim // 64)
    report.notes.append(f"num_heads: not in the checkpoint, assumed {heads} (64 dims per head; --num-heads to change)")
    return heads


def _build(enc_cfg: EncoderConfig, head_cfg, front_end: FrontEndConfig, labels, multi, pool, state: dict,
           what: str) -> AudioClassifier:
    try:
        model = AudioClassifier(enc_cfg, head=head_cfg, front_end=front_end, label_names=labels, multi_label=multi,
                                pool=pool)
    except ValueError as e:
        raise ConversionError(f"{what}: the encoder cannot represent these weights: {e}") from None
    try:
        load_weights(model, state, what)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    return model.eval()


def _encoder_or_classifier(enc_cfg: EncoderConfig, front_end: FrontEndConfig, state: dict, head: dict,
                           encoder_pool: str, head_kw: dict, labels, multi_label: bool | None,
                           report: ConversionReport, what: str) -> AudioClassifier:
    """An encoder-only model (embeddings pooled by ``encoder_pool``) when the source has no ``linear`` head, else a
    classifier with ``HeadConfig(num_classes, **head_kw)`` and the head's entries; sets ``report.kind``."""
    if "linear.weight" not in head:
        report.kind = "encoder-only"
        return _build(enc_cfg, None, front_end, None, True, encoder_pool, state, what)
    report.kind = "classifier"
    num_classes = head["linear.weight"].shape[0]
    names, multi = _resolve_labels(num_classes, labels, multi_label, report)
    state = {**state, **{f"head.{k}": v for k, v in head.items()}}
    return _build(enc_cfg, HeadConfig(num_classes=num_classes, **head_kw), front_end, names, multi, None, state, what)


def _unmapped_error(unknown: list[str], what: str, layout: str) -> ConversionError:
    shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
    return ConversionError(
        f"{what}: {len(unknown)} weight(s) have no place in the {layout} layout the encoder can represent: {shown}"
    )
