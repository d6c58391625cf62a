"""Audio decoding and encoding.

``load`` turns a file path or raw bytes into a mono float32 waveform at the requested rate (soundfile decodes
wav/flac/ogg, and mp3 where libsndfile supports it; stereo is averaged; ``resample`` changes the rate). Every way an
input can be bad raises ``AudioDecodeError`` naming the input and the reason.

``resample`` is the band-limited windowed-sinc resampler of the reference recipes (torchaudio's ``resample`` with
its defaults: Hann-windowed sinc, 6 zero crossings, roll-off 0.99), written in plain torch so the runtime does not
depend on torchaudio's compiled library, which loads only beside the torch build it was made for. A test checks it
against ``torchaudio.functional.resample``.
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch

from audiossl.errors import UserError

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

# The formats libsndfile recognises by extension; used only to give a better message for a wrong extension.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")


class AudioDecodeError(UserError, ValueError):
    """An input that cannot be turned into audio: missing, empty, truncated, corrupt, or not audio at all."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot decode audio from {source}: {reason}")


def _describe(src: Source) -> str:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes in memory>"
    return str(src)


def _wav_shortfall(head: bytes, total_size: int) -> int | None:
    """For a RIFF/WAVE file, how many bytes of the ``data`` chunk its header announces beyond the end of the file.

    libsndfile quietly decodes a truncated WAV as a shorter one; this catches it. ``None`` when not a WAV or unknown.
    """
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "little" if head[:4] == b"RIFF" else "big"
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], order)
        if cid == b"data":
            if size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size open
                return None
            return max(0, pos + 8 + size - total_size)
        pos += 8 + size + (size & 1)
    return None


def load_with_rate(src: Source, sample_rate: int | None = 16000) -> tuple[torch.Tensor, int]:
    """Decode ``src`` to a mono float32 waveform ``[N]``; resample to ``sample_rate`` (``None`` keeps the source rate).

    Returns ``(waveform, rate)``.
    """
    name = _describe(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise AudioDecodeError(name, "the input is empty (0 bytes)")
        handle: object = io.BytesIO(bytes(src))
    else:
        path = Path(src)
        if not path.exists():
            raise AudioDecodeError(name, "no such file")
        if path.is_dir():
            raise AudioDecodeError(name, "this is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioDecodeError(name, "the file is empty (0 bytes)")
        handle = str(path)
    if isinstance(handle, io.BytesIO):
        head, total = bytes(src[:65536]), len(src)
    else:
        with open(handle, "rb") as fh:
            head = fh.read(65536)
        total = Path(handle).stat().st_size
    missing = _wav_shortfall(head, total)
    if missing:
        raise AudioDecodeError(name, f"truncated WAV: the header announces {missing} more bytes of audio than the file holds")
    try:
        with sf.SoundFile(handle) as f:
            expected = f.frames
            rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)  # [N, channels]
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        hint = ""
        if not isinstance(src, (bytes, bytearray, memoryview)) and Path(src).suffix.lower() not in AUDIO_EXTENSIONS:
            hint = f" (extension {Path(src).suffix or '(none)'!r} is not an audio format)"
        raise AudioDecodeError(name, f"not a readable audio file, or corrupt/truncated{hint}: {e}") from None
    if data.shape[0] == 0:
        raise AudioDecodeError(name, "the audio holds no samples")
    if 0 < expected < 2**62 and data.shape[0] < expected:
        raise AudioDecodeError(name, f"truncated: the header announces {expected} frames, only {data.shape[0]} decoded")
    if not np.isfinite(data).all():
        raise AudioDecodeError(name, "the audio holds NaN or infinite samples")
    wave = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).contiguous()
    if sample_rate is not None and rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
        rate = sample_rate
    return wave, rate


def load(src: Source, sample_rate: int | None = 16000) -> torch.Tensor:
    """Decode ``src`` (a path or the file's bytes) to a mono float32 waveform ``[N]`` at ``sample_rate``."""
    return load_with_rate(src, sample_rate)[0]


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, zero_crossings: int, rolloff: float, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """The polyphase filter bank for ``orig -> new`` (both already divided by their gcd): ``[new, 1, 2 * width + orig]``
    taps, ``width`` input samples of context on each side.

    Output phase ``j`` (time ``j / new``) weighs input sample ``i`` (time ``i / orig``) by a sinc low-pass at
    ``rolloff * min(orig, new)`` evaluated at their distance, tapered by a Hann window over ``zero_crossings`` lobes.
    """
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / cutoff)
    inputs = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig  # [1, 1, taps]
    phases = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new  # [new, 1, 1]
    x = (phases + inputs) * cutoff  # distance in periods of the cut-off
    x = x.clamp_(-zero_crossings, zero_crossings)
    taper = torch.cos(x * math.pi / zero_crossings / 2) ** 2
    x *= math.pi
    kernel = torch.where(x == 0, torch.ones((), dtype=dtype, device=device), x.sin() / x)
    kernel *= taper * (cutoff / orig)
    return kernel, width


def resample(wave: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Band-limited resampling of ``[..., N]`` from ``orig_freq`` to ``new_freq`` Hz -> ``[..., ceil(N * new / orig)]``.

    Equal to ``torchaudio.functional.resample(wave, orig_freq, new_freq)`` with its defaults (tested), on any device.
    """
    if orig_freq <= 0 or new_freq <= 0 or int(orig_freq) != orig_freq or int(new_freq) != new_freq:
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} -> {new_freq}")
    if orig_freq == new_freq:
        return wave
    if not wave.is_floating_point():
        raise TypeError(f"resample expects a floating-point waveform, got {wave.dtype}")
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    kernel, width = _sinc_kernel(orig, new, 6, 0.99, wave.device, wave.dtype)
    shape = wave.shape
    x = wave.reshape(-1, shape[-1])  # [R, N]
    n = x.shape[-1]
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig)  # [R, new, ceil-ish(N / orig)]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(new * n / orig)]  # phases interleaved in time
    return y.reshape(*shape[:-1], y.shape[-1])


def encode_flac(wave: torch.Tensor | np.ndarray, sample_rate: int) -> bytes:
    """Encode a mono waveform ``[N]`` in [-1, 1] as 16-bit FLAC bytes (values outside are clipped)."""
    x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    x = np.clip(x.astype(np.float32, copy=False), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()
