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
             pretrained files encoder-only models. ``--pretraining`` also writes ``OUT/pretraining.ckpt``: an
             audiossl pretraining checkpoint with the student, the CNN decoder and the EMA teacher (``_ema``), which
             ``init_from`` continues (SSLAM stage 2 from a published EAT file, as the reference does).
``bat``      the released encoder safetensors (HF lrauch/BAT-vit-b16-pretrainedAS2M: plain ViT names + ``pre_norm``
             + ``blocks.i.attn.gate``), ``BAT_base.pt`` (``student.encoder.*``) or BAT's trainer output (``encoder``,
             ``--teacher``: ``ema_encoder``). Post-LN with gated attention (``attn_gate``), BAT's stored position table
             kept as a frozen buffer (``pos_embed='sincos_bat'``), 64-patch windows (``chunk_time_patches``), BAT's
             front end (``spectrogram='mel_db_minmax'``). Every block must carry its gate.
``audiomae`` timm-style ``.pth`` (``{"model": state dict}``): ``patch_embed.proj``, ``cls_token``, ``pos_embed``
             (sin-cos with a CLS row), pre-LN blocks, ``norm`` (pretrained / CLS-pooled) or ``fc_norm`` (global-pool
             fine-tuning, no final norm: ``final_norm=False``, head pool ``mean``), ``head``; decoder weights ignored.
``beats``    the released ``{"cfg", "model", "label_dict"}`` ``.pt``: the BEATs options of the encoder (Conv2d ->
             LayerNorm -> Linear patches, convolutional and gated relative positions, DeepNorm post-LN blocks, no
             CLS), a mean-pooled head without LayerNorm whose rows are put in AudioSet order from ``label_dict``, and
             BEATs' front end (povey window, x 2**15, its mean/std). See ``convert/beats.py``.

Fixed sin-cos positions are computed for any input length; learned tables are cropped or interpolated along time.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from audiossl.convert.audiomae import convert_audiomae
from audiossl.convert.bat import convert_bat, map_bat_state_dict
from audiossl.convert.beats import convert_beats
from audiossl.convert.common import ConversionError, ConversionReport, default_labels, read_label_names, read_weights
from audiossl.convert.eat import convert_eat, eat_pretraining_checkpoint, map_eat_state_dict
from audiossl.convert.hf_ast import convert_hf_ast, map_ast_state_dict
from audiossl.errors import ExportError
from audiossl.hub.export import ONNX_FILE, export_onnx, save_model
from audiossl.frontend.features import AUDIOSET_MEAN, AUDIOSET_STD, BEATS_MEAN, BEATS_STD
from audiossl.models.classifier import AudioClassifier

__all__ = ["FORMATS", "ConversionError", "ConversionReport", "convert", "convert_audiomae", "convert_bat",
           "convert_beats", "convert_eat", "convert_hf_ast", "default_labels", "eat_pretraining_checkpoint",
           "map_ast_state_dict", "map_bat_state_dict", "map_eat_state_dict", "read_label_names", "read_weights"]

FORMATS = ("hf-ast", "eat", "sslam", "audiomae", "beats", "bat")


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
    elif fmt == "beats":
        model, report = convert_beats(src, **{k: v for k, v in options.items() if k != "patch_stride"})
    elif fmt == "bat":
        keep = ("labels", "num_classes", "multi_label", "num_heads", "target_length", "teacher")
        model, report = convert_bat(src, **{k: v for k, v in options.items() if k in keep})
    else:
        raise ConversionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if out_dir is not None:
        save_model(model, out_dir)
    return model, report


def main(argv: list[str]) -> int:
    """``audiossl convert {hf-ast,eat,sslam,audiomae,beats} SRC --out DIR``."""
    ap = argparse.ArgumentParser(
        prog="audiossl convert",
        description="Import published weights into the audiossl export format (DIR/model.safetensors + config.json). "
        "hf-ast: a transformers AST directory; eat/sslam: fairseq .pt or safetensors (HF port); audiomae: .pth; "
        "beats: the released BEATs .pt; bat: the HF safetensors (directory or file), BAT_base.pt or BAT's trainer "
        "output.",
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
    ap.add_argument("--target-length", type=int, default=1024,
                    help="frames per input window (eat/sslam/audiomae/beats/bat)")
    ap.add_argument("--mean", type=float, help=f"fbank normalisation mean (default {AUDIOSET_MEAN}; beats: {BEATS_MEAN})")
    ap.add_argument("--std", type=float, help=f"fbank normalisation std (default {AUDIOSET_STD}; beats: {BEATS_STD})")
    ap.add_argument("--patch-stride", type=int, help="audiomae: patch stride of overlapping-patch models (default: patch size)")
    ap.add_argument("--teacher", action="store_true", help="bat: BAT trainer output: the EMA teacher (default: student)")
    ap.add_argument("--onnx", action="store_true", help="also write model.onnx (checked against PyTorch)")
    ap.add_argument("--pretraining", action="store_true",
                    help="eat/sslam: also write OUT/pretraining.ckpt (student + CNN decoder + EMA teacher) for "
                         "--model.init_args.init_from, e.g. SSLAM stage 2 from EAT-base_epoch10_pt.pt")
    args = ap.parse_args(argv)
    if args.pretraining and args.format not in ("eat", "sslam"):
        print(f"audiossl convert: error: --pretraining applies to eat/sslam files, not {args.format}", file=sys.stderr)
        return 2
    options = {"labels": args.labels, "num_classes": args.num_classes, "multi_label": args.multi_label}
    if args.format != "hf-ast":
        options.update(num_heads=args.num_heads, target_length=args.target_length)
        options.update({k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None})
        if args.format == "audiomae":
            options["patch_stride"] = args.patch_stride
        if args.format == "bat":
            options["teacher"] = args.teacher
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, report = convert(args.format, args.src, args.out, **options)
        onnx_report = export_onnx(model, Path(args.out) / ONNX_FILE) if args.onnx else None
        pre = None
        if args.pretraining:
            norm = {k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None}
            pre = eat_pretraining_checkpoint(args.src, Path(args.out) / "pretraining.ckpt", num_heads=args.num_heads,
                                             target_length=args.target_length, flavour=args.format, **norm)
    except (ConversionError, ExportError) as e:
        print(f"audiossl convert: error: {e}", file=sys.stderr)
        return 1
    for w in caught:
        if issubclass(w.category, UserWarning) and str(w.message) not in report.summary():
            print(f"audiossl convert: warning: {w.message}", file=sys.stderr)
    print(report.summary())
    print(f"  wrote {args.out}/model.safetensors + config.json")
    if pre is not None:
        path, pre_report = pre
        for note in pre_report.notes[-2:]:
            print(f"  {note}")
        print(f"  wrote {path}: continue it with --model.init_args.init_from {path}")
    if onnx_report:
        print(f"  wrote {onnx_report['path']} (onnxruntime vs PyTorch max abs diff {onnx_report['max_abs_diff']:.2e})")
    return 0
