"""AudioMAE: timm-style ``.pth`` checkpoints -> the pre-LN encoder."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from audiossl.convert.common import (
    ConversionError, ConversionReport, _block_count, _check_num_classes, _check_patch, _encoder_or_classifier,
    _fixed_positions, _heads, _unmapped_error, read_weights,
)
from audiossl.frontend.features import AUDIOSET_MEAN, AUDIOSET_STD, FrontEndConfig
from audiossl.models.classifier import AudioClassifier
from audiossl.models.encoder import EncoderConfig


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
    # global-pool fine-tuning: mean of patch tokens -> fc_norm -> head, and no final norm; otherwise CLS -> head
    head_kw = dict(pool="mean" if has_fc_norm else "cls", norm=has_fc_norm, norm_eps=1e-6)
    model = _encoder_or_classifier(EncoderConfig(**config), front_end, state, head, "mean", head_kw, labels,
                                   multi_label, report, what)
    report.notes.insert(0, f"encoder: pre-LN, {depth} blocks, dim {D}, {config['num_heads']} heads, patch {p} "
                           f"stride {stride}, {'final norm' if final_norm else 'no final norm (global pool)'}")
    return model, report
