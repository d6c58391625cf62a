"""Plots: a clip's log-mel spectrogram, a model's class probabilities over time, training curves from TensorBoard.

All figures are drawn with matplotlib's Agg canvas (no display, no pyplot state) at an exact pixel size:
``width x height`` pixels at 100 dpi.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
from pathlib import Path

import torch

DPI = 100
DB_PER_NEPER = 10.0 / math.log(10.0)  # kaldi fbank is ln(power); dB = 10 log10(power)


def _figure(width: int, height: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if width < 50 or height < 50:
        raise ValueError(f"a plot needs at least 50x50 pixels, got {width}x{height}")
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    return out


def _draw_mel(ax, fig, feats: torch.Tensor, frame_shift_ms: float, colorbar: bool = True):
    """``feats [T, F]`` (ln power) on ``ax``: time (s) x mel bin, colour in dB."""
    T, F = feats.shape
    db = (feats * DB_PER_NEPER).T.numpy()  # [F, T]
    seconds = T * frame_shift_ms / 1000.0
    im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", extent=(0.0, seconds, 0, F),
                   interpolation="nearest")
    ax.set_ylabel("mel bin")
    ax.set_xlabel("time (s)")
    if colorbar:
        fig.colorbar(im, ax=ax, label="dB", pad=0.01)
    return im


def plot_mel(audio, out_png, width: int = 1000, height: int = 400, front_end=None, sample_rate: int | None = None,
             title: str | None = None) -> Path:
    """The log-mel spectrogram (the model front end's fbank, before normalisation) of a file or waveform."""
    from audiossl.frontend.features import FrontEnd
    from audiossl.models.inference import describe, log_mel, to_waveform

    fe = front_end if isinstance(front_end, FrontEnd) else FrontEnd(front_end)
    wave = to_waveform(audio, fe.config.sample_rate, sample_rate)
    feats = log_mel(fe, wave, describe(audio))
    fig = _figure(width, height)
    ax = fig.add_subplot(1, 1, 1)
    _draw_mel(ax, fig, feats, fe.config.frame_shift)
    ax.set_title(title or f"{Path(describe(audio)).name}: log-mel ({fe.config.num_mel_bins} bins, "
                 f"{fe.config.sample_rate} Hz)")
    return _save(fig, out_png)


def plot_predictions(model, audio, out_png, top_k: int = 5, window: float | None = None, hop: float | None = None,
                     width: int = 1200, height: int = 700, sample_rate: int | None = None, runner=None) -> Path:
    """Spectrogram on top, the probabilities of the ``top_k`` classes (highest peak over the clip) over time below.

    Probabilities come from windows of ``window`` seconds (default: 1 s or the model's window if shorter) every
    ``hop`` seconds (default: a quarter window), each padded to the model's input as a clip of that length would be.
    """
    from audiossl.models.inference import describe, windowed_probabilities

    c = model.front_end.config
    model_window = c.target_length * c.frame_shift / 1000.0
    window = min(1.0, model_window) if window is None else window
    hop = window / 4 if hop is None else hop
    starts, probs, feats = windowed_probabilities(model, audio, window, hop, sample_rate=sample_rate, runner=runner)
    k = max(1, min(top_k, probs.shape[1]))
    peak = probs.max(dim=0).values  # [C]
    classes = peak.topk(k).indices.tolist()
    centres = (starts + window / 2).numpy()
    fig = _figure(width, height)
    ax_mel, ax_p = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1])
    _draw_mel(ax_mel, fig, feats, c.frame_shift)
    ax_mel.set_xlabel("")
    ax_mel.set_title(f"{Path(describe(audio)).name}: top-{k} classes ({window:g} s windows every {hop:g} s)")
    for i in classes:
        ax_p.plot(centres, probs[:, i].numpy(), marker="." if len(centres) < 40 else None, label=model.label_names[i])
    ax_p.set_ylim(0, 1.02)
    ax_p.set_xlim(0, feats.shape[0] * c.frame_shift / 1000.0)
    ax_p.set_ylabel("sigmoid probability" if model.multi_label else "softmax probability")
    ax_p.set_xlabel("time (s)")
    ax_p.grid(alpha=0.3)
    ax_p.legend(loc="upper right", fontsize="small", framealpha=0.8)
    # keep the probability axes as wide as the spectrogram's (which lost width to its colour bar)
    fig.colorbar(ax_mel.images[0], ax=ax_p, pad=0.01).ax.set_visible(False)
    return _save(fig, out_png)


# --- training curves -----------------------------------------------------------------------------------------------
def read_scalars(log_dir) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """All scalars under ``log_dir``: ``{run: {tag: (steps, values)}}``; a run is a directory holding event files
    (e.g. Lightning's ``lightning_logs/version_0``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(log_dir)
    if not root.exists():
        raise FileNotFoundError(f"log directory {root} does not exist")
    files = sorted(root.rglob("events.out.tfevents.*")) if root.is_dir() else [root]
    if not files:
        raise ValueError(f"no TensorBoard event files (events.out.tfevents.*) under {root}")
    runs: dict[str, dict] = {}
    for run_dir in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        name = str(run_dir.relative_to(root)) if root.is_dir() and run_dir != root else run_dir.name
        for tag in acc.Tags().get("scalars", []):
            events = acc.Scalars(tag)
            runs.setdefault(name, {})[tag] = ([e.step for e in events], [e.value for e in events])
    return runs


def plot_training_curves(log_dir, out_png, tags=None, width: int = 1200, height: int | None = None) -> list[str]:
    """One panel per scalar tag (all runs under ``log_dir`` overlaid), from TensorBoard event files. ``tags``: names
    or glob patterns (``"train/*"``); default all scalars. Returns the tags drawn."""
    runs = read_scalars(log_dir)
    available = sorted({t for r in runs.values() for t in r})
    if not available:
        raise ValueError(f"the event files under {log_dir} hold no scalars")
    if tags:
        chosen = [t for t in available if any(fnmatch.fnmatchcase(t, pat) for pat in tags)]
        if not chosen:
            raise ValueError(f"no scalar matches {list(tags)}; available: {', '.join(available)}")
    else:
        chosen = available
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = _figure(width, height or max(300, 280 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, tag in zip(axes.flat, chosen):
        for run, scalars in runs.items():
            if tag in scalars:
                steps, values = scalars[tag]
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=run)
        ax.set_title(tag, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(chosen) :]:
        ax.set_visible(False)
    _save(fig, out_png)
    return chosen


# --- the verb ----------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """``audiossl plot {mel,predictions,curves} ...``."""
    ap = argparse.ArgumentParser(prog="audiossl plot", description="Plots written as PNG files.")
    sub = ap.add_subparsers(dest="what", required=True)
    mel = sub.add_parser("mel", help="log-mel spectrogram of an audio file (time x mel bins, colour bar in dB)")
    mel.add_argument("file")
    mel.add_argument("--model", help="use this exported model's front end (default: 16 kHz, 128 mel bins)")
    pred = sub.add_parser("predictions", help="spectrogram + top-k class probabilities over time")
    pred.add_argument("file")
    pred.add_argument("--model", required=True, help="exported model directory")
    pred.add_argument("--top-k", type=int, default=5)
    pred.add_argument("--window", type=float, help="seconds per prediction window (default 1, or the model's window)")
    pred.add_argument("--hop", type=float, help="seconds between windows (default: a quarter window)")
    curves = sub.add_parser("curves", help="training curves from TensorBoard logs")
    curves.add_argument("log_dir")
    curves.add_argument("--tags", nargs="+", help="scalar tags or glob patterns (default: all)")
    for p, (w, h) in ((mel, (1000, 400)), (pred, (1200, 700)), (curves, (1200, None))):
        p.add_argument("--out", required=True, help="output PNG")
        p.add_argument("--width", type=int, default=w, help=f"pixels (default {w})")
        p.add_argument("--height", type=int, default=h, help=f"pixels (default {h or 'by panel count'})")
    args = ap.parse_args(argv)
    if args.what == "predictions":
        if args.top_k < 1:
            ap.error("--top-k must be at least 1")
        for name in ("window", "hop"):
            if getattr(args, name) is not None and getattr(args, name) <= 0:
                ap.error(f"--{name} must be positive")
    if args.width is not None and args.width < 1 or args.height is not None and args.height < 1:
        ap.error("--width and --height must be at least 1")
    from audiossl.frontend.audio import AudioDecodeError
    from audiossl.hub.reader import CheckpointError
    from audiossl.data.storage import output_file
    from audiossl.hub.export import ExportError, load_model

    inputs = (args.file,) if args.what != "curves" else ()
    try:
        output_file(args.out, inputs=inputs)
        if args.what == "mel":
            fe = load_model(args.model).front_end if args.model else None
            out = plot_mel(args.file, args.out, args.width, args.height, front_end=fe)
        elif args.what == "predictions":
            out = plot_predictions(load_model(args.model), args.file, args.out, top_k=args.top_k, window=args.window,
                                   hop=args.hop, width=args.width, height=args.height)
        else:
            tags = plot_training_curves(args.log_dir, args.out, tags=args.tags, width=args.width, height=args.height)
            out = Path(args.out)
            print(f"{len(tags)} curve(s): {', '.join(tags)}")
    except (AudioDecodeError, ExportError, CheckpointError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"audiossl plot: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
