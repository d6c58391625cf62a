"""EAT / SSLAM: fairseq ``.pt`` checkpoints and their safetensors (HF) ports -> the post-LN encoder; and, from a
fairseq *pretraining* file, an audiossl pretraining checkpoint (student, CNN decoder, EMA teacher) that
``init_from`` continues (``eat_pretraining_checkpoint``)."""

from __future__ import annotations

import json
import os
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
    model, report, _ = _convert_eat(src, labels, num_classes, multi_label, num_heads, target_length, mean, std, flavour)
    return model, report


def _convert_eat(src, labels, num_classes, multi_label, num_heads, target_length, mean, std, flavour):
    """``convert_eat`` plus the source's flat state dict (for the pretraining conversion)."""
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
    model = _encoder_or_classifier(EncoderConfig(**config), front_end, state, head, "cls",
                                   dict(pool="cls", norm="norm.weight" in head, norm_eps=config["norm_eps"]), labels,
                                   multi_label, report, what)
    report.notes.insert(0, f"encoder: post-LN, {depth} blocks, dim {D}, {config['num_heads']} heads, "
                           f"patch {p}, {n_prefix} CLS")
    return model, report, sd


# --- pretraining checkpoints (SSLAM stage 2 continues EAT) ----------------------------------------------------------
def map_eat_decoder(sd: dict, what: str) -> dict:
    """EAT's ``Decoder2d`` (``modality_encoders.IMAGE.decoder.blocks.{i}.0`` = the grouped conv of layer i; its
    LayerNorm has no weights; ``decoder.proj``) -> ``CNNDecoder2d`` entries (``convs.{i}.*``, ``proj.*``)."""
    out, unknown = {}, []
    for key, value in sd.items():
        name = _eat_name(key)
        if not name.startswith("decoder.") or not torch.is_tensor(value):
            continue
        m = re.fullmatch(r"decoder\.blocks\.(\d+)\.0\.(weight|bias)", name)
        if m:
            out[f"convs.{m.group(1)}.{m.group(2)}"] = value
        elif re.fullmatch(r"decoder\.proj\.(weight|bias)", name):
            out[name[len("decoder."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise _unmapped_error(unknown, what, "EAT CNN decoder (Decoder2d)")
    return out


def decoder_settings(dec: dict, what: str) -> dict:
    """The ``CNNDecoder2d`` settings (EAT objective arguments) its weights imply."""
    layers = sorted(int(k.split(".")[1]) for k in dec if k.startswith("convs.") and k.endswith(".weight"))
    if not layers or layers != list(range(len(layers))) or "proj.weight" not in dec:
        raise ConversionError(f"{what}: the decoder's conv layers {layers} are not numbered 0..n-1 or its proj is missing")
    w = dec["convs.0.weight"]  # [decoder_dim, in_dim / groups, k, k]
    in_dim = dec["proj.weight"].shape[0]
    return {"decoder_layers": len(layers), "decoder_kernel": int(w.shape[-1]), "decoder_groups": in_dim // w.shape[1],
            "decoder_dim": int(w.shape[0])}


def eat_pretraining_checkpoint(src, out_path, num_heads: int | None = None, target_length: int = 1024,
                               mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD,
                               flavour: str = "eat") -> tuple[Path, ConversionReport]:
    """A fairseq EAT/SSLAM *pretraining* ``.pt`` -> an audiossl pretraining checkpoint at ``out_path`` holding the
    student (``encoder.*``), the CNN decoder (``decoder.*``) and the EMA teacher (``teacher.model.*`` from ``_ema``;
    entries ``_ema`` lacks -- fairseq's ``ema_encoder_only`` -- are the student's, as data2vec then uses them), for
    ``--model.init_args.init_from`` (SSLAM stage 2 continues EAT's student, decoder and teacher, as
    ``continue_once`` does). The SSLAM config must build the same decoder (the report names its settings)."""
    model, report, sd = _convert_eat(src, None, None, None, num_heads, target_length, mean, std, flavour)
    what = f"{flavour} checkpoint {src}"
    if model.has_head:
        raise ConversionError(f"{what} is a fine-tuned classifier (fc_norm + head): it holds no decoder or EMA teacher; "
                              "--pretraining needs the pretraining file (e.g. EAT-base_epoch10_pt.pt)")
    dec = map_eat_decoder(sd, what)
    if not dec:
        raise ConversionError(f"{what} holds no decoder weights (modality_encoders.IMAGE.decoder.*): --pretraining "
                              "needs fairseq's pretraining .pt (the HF ports keep the encoder only)")
    settings = decoder_settings(dec, what)
    student = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
    teacher = dict(student)
    ema = next((v for k, v in sd.items() if k.split(".")[-1] == "_ema" and isinstance(v, dict)), None)
    if ema:
        t_enc, _, _ = map_eat_state_dict({k: v for k, v in ema.items() if torch.is_tensor(v)}, f"{what} _ema")
        t_pos = t_enc.pop("positions", None)
        if "pos_table" in student and t_pos is not None:  # the same table layout as the student's
            n_prefix = model.encoder.num_prefix_tokens
            t_enc["pos_table"] = torch.cat([torch.zeros(1, n_prefix, t_pos.shape[-1], dtype=t_pos.dtype),
                                            t_pos[:, : student["pos_table"].shape[1] - n_prefix]], dim=1)
        bad = [k for k, v in t_enc.items() if k not in student or tuple(v.shape) != tuple(student[k].shape)]
        if bad:
            raise ConversionError(f"{what}: _ema entries that do not match the student: {', '.join(bad[:8])}")
        teacher.update({k: v.float() for k, v in t_enc.items()})
        kept = sorted(set(student) - set(t_enc))
        report.notes.append(f"EMA teacher: {len(t_enc)} entries from _ema" +
                            (f", {len(kept)} from the student ({', '.join(kept[:4])}...)" if kept else ""))
    else:
        report.notes.append("WARNING no _ema in the file: the teacher starts as a copy of the student")
    report.notes.append("decoder: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    state = {**{f"encoder.{k}": v for k, v in student.items()}, **{f"decoder.{k}": v for k, v in dec.items()},
             **{f"teacher.model.{k}": v for k, v in teacher.items()}}
    ckpt = {
        "state_dict": state,
        "audiossl": {"format": 1, "kind": "pretrain", "objective": flavour,
                     "encoder": model.encoder.config.to_dict(), "front_end": model.front_end.config.to_dict(),
                     "converted_from": str(src)},
        "hyper_parameters": settings,
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    torch.save(ckpt, tmp)
    os.replace(tmp, out_path)
    report.kind = "pretraining checkpoint"
    return out_path, report
