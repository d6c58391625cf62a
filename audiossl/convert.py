"""Importers for published weights -> the audiossl export format (``audiossl convert FORMAT SRC --out DIR``).

Every importer maps the source's keys onto the shared ``AudioEncoder`` (+ ``ClassifierHead``) and expresses the
source's computation through ``EncoderConfig`` options; nothing here is a second model class.

``hf-ast``   transformers ``ASTForAudioClassification`` / ``ASTModel`` directory (config.json + model.safetensors or
             pytorch_model.bin). Overlapping 16x16 patches with stride 10 (``patch_stride``), CLS + distillation
             tokens (``num_prefix_tokens=2``, pooled as their mean: head pool ``prefix``), a learned position table
             over both prefix tokens and patches (``pos_embed='learned'``, ``pos_grid``), frequency-major patch order
             (``patch_order='freq'``), pre-LN blocks with a final LayerNorm, LayerNorm eps from the config. The
             convolution sees ``[B, 1, F, T]`` (weight ``[out, in, freq, time]``); ours sees ``[B, 1, T, F]``.
``eat``,     fairseq ``.pt`` (``{"cfg", "model": state dict, ...}``) or safetensors (HF ports). Post-LN blocks
``sslam``    (``block_style='post'``): LayerNorm over [CLS]+patches before the trunk (``context_encoder.norm`` /
             ``pre_norm``), no final norm; CLS without a position; fixed 2-D sin-cos positions (the stored table is
             checked against ours, and kept as a table if it differs); decoder and EMA teacher weights are ignored
             (listed). Fine-tuned files (``fc_norm`` + ``head``) become classifiers (CLS -> LayerNorm -> Linear),
             pretrained files encoder-only models.
``audiomae`` timm-style ``.pth`` (``{"model": state dict}``): ``patch_embed.proj``, ``cls_token``, ``pos_embed``
             (sin-cos with a CLS row), pre-LN blocks, ``norm`` (pretrained / CLS-pooled) or ``fc_norm`` (global-pool
             fine-tuning, no final norm: ``final_norm=False``, head pool ``mean``), ``head``; decoder weights ignored.

Fixed sin-cos positions are computed for any input length; learned tables are cropped or interpolated along time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from audiossl.checkpoint import CheckpointError, load_weights, safe_torch_load
from audiossl.errors import UserError
from audiossl.features import AUDIOSET_MEAN, AUDIOSET_STD, FrontEndConfig
from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.models.encoder import EncoderConfig
from audiossl.models.pos_embed import sincos_2d

FORMATS = ("hf-ast", "eat", "sslam", "audiomae")
POS_TOLERANCE = 1e-4  # stored sin-cos tables are float32 copies of the float64 formula
# AST's published feature-extractor statistics (the unrounded AudioSet constants).
AST_MEAN, AST_STD = -4.2677393, 4.5689974
_LABEL_DIR = Path(__file__).parent / "data" / "labels"


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


# --- shared helpers ----------------------------------------------------------------------------------------------
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
        from audiossl.export import read_safetensors

        return read_safetensors(path), None
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


def _unmapped_error(unknown: list[str], what: str, layout: str) -> ConversionError:
    shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
    return ConversionError(
        f"{what}: {len(unknown)} weight(s) have no place in the {layout} layout the encoder can represent: {shown}"
    )


# --- EAT / SSLAM -------------------------------------------------------------------------------------------------
_EAT_IGNORED = ("_ema", "ema.", "decoder.", "recon_proj.", "shared_decoder.", "cls_proj.")
_EAT_TOP = {
    "local_encoder.proj.weight": "patch_embed.weight",
    "local_encoder.proj.bias": "patch_embed.bias",
    "extra_tokens": "prefix_tokens",
    "context_encoder.norm.weight": "pre_norm.weight",
    "context_encoder.norm.bias": "pre_norm.bias",
    "pre_norm.weight": "pre_norm.weight",
    "pre_norm.bias": "pre_norm.bias",
    "fixed_positional_encoder.positions": "positions",
    "fc_norm.weight": "head.norm.weight",
    "fc_norm.bias": "head.norm.bias",
    "head.weight": "head.linear.weight",
    "head.bias": "head.linear.bias",
}


def _eat_name(key: str) -> str:
    """Fairseq (``modality_encoders.IMAGE.*``, fine-tuned: ``model.`` + that) and HF-port (``model.*``) keys -> one
    naming: strip the wrappers."""
    name = key
    while name.startswith("model."):
        name = name[len("model.") :]
    if name.startswith("modality_encoders.IMAGE."):
        name = name[len("modality_encoders.IMAGE.") :]
    return name


def map_eat_state_dict(sd: dict, what: str = "EAT checkpoint") -> tuple[dict, dict, list[str]]:
    """EAT/SSLAM keys -> (encoder entries incl. ``positions``, head entries, ignored keys). Raises on keys that have
    no place in the post-LN encoder."""
    enc, head, ignored, unknown = {}, {}, [], []
    for key, value in sd.items():
        if not torch.is_tensor(value):
            ignored.append(f"{key} (not a tensor)")
            continue
        name = _eat_name(key)
        if name.startswith(_EAT_IGNORED):
            ignored.append(key)
            continue
        if re.fullmatch(r"blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)", name):
            target = enc
        elif name in _EAT_TOP:
            target = head if name.startswith(("fc_norm", "head")) else enc
            name = _EAT_TOP[name]
            if target is head:
                name = name[len("head.") :]
        else:
            unknown.append(key)
            continue
        if name in target:
            raise ConversionError(f"{what}: two entries map to {name} (one of them is {key}); keep one copy of the model")
        target[name] = value
    if unknown:
        raise _unmapped_error(unknown, what, "EAT post-LN")
    return enc, head, ignored


def convert_eat(src, labels=None, num_classes: int | None = None, multi_label: bool | None = None,
                num_heads: int | None = None, target_length: int = 1024, mean: float = AUDIOSET_MEAN,
                std: float = AUDIOSET_STD, flavour: str = "eat") -> tuple[AudioClassifier, ConversionReport]:
    """EAT or SSLAM weights (fairseq ``.pt``, ``.safetensors``, or an HF port directory) -> ``AudioClassifier``."""
    src = Path(src)
    report = ConversionReport(str(src), flavour)
    hf_config = {}
    if src.is_dir():
        weights = next((src / n for n in ("model.safetensors", "pytorch_model.bin") if (src / n).exists()), None)
        if weights is None:
            raise ConversionError(f"{src} holds neither model.safetensors nor pytorch_model.bin")
        if (src / "config.json").exists():
            hf_config = json.loads((src / "config.json").read_text())
        src = weights
    elif src.suffix == ".safetensors" and (src.parent / "config.json").exists():
        hf_config = json.loads((src.parent / "config.json").read_text())
    sd, cfg = read_weights(src)
    model_cfg = dict(cfg["model"]) if cfg and isinstance(cfg.get("model"), dict) else {}  # fairseq cfg.model
    model_cfg.update({k: v for k, v in hf_config.items() if k in ("num_heads", "norm_eps", "layer_norm_first", "mel_bins")})
    if model_cfg.get("layer_norm_first"):
        raise ConversionError(f"{src}: layer_norm_first=True (pre-LN data2vec); EAT/SSLAM weights are post-LN")
    what = f"{flavour} checkpoint {src}"
    enc, head, report.ignored = map_eat_state_dict(sd, what)
    if "patch_embed.weight" not in enc:
        raise ConversionError(f"{what}: no patch embedding (local_encoder.proj.weight); not an EAT/SSLAM checkpoint")
    if "pre_norm.weight" not in enc:
        raise ConversionError(f"{what}: no context_encoder.norm / pre_norm; not the EAT post-LN layout")
    if "prefix_tokens" not in enc:
        raise ConversionError(f"{what}: no extra_tokens (CLS); not an EAT/SSLAM checkpoint")
    D, p = _check_patch(enc["patch_embed.weight"], "local_encoder.proj.weight")
    depth = _block_count(enc, what)
    hidden = enc["blocks.0.mlp.fc1.weight"].shape[0]
    mel = int(model_cfg.get("mel_bins") or 128)
    n_prefix = enc["prefix_tokens"].shape[1]
    config = dict(
        embed_dim=D, depth=depth, num_heads=_heads(D, num_heads, model_cfg.get("num_heads"), report),
        mlp_ratio=hidden / D, qkv_bias="blocks.0.attn.qkv.bias" in enc, norm_eps=float(model_cfg.get("norm_eps", 1e-6)),
        block_style="post", num_mel_bins=mel, patch_size=p, patch_stride=p, num_prefix_tokens=n_prefix,
        name=f"{flavour}_import",
    )
    positions = enc.pop("positions", None)
    if positions is None:
        report.notes.append("positions: no stored table; fixed 2-D sin-cos (the EAT recipe)")
    else:
        table, grid, _ = _fixed_positions(positions, 0, (mel - p) // p + 1, f"{what} positions", report)
        if table is not None:  # keep the stored rows; the CLS gets a zero row (EAT adds no position to it)
            config.update(pos_embed="learned", pos_grid=grid)
            enc["pos_table"] = torch.cat([torch.zeros(1, n_prefix, D, dtype=table.dtype), table], dim=1)
    head_classes = head["linear.weight"].shape[0] if "linear.weight" in head else None
    _check_num_classes(num_classes, head_classes, what)
    if head and head_classes is None:
        raise ConversionError(f"{what}: fc_norm without a head; cannot build a classifier")
    state = {f"encoder.{k}": v for k, v in enc.items()}
    front_end = FrontEndConfig(target_length=target_length, mean=mean, std=std)
    if head_classes is None:
        report.kind = "encoder-only"
        model = _build(EncoderConfig(**config), None, front_end, None, True, "cls", state, what)
    else:
        report.kind = "classifier"
        names, multi = _resolve_labels(head_classes, labels, multi_label, report)
        head_cfg = HeadConfig(num_classes=head_classes, pool="cls", norm="norm.weight" in head,
                              norm_eps=config["norm_eps"])
        state.update({f"head.{k}": v for k, v in head.items()})
        model = _build(EncoderConfig(**config), head_cfg, front_end, names, multi, None, state, what)
    report.notes.insert(0, f"encoder: post-LN, {depth} blocks, dim {D}, {config['num_heads']} heads, "
                           f"patch {p}, {n_prefix} CLS")
    return model, report


# --- AudioMAE ----------------------------------------------------------------------------------------------------
_MAE_IGNORED = ("decoder_", "mask_token")


def convert_audiomae(src, labels=None, num_classes: int | None = None, multi_label: bool | None = None,
                     num_heads: int | None = None, patch_stride: int | None = None, target_length: int = 1024,
                     mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD,
                     num_mel_bins: int = 128) -> tuple[AudioClassifier, ConversionReport]:
    """AudioMAE (timm-style ViT) ``.pth`` -> ``AudioClassifier``."""
    src = Path(src)
    report = ConversionReport(str(src), "audiomae")
    sd, _ = read_weights(src)
    what = f"AudioMAE checkpoint {src}"
    enc, head, unknown = {}, {}, []
    for key, value in sd.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if not torch.is_tensor(value):
            report.ignored.append(f"{key} (not a tensor)")
        elif name.startswith(_MAE_IGNORED):
            report.ignored.append(key)
        elif re.fullmatch(r"blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)", name):
            enc[name] = value
        elif name in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            enc[name.replace(".proj", "")] = value
        elif name in ("cls_token", "pos_embed", "norm.weight", "norm.bias"):
            enc[name] = value
        elif name in ("fc_norm.weight", "fc_norm.bias"):
            head["norm." + name.split(".")[1]] = value
        elif name in ("head.weight", "head.bias"):
            head["linear." + name.split(".")[1]] = value
        else:
            unknown.append(key)
    if unknown:
        raise _unmapped_error(unknown, what, "AudioMAE/timm ViT")
    for need in ("patch_embed.weight", "cls_token", "pos_embed"):
        if need not in enc:
            raise ConversionError(f"{what}: no {need.replace('patch_embed.', 'patch_embed.proj.')}; not an AudioMAE ViT")
    D, p = _check_patch(enc["patch_embed.weight"], "patch_embed.proj.weight")
    stride = patch_stride or p
    grid_f = (num_mel_bins - p) // stride + 1
    depth = _block_count(enc, what)
    final_norm = "norm.weight" in enc
    has_fc_norm = "norm.weight" in head
    head_classes = head["linear.weight"].shape[0] if "linear.weight" in head else None
    _check_num_classes(num_classes, head_classes, what)
    if has_fc_norm and head_classes is None:
        raise ConversionError(f"{what}: fc_norm without a head; cannot build a classifier")
    cls = enc.pop("cls_token")
    n_prefix = cls.shape[1]
    config = dict(
        embed_dim=D, depth=depth, num_heads=_heads(D, num_heads, None, report),
        mlp_ratio=enc["blocks.0.mlp.fc1.weight"].shape[0] / D, qkv_bias="blocks.0.attn.qkv.bias" in enc,
        norm_eps=1e-6, block_style="pre", num_mel_bins=num_mel_bins, patch_size=p, patch_stride=stride,
        num_prefix_tokens=n_prefix, final_norm=final_norm, name="audiomae_import",
    )
    table, grid, cls_pos = _fixed_positions(enc.pop("pos_embed"), n_prefix, grid_f, f"{what} pos_embed", report)
    if table is None:
        enc["prefix_tokens"] = cls + cls_pos  # AudioMAE adds pos row 0 to the CLS; fold the constant in
    else:
        enc["prefix_tokens"] = cls
        enc["pos_table"] = table
        config.update(pos_embed="learned", pos_grid=grid)
    state = {f"encoder.{k}": v for k, v in enc.items()}
    front_end = FrontEndConfig(target_length=target_length, mean=mean, std=std, num_mel_bins=num_mel_bins)
    if head_classes is None:
        report.kind = "encoder-only"
        model = _build(EncoderConfig(**config), None, front_end, None, True, "mean", state, what)
    else:
        report.kind = "classifier"
        names, multi = _resolve_labels(head_classes, labels, multi_label, report)
        # global-pool fine-tuning: mean of patch tokens -> fc_norm -> head, and no final norm; otherwise CLS -> head
        head_cfg = HeadConfig(num_classes=head_classes, pool="mean" if has_fc_norm else "cls", norm=has_fc_norm,
                              norm_eps=1e-6)
        state.update({f"head.{k}": v for k, v in head.items()})
        model = _build(EncoderConfig(**config), head_cfg, front_end, names, multi, None, state, what)
    report.notes.insert(0, f"encoder: pre-LN, {depth} blocks, dim {D}, {config['num_heads']} heads, patch {p} "
                           f"stride {stride}, {'final norm' if final_norm else 'no final norm (global pool)'}")
    return model, report


# --- HF AST ------------------------------------------------------------------------------------------------------
_AST_LAYER = [  # (transformers 4.x name, transformers 5.x name) -> ours, per layer
    (("attention.output.dense", "attention.o_proj"), "attn.proj"),
    (("intermediate.dense", "mlp.fc1"), "mlp.fc1"),
    (("output.dense", "mlp.fc2"), "mlp.fc2"),
    (("layernorm_before",), "norm1"),
    (("layernorm_after",), "norm2"),
]
_AST_QKV = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v"}


def map_ast_state_dict(sd: dict, what: str) -> tuple[dict, dict]:
    """transformers AST keys (4.x ``encoder.layer.N.attention.attention.query`` or 5.x ``layers.N.attention.q_proj``
    naming) -> (our encoder state dict, our head state dict). q/k/v are fused into ``attn.qkv``."""
    enc, head, qkv, unknown = {}, {}, {}, []
    for key, value in sd.items():
        name = key[len("audio_spectrogram_transformer.") :] if key.startswith("audio_spectrogram_transformer.") else key
        m = re.fullmatch(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            i, sub, kind = m.groups()
            q = re.fullmatch(r"attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)", sub)
            if q:
                qkv.setdefault((i, kind), {})[_AST_QKV[q.group(1)]] = value
                continue
            ours = next((o for names, o in _AST_LAYER if sub in names), None)
            if ours is None:
                unknown.append(key)
            else:
                enc[f"blocks.{i}.{ours}.{kind}"] = value
            continue
        simple = {
            "embeddings.patch_embeddings.projection.bias": (enc, "patch_embed.bias"),
            "layernorm.weight": (enc, "norm.weight"),
            "layernorm.bias": (enc, "norm.bias"),
            "embeddings.position_embeddings": (enc, "pos_table"),
            "classifier.layernorm.weight": (head, "norm.weight"),
            "classifier.layernorm.bias": (head, "norm.bias"),
            "classifier.dense.weight": (head, "linear.weight"),
            "classifier.dense.bias": (head, "linear.bias"),
        }
        if name in simple:
            target, ours = simple[name]
            target[ours] = value
        elif name == "embeddings.patch_embeddings.projection.weight":
            enc["patch_embed.weight"] = value.transpose(2, 3).contiguous()  # [out, in, freq, time] -> [.., time, freq]
        elif name in ("embeddings.cls_token", "embeddings.distillation_token"):
            enc[name.split(".")[1]] = value
        else:
            unknown.append(key)
    if unknown:
        raise _unmapped_error(unknown, what, "AST")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"{what}: layer {i} has attention {kind} for {sorted(parts)} only")
        enc[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if "cls_token" not in enc or "distillation_token" not in enc:
        raise ConversionError(f"{what}: the CLS or distillation token is missing")
    enc["prefix_tokens"] = torch.cat([enc.pop("cls_token"), enc.pop("distillation_token")], dim=1)  # [1, 2, D]
    return enc, head


def convert_hf_ast(src, labels=None, num_classes: int | None = None,
                   multi_label: bool | None = None) -> tuple[AudioClassifier, ConversionReport]:
    """A transformers ``ASTForAudioClassification`` (or ``ASTModel``) directory -> ``AudioClassifier``."""
    src = Path(src)
    report = ConversionReport(str(src), "hf-ast")
    if not src.is_dir() or not (src / "config.json").exists():
        raise ConversionError(f"{src} is not a transformers model directory (config.json + weights)")
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("model_type") not in (None, "audio-spectrogram-transformer"):
        raise ConversionError(f"{src}/config.json is a {cfg.get('model_type')!r} model, not an AST")
    weights = next((src / n for n in ("model.safetensors", "pytorch_model.bin") if (src / n).exists()), None)
    if weights is None:
        raise ConversionError(f"{src} holds neither model.safetensors nor pytorch_model.bin")
    what = f"AST checkpoint {src}"
    patch = cfg.get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise ConversionError(f"{what}: non-square patches {patch}; the encoder uses square patches")
        patch = patch[0]
    f_stride, t_stride = cfg.get("frequency_stride", 10), cfg.get("time_stride", 10)
    if f_stride != t_stride:
        raise ConversionError(
            f"{what}: frequency_stride {f_stride} != time_stride {t_stride}; the encoder has one patch stride for both"
        )
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{what}: hidden_act {cfg.get('hidden_act')!r}; the encoder's MLP uses exact GELU")
    D, inter = cfg.get("hidden_size", 768), cfg.get("intermediate_size", 3072)
    mel, max_length = cfg.get("num_mel_bins", 128), cfg.get("max_length", 1024)
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    grid = [(max_length - patch) // t_stride + 1, (mel - patch) // f_stride + 1]
    sd, _ = read_weights(weights)
    enc, head = map_ast_state_dict(sd, what)
    expected_rows = 2 + grid[0] * grid[1]
    if enc.get("pos_table") is not None and enc["pos_table"].shape[1] != expected_rows:
        raise ConversionError(f"{what}: position table has {enc['pos_table'].shape[1]} rows; config implies "
                              f"2 + {grid[0]}x{grid[1]} = {expected_rows}")
    config = EncoderConfig(
        embed_dim=D, depth=cfg.get("num_hidden_layers", 12), num_heads=cfg.get("num_attention_heads", 12),
        mlp_ratio=inter / D, qkv_bias=bool(cfg.get("qkv_bias", True)), norm_eps=eps, block_style="pre",
        num_mel_bins=mel, patch_size=patch, patch_stride=t_stride, num_prefix_tokens=2, pos_embed="learned",
        pos_grid=grid, patch_order="freq", name="ast_import",
    )
    front_end = _ast_front_end(src, max_length, mel, report)
    state = {f"encoder.{k}": v for k, v in enc.items()}
    head_classes = head["linear.weight"].shape[0] if "linear.weight" in head else None
    _check_num_classes(num_classes, head_classes, what)
    if head_classes is None:
        report.kind = "encoder-only"
        model = _build(config, None, front_end, None, True, "prefix", state, what)
    else:
        report.kind = "classifier"
        if labels is None and isinstance(cfg.get("id2label"), dict) and len(cfg["id2label"]) == head_classes:
            labels = [cfg["id2label"][k] for k in sorted(cfg["id2label"], key=int)]
            report.notes.append(f"labels: id2label from config.json ({head_classes})")
        if multi_label is None and cfg.get("problem_type"):
            multi_label = cfg["problem_type"] == "multi_label_classification"
        names, multi = _resolve_labels(head_classes, labels, multi_label, report)
        head_cfg = HeadConfig(num_classes=head_classes, pool="prefix", norm=True, norm_eps=eps)
        state.update({f"head.{k}": v for k, v in head.items()})
        model = _build(config, head_cfg, front_end, names, multi, None, state, what)
    report.notes.insert(0, f"encoder: pre-LN, {config.depth} blocks, dim {D}, patch {patch} stride {t_stride}, "
                           f"learned positions over {grid[0]}x{grid[1]} patches, CLS + distillation tokens")
    return model, report


def _ast_front_end(src: Path, max_length: int, mel: int, report: ConversionReport) -> FrontEndConfig:
    pre = src / "preprocessor_config.json"
    fe = {"sample_rate": 16000, "num_mel_bins": mel, "target_length": max_length, "mean": AST_MEAN, "std": AST_STD}
    if pre.exists():
        p = json.loads(pre.read_text())
        fe.update(sample_rate=p.get("sampling_rate", 16000), target_length=p.get("max_length", max_length),
                  mean=p.get("mean", AST_MEAN), std=p.get("std", AST_STD))
        if p.get("num_mel_bins", mel) != mel:
            raise ConversionError(f"{pre}: num_mel_bins {p.get('num_mel_bins')} != the model's {mel}")
        if p.get("do_normalize", True) is False:
            fe.update(mean=0.0, std=0.5)  # (x - 0) / (2 * 0.5) = x: no normalisation
        report.notes.append(f"front end from {pre.name}")
    else:
        report.notes.append("front end: AST defaults (16 kHz, AudioSet mean/std; no preprocessor_config.json)")
    return FrontEndConfig(**fe)


# --- entry points ------------------------------------------------------------------------------------------------
def convert(fmt: str, src, out_dir=None, **options) -> tuple[AudioClassifier, ConversionReport]:
    """Convert ``src`` (format ``fmt``) and, with ``out_dir``, save it in the export format."""
    if fmt == "hf-ast":
        keep = {k: options[k] for k in ("labels", "num_classes", "multi_label") if k in options}
        model, report = convert_hf_ast(src, **keep)
    elif fmt in ("eat", "sslam"):
        model, report = convert_eat(src, flavour=fmt, **{k: v for k, v in options.items() if k != "patch_stride"})
    elif fmt == "audiomae":
        model, report = convert_audiomae(src, **options)
    else:
        raise ConversionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if out_dir is not None:
        from audiossl.export import save_model

        save_model(model, out_dir)
    return model, report


def main(argv: list[str]) -> int:
    """``audiossl convert {hf-ast,eat,sslam,audiomae} SRC --out DIR``."""
    ap = argparse.ArgumentParser(
        prog="audiossl convert",
        description="Import published weights into the audiossl export format (DIR/model.safetensors + config.json). "
        "hf-ast: a transformers AST directory; eat/sslam: fairseq .pt or safetensors (HF port); audiomae: .pth.",
    )
    ap.add_argument("format", choices=FORMATS)
    ap.add_argument("src", help="weights file or model directory")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--labels", help="label names: CSV with a display_name column, or one name per line")
    ap.add_argument("--num-classes", type=int, help="expected number of classes (checked against the head)")
    lab = ap.add_mutually_exclusive_group()
    lab.add_argument("--multi-label", dest="multi_label", action="store_true", default=None, help="sigmoid outputs")
    lab.add_argument("--single-label", dest="multi_label", action="store_false", help="softmax outputs")
    ap.add_argument("--num-heads", type=int, help="attention heads when the checkpoint does not say (default dim/64)")
    ap.add_argument("--target-length", type=int, default=1024, help="frames per input window (eat/sslam/audiomae)")
    ap.add_argument("--mean", type=float, default=AUDIOSET_MEAN, help="fbank normalisation mean (eat/sslam/audiomae)")
    ap.add_argument("--std", type=float, default=AUDIOSET_STD, help="fbank normalisation std (eat/sslam/audiomae)")
    ap.add_argument("--patch-stride", type=int, help="audiomae: patch stride of overlapping-patch models (default: patch size)")
    ap.add_argument("--onnx", action="store_true", help="also write model.onnx (checked against PyTorch)")
    args = ap.parse_args(argv)
    options = {"labels": args.labels, "num_classes": args.num_classes, "multi_label": args.multi_label}
    if args.format != "hf-ast":
        options.update(num_heads=args.num_heads, target_length=args.target_length, mean=args.mean, std=args.std)
        if args.format == "audiomae":
            options["patch_stride"] = args.patch_stride
    from audiossl.export import ONNX_FILE, ExportError, export_onnx

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, report = convert(args.format, args.src, args.out, **options)
        onnx_report = export_onnx(model, Path(args.out) / ONNX_FILE) if args.onnx else None
    except (ConversionError, ExportError) as e:
        print(f"audiossl convert: error: {e}", file=sys.stderr)
        return 1
    for w in caught:
        if issubclass(w.category, UserWarning) and str(w.message) not in report.summary():
            print(f"audiossl convert: warning: {w.message}", file=sys.stderr)
    print(report.summary())
    print(f"  wrote {args.out}/model.safetensors + config.json")
    if onnx_report:
        print(f"  wrote {onnx_report['path']} (onnxruntime vs PyTorch max abs diff {onnx_report['max_abs_diff']:.2e})")
    return 0
