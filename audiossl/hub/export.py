"""The export format, and ONNX.

An exported model is a directory:

    model.safetensors   the ``AudioClassifier`` state dict (tensors only; nothing to unpickle)
    config.json         ``AudioClassifier.config_dict()`` + {"format_version": 1, "audiossl_version": "..."}:
                        encoder, head, front end (rate, fbank settings, target length, mean/std), label names,
                        multi_label. Encoder-only models (exported from pretraining) have ``"head": null``,
                        ``"label_names": []`` and ``"pool"`` (how ``embed`` pools the clip embedding).
    model.onnx          (optional) normalised fbank ``[B, T, F]`` -> ``logits [B, C]`` (classifiers only),
                        ``embedding [B, D]``, ``frame_embeddings [B, N, D]``; batch and time are dynamic (time is
                        fixed for models with a learned position table, e.g. imported AST).

``load_model(DIR)`` rebuilds the model without Lightning and without unpickling (it lives in ``audiossl.hub.reader``
with the other readers and is re-exported here; this module writes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from audiossl.version import __version__
from audiossl.hub.reader import (  # noqa: F401  (reading exports lives with reading checkpoints; re-exported here)
    CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, load_model, model_from_checkpoint, read_config, read_safetensors,
)
from audiossl.data.manifest import atomic_write
from audiossl.data.storage import output_dir
from audiossl.errors import CheckpointError, ExportError
from audiossl.models.classifier import AudioClassifier
from audiossl.models.runners import OnnxRunner

ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4

# --- safetensors + JSON ------------------------------------------------------------------------------------------
def save_model(model: AudioClassifier, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` (created if needed); returns the directory.

    A model already in ``out_dir`` is replaced (with a note on stderr), and its ``model.onnx`` is removed: it would
    describe the old weights."""
    from safetensors.torch import save_file

    out = output_dir(out_dir)
    if (out / WEIGHTS_FILE).exists() or (out / CONFIG_FILE).exists():
        print(f"audiossl: replacing the model in {out}", file=sys.stderr)
    if (out / ONNX_FILE).exists():
        (out / ONNX_FILE).unlink()
        print(f"audiossl: removed the old {out / ONNX_FILE} (it belonged to the replaced model)", file=sys.stderr)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "audiossl_version": __version__})
    config = {**model.config_dict(), "format_version": FORMAT_VERSION, "audiossl_version": __version__}
    os.replace(tmp, out / WEIGHTS_FILE)
    atomic_write(out / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return out


# --- ONNX --------------------------------------------------------------------------------------------------------
class _OnnxGraph(nn.Module):
    """The exported function: normalised fbank (and, with a padding mask, real frames per row) -> (logits,)
    embedding, frame embeddings."""

    def __init__(self, model: AudioClassifier):
        super().__init__()
        self.model = model

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor | None = None):
        logits, emb, frames = self.model.outputs(fbank, num_frames)  # [B, C] or None, [B, D], [B, N, D]
        if logits is None:
            return emb, frames
        return logits, emb, frames


def onnx_output_names(model: AudioClassifier) -> list[str]:
    return (["logits"] if model.has_head else []) + ["embedding", "frame_embeddings"]


def onnx_dynamic_time(model: AudioClassifier) -> bool:
    """Whether the ONNX graph accepts any time length (sin-cos positions) or only ``target_length`` (learned)."""
    return model.encoder.pos_table is None


def onnx_takes_frames(model: AudioClassifier) -> bool:
    """Whether the graph has the ``num_frames [B]`` input (models whose front end masks padding)."""
    return bool(model.front_end.config.mask_padding)


def export_onnx(model: AudioClassifier, path: str | os.PathLike, opset: int = 17, verify: bool = True) -> dict:
    """Write ``model`` as ONNX (inputs ``fbank [B, T, F]`` and, when the model masks padding, ``num_frames [B]``
    int64, the real frames of each row) and, with ``verify``, check it against PyTorch with onnxruntime at two batch
    sizes, padded rows and (when the time axis is dynamic) two lengths. Returns a report dict."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'audiossl[onnx]'") from None
    device, training = next(model.parameters()).device, model.training
    try:
        return _export_onnx(model.eval().cpu(), Path(path), opset, verify)
    finally:
        model.to(device).train(training)


def _export_onnx(model: AudioClassifier, path: Path, opset: int, verify: bool) -> dict:
    fe = model.front_end.config
    names = onnx_output_names(model)
    dynamic_time = onnx_dynamic_time(model)
    in_axes = {0: "batch", 1: "time"} if dynamic_time else {0: "batch"}
    axes = {"fbank": in_axes, "embedding": {0: "batch"}, "frame_embeddings": {0: "batch", 1: "patches"}}
    if model.has_head:
        axes["logits"] = {0: "batch"}
    example = (torch.zeros(2, fe.target_length, fe.num_mel_bins),)
    inputs = ["fbank"]
    if onnx_takes_frames(model):
        example += (torch.tensor([fe.target_length, max(1, fe.target_length // 2)]),)
        inputs.append("num_frames")
        axes["num_frames"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(
            _OnnxGraph(model), example, str(path), dynamo=False, opset_version=opset, input_names=inputs,
            output_names=names, dynamic_axes=axes, do_constant_folding=True,
        )
    report = {"path": str(path), "outputs": names, "dynamic_time": dynamic_time, "opset": opset}
    if verify:
        report["max_abs_diff"] = verify_onnx(model, path)
    return report


def parity_inputs(model: AudioClassifier, dynamic_time: bool | None = None,
                  seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(normalised-fbank-like input, real frames per row or ``None``) pairs for a parity check: batch 1 and 3, at the
    target length and (dynamic time only) at about half of it; the batch of 3 has padded rows when the model masks
    padding."""
    fe = model.front_end.config
    dynamic_time = onnx_dynamic_time(model) if dynamic_time is None else dynamic_time
    g = torch.Generator().manual_seed(seed)
    p = model.encoder.config.patch_size
    short = max(p, (fe.target_length // 2) - 3) if dynamic_time else fe.target_length
    frames = onnx_takes_frames(model)
    full = torch.tensor([fe.target_length]) if frames else None
    padded = torch.tensor([short, max(1, short // 2), min(short, p + 1)]) if frames else None
    return [(torch.randn(1, fe.target_length, fe.num_mel_bins, generator=g) * 0.5, full),
            (torch.randn(3, short, fe.num_mel_bins, generator=g) * 0.5, padded)]


def verify_onnx(model: AudioClassifier, path: str | os.PathLike, tolerance: float = ONNX_TOLERANCE) -> float:
    """Largest |onnxruntime - PyTorch| over all outputs on ``parity_inputs``; raises ``ExportError`` above tolerance."""
    runner = OnnxRunner(path)
    worst = 0.0
    for x, frames in parity_inputs(model):
        with torch.no_grad():
            ref = _OnnxGraph(model.eval().cpu())(x, frames)
        got = runner.run(x, num_frames=frames)
        for name, r in zip(onnx_output_names(model), ref):
            g = torch.from_numpy(got[name])
            if g.shape != r.shape:
                raise ExportError(f"ONNX output {name} has shape {tuple(g.shape)}, PyTorch {tuple(r.shape)} (input {tuple(x.shape)})")
            worst = max(worst, float((g - r).abs().max()))
    if worst > tolerance:
        raise ExportError(f"the ONNX graph {path} differs from PyTorch by {worst:.3g} (> {tolerance}); do not use it")
    return worst


# --- checkpoint -> export directory --------------------------------------------------------------------------------
def export_checkpoint(ckpt, out_dir: str | os.PathLike, onnx: bool = False, opset: int = 17) -> dict:
    """An audiossl checkpoint (path or loaded dict) -> export directory (+ ``model.onnx``). Classifier checkpoints give
    a classifier; pretraining checkpoints an encoder-only model. Returns a report dict."""
    model = model_from_checkpoint(ckpt)
    out = save_model(model, out_dir)
    report = {
        "out_dir": str(out),
        "kind": "classifier" if model.has_head else "encoder-only",
        "num_classes": len(model.label_names),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if onnx:
        report["onnx"] = export_onnx(model, out / ONNX_FILE, opset=opset)
    return report


def main(argv: list[str]) -> int:
    """``audiossl export CKPT --out DIR [--onnx]``."""
    ap = argparse.ArgumentParser(
        prog="audiossl export",
        description="Export an audiossl checkpoint to DIR/model.safetensors + DIR/config.json (loadable with "
        "audiossl.load_model(DIR), no Lightning, no unpickling); --onnx adds DIR/model.onnx checked against PyTorch.",
    )
    ap.add_argument("checkpoint", help="a .ckpt written by audiossl pretraining or fine-tuning")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--onnx", action="store_true", help="also write model.onnx (normalised fbank -> logits, embeddings)")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    args = ap.parse_args(argv)
    try:
        report = export_checkpoint(args.checkpoint, args.out, onnx=args.onnx, opset=args.opset)
    except (CheckpointError, ExportError) as e:
        print(f"audiossl export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported {report['kind']} model ({report['parameters'] / 1e6:.1f}M parameters, "
          f"{report['num_classes']} classes) to {report['out_dir']}")
    if "onnx" in report:
        o = report["onnx"]
        time_axis = "dynamic" if o["dynamic_time"] else "fixed to the target length"
        print(f"  {o['path']}: outputs {', '.join(o['outputs'])}; batch dynamic, time {time_axis}; "
              f"onnxruntime vs PyTorch max abs diff {o['max_abs_diff']:.2e}")
    return 0
