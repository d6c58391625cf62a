"""transformers ``ASTForAudioClassification`` / ``ASTModel`` directories -> the encoder with AST's options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from audiossl.convert.common import (
    ConversionError, ConversionReport, _check_num_classes, _encoder_or_classifier, _unmapped_error, read_weights,
)
from audiossl.frontend.features import FrontEndConfig
from audiossl.models.classifier import AudioClassifier
from audiossl.models.encoder import EncoderConfig

# AST's published feature-extractor statistics (the unrounded AudioSet constants).
AST_MEAN, AST_STD = -4.2677393, 4.5689974


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
    if head_classes is not None:
        if labels is None and isinstance(cfg.get("id2label"), dict) and len(cfg["id2label"]) == head_classes:
            labels = [cfg["id2label"][k] for k in sorted(cfg["id2label"], key=int)]
            report.notes.append(f"labels: id2label from config.json ({head_classes})")
        if multi_label is None and cfg.get("problem_type"):
            multi_label = cfg["problem_type"] == "multi_label_classification"
    model = _encoder_or_classifier(config, front_end, state, head, "prefix", dict(pool="prefix", norm=True, norm_eps=eps),
                                   labels, multi_label, report, what)
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
