"""EAT / SSLAM: fairseq ``.pt`` checkpoints and their safetensors (HF) ports -> the post-LN encoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from audiossl.convert.common import (
    ConversionError, ConversionReport, _block_count, _build, _check_num_classes, _check_patch, _fixed_positions,
    _heads, _resolve_labels, _unmapped_error, read_weights,
)
from audiossl.features import AUDIOSET_MEAN, AUDIOSET_STD, FrontEndConfig
from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.models.encoder import EncoderConfig


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
