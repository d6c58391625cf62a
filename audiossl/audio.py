"""Audio decoding and encoding.

``load`` turns a file path or raw bytes into a mono float32 waveform at the requested rate (soundfile decodes
wav/flac/ogg, and mp3 where libsndfile supports it; stereo is averaged; ``torchaudio.functional.resample`` changes
the rate). Every way an input can be bad raises ``AudioDecodeError`` naming the input and the reason.
"""

from __future__ import annotations

import io
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


def resample(wave: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """``torchaudio.functional.resample`` (windowed sinc, the reference implementations' resampler)."""
    import torchaudio.functional as AF

    if orig_freq == new_freq:
        return wave
    return AF.resample(wave, orig_freq=int(orig_freq), new_freq=int(new_freq))


def encode_flac(wave: torch.Tensor | np.ndarray, sample_rate: int) -> bytes:
    """Encode a mono waveform ``[N]`` in [-1, 1] as 16-bit FLAC bytes (values outside are clipped)."""
    x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    x = np.clip(x.astype(np.float32, copy=False), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()
