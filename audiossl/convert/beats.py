"""BEATs: the released ``{"cfg", "model", "label_dict"}`` ``.pt`` files (microsoft/unilm ``beats/``, and ESPnet's
``generate_beats_checkpoint`` output, which has the same layout) -> the BEATs options of the shared encoder.

Key map (every key of the file has a place or is refused by name):

    patch_embedding.weight                     -> encoder.patch_embed.conv.weight   (Conv2d, no bias)
    layer_norm.*                               -> encoder.patch_embed.norm.*        (LayerNorm over 512)
    post_extract_proj.*                        -> encoder.patch_embed.proj.*        (Linear 512 -> 768)
    encoder.pos_conv.0.weight_g / weight_v     -> encoder.conv_pos.weight_g / weight_v   (weight norm kept as such;
      (or parametrizations.weight.original0/1)                                        the same weight is recomputed)
    encoder.pos_conv.0.bias                    -> encoder.conv_pos.bias
    encoder.layer_norm.*                       -> encoder.pre_norm.*
    encoder.layers.i.self_attn.{q,k,v}_proj.*  -> encoder.blocks.i.attn.qkv.*       (concatenated q, k, v)
    encoder.layers.i.self_attn.out_proj.*      -> encoder.blocks.i.attn.proj.*
    encoder.layers.i.self_attn.grep_linear.*, grep_a -> encoder.blocks.i.attn.(same)
    encoder.layers.i.self_attn.relative_attention_bias.weight -> encoder.rel_pos.table.weight (stored once per
                                                  layer; the copies must be equal, one is kept)
    encoder.layers.i.self_attn_layer_norm.*    -> encoder.blocks.i.norm1.*
    encoder.layers.i.fc1.* / fc2.*             -> encoder.blocks.i.mlp.fc1.* / fc2.*
    encoder.layers.i.final_layer_norm.*        -> encoder.blocks.i.norm2.*
    predictor.*                                -> head.linear.*   (fine-tuned files; rows reordered by label_dict)

The head is BEATs': a Linear on every token, averaged over the real tokens, sigmoid -- a mean-pooled head without
LayerNorm (the mean of per-token logits is the Linear of the mean token). ``label_dict`` maps output index -> AudioSet
MID in an order of its own; the rows are permuted into ``class_labels_indices.csv`` order, so index ``i`` is the
packaged label ``i``. The front end is BEATs': povey window, waveform x 2**15, ``(x - 15.41663) / (2 * 6.55582)``,
trailing frames that fill no whole patch dropped (``partial_patch='drop'``); ``target_length`` is only the inference
window (padding is masked, which gives what the unpadded clip gives).

Padding. BEATs marks padding by chunking a sample-level mask twice (``forward_padding_mask``), which in a partly
padded time block can keep some frequency patches and drop others. Ours marks a patch as padding unless every frame
of it is real audio; both agree on unpadded clips and whenever the real audio ends on a whole time patch.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from audiossl.convert.common import (
    ConversionError, ConversionReport, _check_num_classes, _data_only_globals, _encoder_or_classifier,
    _unmapped_error,
)
from audiossl.hub.reader import safe_torch_load
from audiossl.errors import CheckpointError
from audiossl.frontend.features import BEATS_MEAN, BEATS_STD, FrontEndConfig
from audiossl.models.classifier import AudioClassifier
from audiossl.models.encoder import BEATS_OPTIONS, EncoderConfig

_TOP = {
    "patch_embedding.weight": "patch_embed.conv.weight",
    "layer_norm.weight": "patch_embed.norm.weight",
    "layer_norm.bias": "patch_embed.norm.bias",
    "post_extract_proj.weight": "patch_embed.proj.weight",
    "post_extract_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_conv.0.weight_g": "conv_pos.weight_g",
    "encoder.pos_conv.0.weight_v": "conv_pos.weight_v",
    "encoder.pos_conv.0.parametrizations.weight.original0": "conv_pos.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "conv_pos.weight_v",
    "encoder.pos_conv.0.bias": "conv_pos.bias",
    "encoder.layer_norm.weight": "pre_norm.weight",
    "encoder.layer_norm.bias": "pre_norm.bias",
}
_LAYER = {
    "self_attn.out_proj": "attn.proj",
    "self_attn.grep_linear": "attn.grep_linear",
    "self_attn_layer_norm": "norm1",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "final_layer_norm": "norm2",
}
# ESPnet 202611's frozen helper convolutions for its padding masks: no weights of the model proper
_IGNORED = ("patch_embedding_pad.", "raw2fbank_pad.")
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def read_beats_file(path) -> tuple[dict, dict, dict | None]:
    """``(state dict, cfg, label_dict or None)`` of a BEATs ``.pt`` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    try:
        obj = safe_torch_load(path, what="BEATs checkpoint", allow=_data_only_globals())
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        keys = ", ".join(sorted(map(str, obj))[:10]) if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path} is not a BEATs checkpoint: no 'model' state dict (found: {keys})")
    cfg = obj.get("cfg") if isinstance(obj.get("cfg"), dict) else {}
    labels = obj.get("label_dict") if isinstance(obj.get("label_dict"), dict) else None
    return obj["model"], dict(cfg), labels


def map_beats_state_dict(sd: dict, what: str = "BEATs checkpoint") -> tuple[dict, dict, list[str]]:
    """BEATs keys -> (encoder entries, head entries ``linear.*``, ignored keys); q/k/v fused, the per-layer copies
    of the relative-position table checked equal and kept once."""
    enc, head, ignored, unknown = {}, {}, [], []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    tables: dict[int, torch.Tensor] = {}
    for key, value in sd.items():
        if not torch.is_tensor(value):
            ignored.append(f"{key} (not a tensor)")
            continue
        if key.startswith(_IGNORED):
            ignored.append(key)
        elif key in _TOP:
            enc[_TOP[key]] = value
        elif key in ("predictor.weight", "predictor.bias"):
            head["linear." + key.split(".")[1]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.grep_a", key):
            enc[f"blocks.{m.group(1)}.attn.grep_a"] = value
        elif m := _LAYER_KEY.fullmatch(key):
            i, mod, kind = int(m.group(1)), m.group(2), m.group(3)
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((i, kind), {})[mod[-6]] = value
            elif mod == "self_attn.relative_attention_bias" and kind == "weight":
                tables[i] = value
            elif mod in _LAYER:
                enc[f"blocks.{i}.{_LAYER[mod]}.{kind}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise _unmapped_error(unknown, what, "BEATs")
    for (i, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"{what}: layer {i} lacks {sorted({'q', 'k', 'v'} - set(parts))}_proj.{kind}")
        enc[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if tables:
        first = min(tables)
        for i, t in sorted(tables.items()):
            if t.shape != tables[first].shape or not torch.equal(t, tables[first]):
                raise ConversionError(
                    f"{what}: layer {i}'s relative_attention_bias differs from layer {first}'s; BEATs shares one "
                    f"table across layers, and so does this encoder"
                )
        enc["rel_pos.table.weight"] = tables[first]
    return enc, head, ignored


def _depth(enc: dict, what: str) -> int:
    idx = sorted({int(k.split(".")[1]) for k in enc if k.startswith("blocks.")})
    if not idx or idx != list(range(len(idx))):
        raise ConversionError(f"{what}: transformer layers {idx} are not numbered 0..N-1")
    return len(idx)


def head_order(label_dict: dict, num_classes: int, what: str) -> torch.Tensor:
    """``label_dict`` (output index -> MID; a MID -> index dict is accepted too) -> ``perm [C]`` with ``perm[j]`` =
    the file's row for our AudioSet class ``j``."""
    from audiossl.data.labels import audioset_labels

    items = list(label_dict.items())
    if items and isinstance(items[0][0], str) and not str(items[0][0]).isdigit():
        items = [(v, k) for k, v in items]  # MID -> index
    try:
        by_mid = {str(mid): int(idx) for idx, mid in items}
    except (TypeError, ValueError):
        raise ConversionError(f"{what}: label_dict is not a map of output index -> AudioSet MID") from None
    mids = audioset_labels().mids
    if num_classes != len(mids):
        raise ConversionError(f"{what}: a head of {num_classes} classes with a label_dict; only AudioSet's "
                              f"{len(mids)} classes can be reordered (pass --labels to keep the file's order)")
    missing = [m for m in mids if m not in by_mid]
    if missing or len(by_mid) != num_classes or sorted(by_mid.values()) != list(range(num_classes)):
        raise ConversionError(f"{what}: label_dict does not list each of the {num_classes} AudioSet classes once "
                              f"(missing {missing[:5]}{' ...' if len(missing) > 5 else ''})")
    return torch.tensor([by_mid[m] for m in mids])


def convert_beats(src, labels=None, num_classes: int | None = None, multi_label: bool | None = None,
                  num_heads: int | None = None, target_length: int = 1024, mean: float = BEATS_MEAN,
                  std: float = BEATS_STD) -> tuple[AudioClassifier, ConversionReport]:
    """A BEATs ``.pt`` (pretrained, fine-tuned, or ESPnet's export) -> ``AudioClassifier`` (encoder-only for
    pretrained files)."""
    src = Path(src)
    report = ConversionReport(str(src), "beats")
    what = f"BEATs checkpoint {src}"
    sd, cfg, label_dict = read_beats_file(src)
    if cfg.get("layer_norm_first"):
        raise ConversionError(f"{what}: layer_norm_first=True (pre-LN); the released BEATs models are post-LN")
    if cfg.get("conv_bias"):
        raise ConversionError(f"{what}: conv_bias=True; the BEATs patch embedding has no bias")
    if cfg.get("activation_fn", "gelu") != "gelu":
        raise ConversionError(f"{what}: activation_fn={cfg['activation_fn']!r}; only gelu is supported")
    enc, head, report.ignored = map_beats_state_dict(sd, what)
    for need in ("patch_embed.conv.weight", "patch_embed.proj.weight", "conv_pos.weight_v", "pre_norm.weight"):
        if need not in enc:
            raise ConversionError(f"{what}: no {need} in the BEATs layout (patch_embedding, post_extract_proj, "
                                  f"encoder.pos_conv, encoder.layer_norm); not a BEATs checkpoint")
    if "rel_pos.table.weight" in enc and cfg.get("gru_rel_pos", True) is False:
        raise ConversionError(f"{what}: relative positions without the gate (gru_rel_pos=False) are not supported")
    conv = enc["patch_embed.conv.weight"]
    inner, p = conv.shape[0], conv.shape[-1]
    D = enc["patch_embed.proj.weight"].shape[0]
    depth = _depth(enc, what)
    grep = enc.get("blocks.0.attn.grep_a")
    heads = int(num_heads or cfg.get("encoder_attention_heads") or (grep.shape[1] if grep is not None else D // 64))
    v = enc["conv_pos.weight_v"]
    table = enc.get("rel_pos.table.weight")
    deep_norm = bool(cfg.get("deep_norm", True))
    if "deep_norm" not in cfg:
        report.notes.append("deep_norm: not in the cfg, assumed True (every released checkpoint)")
    max_distance = int(cfg.get("max_distance", 800))
    if "max_distance" not in cfg and table is not None:
        report.notes.append("max_distance: not in the cfg, assumed 800 (every released checkpoint)")
    config = dict(
        BEATS_OPTIONS, embed_dim=D, depth=depth, num_heads=heads,
        mlp_ratio=enc["blocks.0.mlp.fc1.weight"].shape[0] / D, patch_size=p, patch_stride=p, patch_proj_dim=inner,
        conv_pos=v.shape[-1], conv_pos_groups=D // v.shape[1], rel_pos_buckets=0 if table is None else table.shape[0],
        rel_pos_max_distance=max_distance, deep_norm=deep_norm, dropout=float(cfg.get("dropout", 0.0)),
        attn_drop=float(cfg.get("attention_dropout", 0.0)), input_dropout=float(cfg.get("dropout_input", 0.0)),
        layerdrop=float(cfg.get("encoder_layerdrop", 0.0)),
        grad_decay=float(cfg.get("layer_wise_gradient_decay_ratio", 1.0)), name="beats_import",
    )
    head_classes = head["linear.weight"].shape[0] if "linear.weight" in head else None
    _check_num_classes(num_classes, head_classes, what)
    state = {f"encoder.{k}": v for k, v in enc.items()}
    front_end = FrontEndConfig(target_length=target_length, mean=mean, std=std, window_type="povey",
                               waveform_scale=32768.0, num_mel_bins=128)
    if head_classes is not None:
        if labels is None and label_dict is not None:
            perm = head_order(label_dict, head_classes, what)
            head = {k: t[perm] for k, t in head.items()}
            moved = int((perm != torch.arange(head_classes)).sum())
            report.notes.append(f"head: rows reordered from label_dict into AudioSet order ({moved} moved)")
        elif labels is None and head_classes == 527:
            msg = (f"{what} has no label_dict: its head rows are taken to be in AudioSet's class_labels_indices "
                   f"order (released fine-tuned files carry one; their order differs)")
            warnings.warn(msg, stacklevel=2)
            report.notes.append("WARNING " + msg)
    model = _encoder_or_classifier(EncoderConfig(**config), front_end, state, head, "mean",
                                   dict(pool="mean", norm=False), labels, multi_label, report, what)
    report.notes.insert(0, f"encoder: BEATs, {depth} post-LN DeepNorm blocks, dim {D}, {heads} heads, patch {p}, "
                           f"conv positions k={v.shape[-1]}, relative buckets "
                           f"{config['rel_pos_buckets']} (max distance {max_distance}); front end: povey, x 2**15")
    return model, report
