"""Inference on audio: ``predict`` (top-k labels), ``embed`` (clip + frame embeddings), windowed long files, batched
across files, with PyTorch or ONNX Runtime (``audiossl predict`` is its verb).

It knows a model only by its methods and attributes (``front_end``, ``outputs`` through a runner, ``probabilities``,
``label_names``, ``has_head``, ``encoder``), so it sits below ``AudioClassifier``, whose ``predict`` and ``embed``
call it; it imports no model class.

A model sees ``target_length`` frames at a time (its *window*, 10.24 s for the AudioSet recipes). Shorter clips are
zero-padded exactly as in training (``model.front_end``). Longer clips are cut into windows: the log-mel of the whole
file is computed once (kaldi frames are independent, so a window's frames equal the fbank of that stretch of audio),
window ``i`` starts ``i * hop`` frames in, and the last window is aligned to the end of the file so that no window of
a long file is padding. Window probabilities (sigmoid for multi-label models, softmax otherwise) are aggregated by
``max`` (an event anywhere in the file) or ``mean``.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Union

import numpy as np
import torch

from audiossl.frontend import audio as audio_io
from audiossl.errors import MissingHeadError
from audiossl.models.runners import OnnxRunner, TorchRunner, make_runner  # noqa: F401  (part of this module's API)

AudioInput = Union[str, os.PathLike, bytes, bytearray, memoryview, torch.Tensor, np.ndarray]
AGGREGATIONS = ("max", "mean")


# --- inputs ------------------------------------------------------------------------------------------------------
def to_waveform(audio: AudioInput, rate: int, sample_rate: int | None = None) -> torch.Tensor:
    """A path, file bytes or waveform -> mono float32 ``[N]`` at ``rate``.

    Waveforms are ``[N]`` or ``[channels, N]`` / ``[N, channels]`` (the shorter axis is taken as channels and
    averaged) at ``sample_rate`` (default ``rate``).
    """
    if isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)):
        if sample_rate is not None:
            raise ValueError("sample_rate is for waveforms; a file's own rate is read from the file")
        return audio_io.load(audio, rate)
    x = audio if torch.is_tensor(audio) else torch.from_numpy(np.asarray(audio))
    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 2:
        x = x.mean(dim=0 if x.shape[0] <= x.shape[1] else 1)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"expected a waveform [N] or [channels, N], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("the waveform holds NaN or infinite samples")
    src = rate if sample_rate is None else int(sample_rate)
    return audio_io.resample(x, src, rate) if src != rate else x


def describe(audio: AudioInput) -> str:
    if isinstance(audio, (str, os.PathLike)):
        return str(audio)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return f"<{len(audio)} bytes>"
    return f"<waveform {tuple(audio.shape)}>"


# --- windows -----------------------------------------------------------------------------------------------------
def window_starts(num_frames: int, window: int, hop: int) -> list[int]:
    """First frame of each window over ``num_frames`` frames: ``0, hop, 2*hop, ...`` and a last window ending at the
    last frame (one window at 0 when the clip fits in a window)."""
    if window < 1 or hop < 1:
        raise ValueError(f"window ({window}) and hop ({hop}) must be at least one frame")
    if num_frames <= window:
        return [0]
    last = num_frames - window
    starts = list(range(0, last, hop))
    return starts + [last]


def tiled_starts(num_frames: int, window: int) -> list[int]:
    """Back-to-back windows ``0, window, 2*window, ...`` covering every frame (the last one padded)."""
    return list(range(0, max(num_frames, 1), window))


def hop_frames(hop_seconds: float | None, front_end, window: int) -> int:
    """A hop in seconds -> frames (default: half a window)."""
    if hop_seconds is None:
        return max(1, window // 2)
    if hop_seconds <= 0:
        raise ValueError(f"hop must be positive, got {hop_seconds} s")
    return max(1, round(hop_seconds * 1000.0 / front_end.config.frame_shift))


def log_mel(front_end, wave: torch.Tensor, name: str = "the audio") -> torch.Tensor:
    """Un-normalised log-mel ``[T, F]`` of a whole waveform; raises if it is shorter than one frame."""
    feats = front_end.fbank(wave[None])[0]
    if feats.shape[0] == 0:
        c = front_end.config
        need = int(c.sample_rate * c.frame_length / 1000)
        raise ValueError(f"{name} is too short: {wave.numel()} samples, a frame needs {need} at {c.sample_rate} Hz")
    return feats


def window_batch(front_end, feats: torch.Tensor, starts: list[int],
                 length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Windows of ``length`` frames from ``feats [T, F]`` -> (model input ``[W, target_length, F]``, real frames per
    window ``[W]`` or ``None`` when the front end does not mask padding): each window padded or cropped and
    normalised exactly as ``front_end`` does for a clip of that length."""
    target = front_end.config.target_length
    out = torch.zeros(len(starts), target, feats.shape[1], dtype=feats.dtype)  # zero = padding in the log-mel domain
    n = min(length, target)
    real = torch.empty(len(starts), dtype=torch.long)
    for i, s in enumerate(starts):
        piece = feats[s : s + n]
        out[i, : piece.shape[0]] = piece
        real[i] = max(1, piece.shape[0])
    return front_end.normalize(out, real), (real if front_end.config.mask_padding else None)


def cat_windows(parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate ``window_batch`` outputs along the batch."""
    x = torch.cat([p[0] for p in parts])
    return x, (None if parts[0][1] is None else torch.cat([p[1] for p in parts]))


def aggregate_probabilities(probs: torch.Tensor, how: str) -> torch.Tensor:
    """``[W, C]`` window probabilities -> ``[C]``."""
    if how == "max":
        return probs.max(dim=0).values
    if how == "mean":
        return probs.mean(dim=0)
    raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {how!r}")


def top_k_labels(probs: torch.Tensor, labels: list[str], k: int) -> list[tuple[str, float]]:
    k = max(1, min(int(k), probs.numel()))
    values, idx = probs.topk(k)
    return [(labels[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]


# --- predict -----------------------------------------------------------------------------------------------------
@dataclass
class FileResult:
    source: str
    predictions: list[tuple[str, float]] = field(default_factory=list)  # top-k (label, probability)
    probabilities: torch.Tensor | None = None  # [C] aggregated
    window_probabilities: torch.Tensor | None = None  # [W, C]
    duration: float = 0.0  # seconds
    error: str | None = None
    exception: Exception | None = field(default=None, repr=False)

    @property
    def windows(self) -> int:
        return 0 if self.window_probabilities is None else int(self.window_probabilities.shape[0])

    def to_json(self) -> dict:
        if self.error is not None:
            return {"file": self.source, "error": self.error}
        return {
            "file": self.source,
            "duration": round(self.duration, 3),
            "windows": self.windows,
            "predictions": [{"label": l, "probability": round(p, 6)} for l, p in self.predictions],
        }


@dataclass
class _Pending:
    result: FileResult
    feats: torch.Tensor | None = None
    starts: list[int] = field(default_factory=list)
    next: int = 0  # next window to schedule
    probs: list = field(default_factory=list)  # (window index, [C]) as they come back

    @property
    def scheduled(self) -> bool:  # every window is in a batch (an unreadable source has none)
        return self.next >= len(self.starts)

    @property
    def done(self) -> bool:
        return len(self.probs) == len(self.starts)


def predict_files(
    model: torch.nn.Module,
    sources: Iterable[AudioInput],
    top_k: int = 5,
    batch_size: int = 8,
    hop: float | None = None,
    aggregate: str = "max",
    runner=None,
    device=None,
    sample_rate: int | None = None,
) -> Iterator[FileResult]:
    """Predict every source (paths, bytes or waveforms), yielding one ``FileResult`` per source in input order.

    Windows of all files go through the model in batches of ``batch_size`` (a batch may hold the end of one file and
    the start of the next). A source that cannot be decoded yields a result with ``error`` set; the others go on.
    ``runner``: ``None`` (PyTorch, on ``device``), an ``OnnxRunner``, or anything with ``run(fbank) -> dict``.
    """
    if not model.has_head:
        raise MissingHeadError("cannot predict labels: " + _no_head_reason())
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fe = model.front_end
    rate = fe.config.sample_rate
    window = fe.config.target_length
    hop_f = hop_frames(hop, fe, window)
    run = make_runner(model, runner, device)
    pending: deque[_Pending] = deque()
    todo = iter(sources)
    exhausted = False

    def open_next() -> bool:
        nonlocal exhausted
        try:
            src = next(todo)
        except StopIteration:
            exhausted = True
            return False
        name = describe(src)
        try:
            wave = to_waveform(src, rate, sample_rate)
            feats = log_mel(fe, wave, name)
            item = _Pending(FileResult(name, duration=wave.numel() / rate), feats, window_starts(feats.shape[0], window, hop_f))
        except (audio_io.AudioDecodeError, ValueError, OSError) as e:
            item = _Pending(FileResult(name, error=str(e), exception=e))
        pending.append(item)
        return True

    while True:
        batch, owners = [], []  # window tensors [n, target, F]; (file, window index) per window
        while len(owners) < batch_size:
            item = next((p for p in pending if not p.scheduled), None)
            if item is None:
                if exhausted or not open_next():
                    break
                continue
            take = item.starts[item.next : item.next + batch_size - len(owners)]
            batch.append(window_batch(fe, item.feats, take, window))
            owners += [(item, item.next + j) for j in range(len(take))]
            item.next += len(take)
            if item.scheduled:
                item.feats = None  # its windows are cut: free the file's log-mel
        if batch:
            x, frames = cat_windows(batch)
            probs = model.probabilities(run.run(x, num_frames=frames)["logits"].float())  # [B, C]
            for (item, idx), p in zip(owners, probs):
                item.probs.append((idx, p))
        while pending and pending[0].done:
            yield _finish(pending.popleft(), model, top_k, aggregate)
        if not batch and exhausted and not pending:
            return


def _finish(item: _Pending, model: torch.nn.Module, k: int, aggregate: str) -> FileResult:
    r = item.result
    if r.error is None:
        r.window_probabilities = torch.stack([p for _, p in sorted(item.probs, key=lambda t: t[0])])  # [W, C]
        r.probabilities = aggregate_probabilities(r.window_probabilities, aggregate)
        r.predictions = top_k_labels(r.probabilities, model.label_names, k)
    return r


def _no_head_reason() -> str:
    return ("the model has no classifier head (exported from a pretraining checkpoint); use embed() for "
            "embeddings, or fine-tune it into a classifier")


def predict(model: torch.nn.Module, audio: AudioInput, top_k: int = 5, sample_rate: int | None = None,
            hop: float | None = None, aggregate: str = "max", runner=None) -> list[tuple[str, float]]:
    """Top-k ``[(label, probability), ...]`` for one clip; see ``AudioClassifier.predict``."""
    (res,) = list(predict_files(model, [audio], top_k, hop=hop, aggregate=aggregate, runner=runner,
                                sample_rate=sample_rate))
    if res.exception is not None:
        raise res.exception
    return res.predictions


def windowed_probabilities(model: torch.nn.Module, audio: AudioInput, window: float, hop: float,
                           sample_rate: int | None = None, batch_size: int = 8, runner=None):
    """Class probabilities of windows ``window`` seconds long every ``hop`` seconds (each window padded to the model's
    input as a clip of that length would be). Returns ``(start_seconds [W], probabilities [W, C], log_mel [T, F])``."""
    if not model.has_head:
        raise MissingHeadError("cannot predict labels: " + _no_head_reason())
    fe = model.front_end
    c = fe.config
    wave = to_waveform(audio, c.sample_rate, sample_rate)
    feats = log_mel(fe, wave, describe(audio))
    win = max(1, round(window * 1000.0 / c.frame_shift))
    if win > c.target_length:
        raise ValueError(f"window {window} s is longer than the model's input ({c.target_length} frames)")
    step = max(1, round(hop * 1000.0 / c.frame_shift))
    starts = list(range(0, max(1, feats.shape[0] - win + 1), step))
    run = make_runner(model, runner)
    probs = []
    for i in range(0, len(starts), batch_size):
        x, frames = window_batch(fe, feats, starts[i : i + batch_size], win)
        probs.append(model.probabilities(run.run(x, num_frames=frames)["logits"].float()))
    seconds = torch.tensor(starts, dtype=torch.float64) * c.frame_shift / 1000.0
    return seconds, torch.cat(probs), feats


# --- embed -------------------------------------------------------------------------------------------------------
def embed(model: torch.nn.Module, audio: AudioInput, sample_rate: int | None = None, batch_size: int = 8,
          runner=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip embedding ``[D]``, frame embeddings ``[N, D]``) of one clip; see ``AudioClassifier.embed``.

    A clip that fits in a window gives exactly ``model.forward_features(model.front_end(wave))``; a longer one is cut
    into back-to-back windows (the last padded): the clip embedding is their mean, the frames are concatenated.
    """
    fe = model.front_end
    wave = to_waveform(audio, fe.config.sample_rate, sample_rate)
    feats = log_mel(fe, wave, describe(audio))
    window = fe.config.target_length
    starts = tiled_starts(feats.shape[0], window)
    run = make_runner(model, runner)
    embs, frames = [], []
    for i in range(0, len(starts), batch_size):
        x, real = window_batch(fe, feats, starts[i : i + batch_size], window)
        out = run.run(x, want_frames=True, num_frames=real)
        embs.append(out["embedding"].float())
        toks = out["frame_embeddings"].float()  # [w, N, D]
        if real is not None:  # drop the padding patches of the last window
            valid = model.encoder.patch_valid(real, model.encoder.grid_shape(x.shape[1]))
            if valid is not None:
                toks = [t[v] for t, v in zip(toks, valid)]
        frames.extend(list(toks))
    return torch.cat(embs).mean(dim=0), torch.cat(frames)
