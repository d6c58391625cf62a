"""``audiossl predict FILES... --model DIR``: top-k labels of audio files with an exported model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audiossl.errors import CheckpointError, ExportError, resolve_device
from audiossl.hub.export import ONNX_FILE, load_model
from audiossl.models.inference import AGGREGATIONS, FileResult, _no_head_reason, predict_files
from audiossl.models.runners import OnnxRunner


def _format_text(r: FileResult) -> str:
    head = f"{r.source}  ({r.duration:.2f} s, {r.windows} window{'s' if r.windows != 1 else ''})"
    return "\n".join([head] + [f"  {p:.4f}  {label}" for label, p in r.predictions])


def main(argv: list[str]) -> int:
    """``audiossl predict FILES... --model DIR``."""
    ap = argparse.ArgumentParser(
        prog="audiossl predict",
        description="Print the top-k labels of audio files (any rate, mono or stereo, wav/flac/ogg/...). Files "
        "longer than the model's window are cut into windows --hop seconds apart and the window probabilities "
        "aggregated. A file that cannot be read gets an error line on stderr; the others still run; the exit "
        "status is 1 if any file failed.",
    )
    ap.add_argument("files", nargs="+", help="audio files")
    ap.add_argument("--model", required=True, help="exported model directory (audiossl export / convert)")
    ap.add_argument("--top-k", type=int, default=5, help="labels per file (default 5)")
    ap.add_argument("--json", action="store_true", help="one JSON object per file per line instead of text")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per forward pass, across files (default 8)")
    ap.add_argument("--hop", type=float, default=None, help="seconds between windows of long files (default: half a window)")
    ap.add_argument("--aggregate", choices=AGGREGATIONS, default="max", help="window aggregation (default max)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    ap.add_argument("--onnx", action="store_true", help="run DIR/model.onnx with onnxruntime instead of PyTorch")
    args = ap.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        ap.error("--top-k and --batch-size must be at least 1")
    if args.hop is not None and args.hop <= 0:
        ap.error("--hop must be positive (seconds)")
    device = resolve_device(args.device)
    try:
        model = load_model(args.model)
        runner = OnnxRunner(Path(args.model) / ONNX_FILE) if args.onnx else None
    except (ExportError, CheckpointError, FileNotFoundError, RuntimeError) as e:
        print(f"audiossl predict: error: cannot load the model: {e}", file=sys.stderr)
        return 1
    if not model.has_head:
        print(f"audiossl predict: error: {args.model}: {_no_head_reason()}", file=sys.stderr)
        return 1
    failed = 0
    results = predict_files(model, args.files, args.top_k, args.batch_size, args.hop, args.aggregate, runner=runner,
                            device=None if runner is not None else device)
    for r in _progress(results, len(args.files)):
        if r.error is not None:
            failed += 1
            print(f"audiossl predict: error: {r.error}", file=sys.stderr, flush=True)
            continue
        print(json.dumps(r.to_json()) if args.json else _format_text(r), flush=True)
    if failed:
        print(f"audiossl predict: {failed} of {len(args.files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _progress(it, total: int):
    if total < 8:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="predict", unit="file", leave=False, disable=None)
