"""BAT: the released encoder (HF ``lrauch/BAT-vit-b16-pretrainedAS2M`` safetensors), ``BAT_base.pt`` and BAT's own
pretraining output -> the post-LN encoder with gated attention, BAT's stored position table and 64-patch windows.

Layouts (``reference/methods-bat.md`` §7):

* safetensors (a directory with ``model.safetensors`` [+ ``config.json``], or the file): a plain ViT's names
  (``patch_embed.proj``, ``cls_token``, ``pos_embed [1, 512, D]``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,
  mlp.fc1,mlp.fc2}``) plus ``pre_norm`` and ``blocks.i.attn.gate``.
* ``BAT_base.pt``: the same names under ``student.encoder.`` (optionally inside ``state_dict``); BAT's loader keeps
  those keys only (the student, not the EMA teacher) and the first 512 position rows.
* BAT's trainer output ``{"encoder", "decoder", "ema_encoder", ...}``: ``encoder`` (student) or, with
  ``teacher=True``, ``ema_encoder``.
* a fine-tuned / linear-probe state with BAT's ``LinearHead`` (``head.ln``, ``head.fc``) becomes a classifier
  (CLS -> LayerNorm -> Linear).

The stored position table is kept as it is (a frozen buffer; not re-derived, not interpolated): inputs longer than
``chunk_time_patches`` (64) time patches run in windows, as BAT does. Every block must have its gate: a lenient load
without them would give a plausible but wrong model.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from audiossl.hub.reader import safe_torch_load
from audiossl.convert.common import (
    ConversionError, ConversionReport, _block_count, _check_num_classes, _check_patch, _data_only_globals,
    _encoder_or_classifier, _heads, _unmapped_error, read_weights,
)
from audiossl.errors import CheckpointError
from audiossl.frontend.features import FrontEndConfig
from audiossl.models.classifier import AudioClassifier
from audiossl.models.encoder import EncoderConfig
from audiossl.models.pos_embed import sincos_bat

BAT_CHUNK = 64  # time patches per window (HF config chunk_time_patches)
_BLOCK = re.compile(r"blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|attn\.gate|mlp\.fc1|mlp\.fc2)\.(weight|bias)")
_TOP = {
    "patch_embed.proj.weight": "patch_embed.weight",
    "patch_embed.proj.bias": "patch_embed.bias",
    "cls_token": "prefix_tokens",
    "pos_embed": "pos_fixed",
    "pre_norm.weight": "pre_norm.weight",
    "pre_norm.bias": "pre_norm.bias",
}
_HEAD = {"head.ln.weight": "norm.weight", "head.ln.bias": "norm.bias", "head.fc.weight": "linear.weight",
         "head.fc.bias": "linear.bias"}


def _unwrap(obj, src: Path, teacher: bool, report: ConversionReport) -> dict:
    """The encoder state dict inside a loaded ``.pt`` (see the module doc), BAT's names."""
    if not isinstance(obj, dict):
        raise ConversionError(f"{src} holds a {type(obj).__name__}, not a dict of weights")
    if isinstance(obj.get("encoder"), dict) and isinstance(obj.get("ema_encoder"), dict):  # BAT's trainer output
        which = "ema_encoder" if teacher else "encoder"
        report.notes.append(f"weights: BAT trainer output, {'EMA teacher' if teacher else 'student'} ({which})")
        report.ignored += [k for k in obj if k != which]
        return obj[which]
    if teacher:
        raise ConversionError(f"{src} holds no EMA teacher (ema_encoder); BAT_base.pt and the HF weights are the student")
    sd = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    student = {k.split("student.encoder.", 1)[1]: v for k, v in sd.items() if "student.encoder." in k}
    if student:
        report.notes.append("weights: student.encoder.* (the student, as BAT's loader reads BAT_base.pt)")
        report.ignored += [k for k in sd if "student.encoder." not in k]
        return student
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def read_bat_weights(src, teacher: bool = False, report: ConversionReport | None = None) -> tuple[dict, dict, Path]:
    """(state dict in BAT's names, HF config.json or {}, the weights file) for any of the layouts above."""
    src = Path(src)
    report = report or ConversionReport(str(src), "bat")
    hf_config = {}
    if src.is_dir():
        weights = next((src / n for n in ("model.safetensors", "pytorch_model.bin") if (src / n).exists()), None)
        if weights is None:
            raise ConversionError(f"{src} holds neither model.safetensors nor pytorch_model.bin")
        src = weights
    if (src.parent / "config.json").exists():
        hf_config = json.loads((src.parent / "config.json").read_text())
    if src.suffix == ".safetensors":
        if teacher:
            raise ConversionError(f"{src}: the released safetensors hold one encoder (no EMA teacher)")
        sd, _ = read_weights(src)
        return sd, hf_config, src
    try:
        obj = safe_torch_load(src, what="weights file", allow=_data_only_globals())
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    return _unwrap(obj, src, teacher, report), hf_config, src


def map_bat_state_dict(sd: dict, what: str = "BAT checkpoint") -> tuple[dict, dict, list[str]]:
    """BAT keys -> (encoder entries, head entries, ignored keys); raises on keys with no place in the encoder and on
    blocks without their attention gate."""
    enc, head, ignored, unknown = {}, {}, [], []
    for key, value in sd.items():
        if not torch.is_tensor(value):
            ignored.append(f"{key} (not a tensor)")
        elif _BLOCK.fullmatch(key):
            enc[key] = value
        elif key in _TOP:
            enc[_TOP[key]] = value
        elif key in _HEAD:
            head[_HEAD[key]] = value
        else:
            unknown.append(key)
    if unknown:
        raise _unmapped_error(unknown, what, "BAT gated post-LN")
    depth = _block_count(enc, what)
    no_gate = [i for i in range(depth) if f"blocks.{i}.attn.gate.weight" not in enc or f"blocks.{i}.attn.gate.bias"
               not in enc]
    if no_gate:
        raise ConversionError(f"{what}: blocks {no_gate} have no attention gate (attn.gate.weight/bias); BAT's blocks "
                              f"are all gated, and loading without the gates would compute another function")
    return enc, head, ignored


def _hf(cfg: dict, *names, default=None):
    return next((cfg[n] for n in names if cfg.get(n) is not None), default)


def convert_bat(src, labels=None, num_classes: int | None = None, multi_label: bool | None = None,
                num_heads: int | None = None, target_length: int = 1024, teacher: bool = False,
                **_ignored) -> tuple[AudioClassifier, ConversionReport]:
    """BAT weights (any layout of the module doc) -> ``AudioClassifier`` (encoder-only, or with BAT's linear head)."""
    report = ConversionReport(str(src), "bat")
    sd, cfg, path = read_bat_weights(src, teacher, report)
    what = f"BAT checkpoint {path}"
    enc, head, ignored = map_bat_state_dict(sd, what)
    report.ignored += ignored
    for need, key in (("patch_embed.weight", "patch_embed.proj.weight"), ("prefix_tokens", "cls_token"),
                      ("pos_fixed", "pos_embed"), ("pre_norm.weight", "pre_norm.weight")):
        if need not in enc:
            raise ConversionError(f"{what}: no {key}; not a BAT encoder")
    D, p = _check_patch(enc["patch_embed.weight"], "patch_embed.proj.weight")
    depth = _block_count(enc, what)
    mel = int(_hf(cfg, "n_mels", "num_mel_bins", default=128))
    grid_f = (mel - p) // p + 1
    chunk = int(_hf(cfg, "chunk_time_patches", default=BAT_CHUNK))
    table = enc["pos_fixed"]
    if table.dim() != 3 or table.shape[0] != 1 or table.shape[2] != D:
        raise ConversionError(f"{what}: pos_embed has shape {tuple(table.shape)}, expected [1, rows, {D}]")
    if table.shape[1] > chunk * grid_f:
        table = table[:, : chunk * grid_f]  # BAT's loader: the first 512 rows (a window's worth)
    rows = table.shape[1]
    if rows % grid_f or rows < chunk * grid_f:
        raise ConversionError(f"{what}: pos_embed has {rows} rows, BAT's windows need {chunk} x {grid_f}")
    enc["pos_fixed"] = table.float().contiguous()
    diff = float((table[0].float() - sincos_bat(D, rows).float()).abs().max())
    note = f"positions: the stored {rows}-row table kept as a frozen buffer (max diff to BAT's formula {diff:.1e})"
    if diff > 1e-4:
        warnings.warn(f"{what}: {note}", stacklevel=2)
        note = "WARNING " + note
    report.notes.append(note)
    eps = float(_hf(cfg, "layer_norm_eps", "norm_eps", default=1e-6))
    config = dict(
        embed_dim=D, depth=depth, num_heads=_heads(D, num_heads, _hf(cfg, "num_attention_heads", "num_heads"), report),
        mlp_ratio=enc["blocks.0.mlp.fc1.weight"].shape[0] / D, qkv_bias="blocks.0.attn.qkv.bias" in enc, norm_eps=eps,
        block_style="post", num_mel_bins=mel, patch_size=p, patch_stride=p, num_prefix_tokens=enc["prefix_tokens"].shape[1],
        attn_gate=True, pos_embed="sincos_bat", pos_grid=[rows // grid_f, grid_f], chunk_time_patches=chunk,
        name="bat_import",
    )
    sr = int(_hf(cfg, "sampling_rate", "sample_rate", "sr", default=16000))
    front_end = FrontEndConfig(
        sample_rate=sr, num_mel_bins=mel, spectrogram="mel_db_minmax", target_length=target_length,
        frame_length=1000.0 * int(_hf(cfg, "n_fft", default=1024)) / sr,
        frame_shift=1000.0 * int(_hf(cfg, "hop_length", "hop", default=160)) / sr,
        top_db=float(_hf(cfg, "top_db", default=80.0)),
    )
    head_classes = head["linear.weight"].shape[0] if "linear.weight" in head else None
    _check_num_classes(num_classes, head_classes, what)
    state = {f"encoder.{k}": v for k, v in enc.items()}
    model = _encoder_or_classifier(EncoderConfig(**config), front_end, state, head, "cls",
                                   dict(pool="cls", norm="norm.weight" in head, norm_eps=eps), labels, multi_label,
                                   report, what)
    report.notes.insert(0, f"encoder: post-LN with gated attention, {depth} blocks, dim {D}, {config['num_heads']} "
                           f"heads, patch {p}, windows of {chunk} time patches")
    report.notes.append(f"front end: mel_db_minmax (n_fft {round(front_end.frame_length * sr / 1000)}, hop "
                        f"{round(front_end.frame_shift * sr / 1000)}, top_db {front_end.top_db:g}), "
                        f"{target_length} frames per window")
    return model, report
