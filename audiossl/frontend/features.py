"""The audio front end: Kaldi-compatible log-mel filter banks, batched, on any device.

Every published AudioSet transformer (AST, AudioMAE, EAT, SSLAM) was trained on

    torchaudio.compliance.kaldi.fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False,
                                      window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)

applied to one clip at a time. ``kaldi_fbank`` computes the same numbers for a whole batch ``[B, N]`` in one pass:
strided framing (a view, no copy), per-frame DC removal, pre-emphasis fused with the window, one real FFT, the power
spectrum as ``re*re + im*im`` and the mel projection restricted to each band group's non-zero FFT bins. The batch is
processed in chunks of about ``_CHUNK_FRAMES`` frames so the intermediate buffers stay in cache; that is what makes the
batched version faster than a per-clip loop instead of ~3x slower.

The FFT input is computed with the same floating-point operations in the same order as torchaudio (mean subtraction,
equivalent "pre-emphasise the whole waveform, then correct for the mean" is faster but loses the low mel bands to
cancellation (errors ~2e-3 in log energy on plain noise).

``FrontEnd`` wraps it with the pad/crop and normalisation of the reference recipes; its config travels with every
checkpoint and export. ``spectrogram: mel_db_minmax`` switches it to BAT's front end (``audiossl.frontend.bat_mel``: centred power
mel -> dB with a per-clip top_db floor -> per-clip min-max to [0, 1] over the real frames -> padding 0 after
normalising; ``frame_length`` 64 ms = n_fft 1024, ``frame_shift`` 10 ms = hop 160; mean/std unused).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from audiossl.config_dict import DictConfig
from audiossl.frontend.bat_mel import db_minmax, mel_power

# torchaudio's kaldi uses the float32 machine epsilon as the log floor, whatever the input dtype.
_LOG_FLOOR = float(torch.finfo(torch.float32).eps)
_PREEMPHASIS = 0.97
_LOW_FREQ = 20.0
_CHUNK_FRAMES = 2048  # frames per chunk on CPU (2048 x 512 floats = 4 MiB of FFT input)
_MEL_GROUPS = 4
WINDOW_TYPES = ("hanning", "povey")  # povey = hanning ** 0.85 (torchaudio's kaldi default; BEATs)

SPECTROGRAMS = ("kaldi", "mel_db_minmax")

# AudioSet statistics of this exact front end (AudioMAE's constants, rounded as in EAT/SSLAM).
AUDIOSET_MEAN = -4.268
AUDIOSET_STD = 4.569
# BEATs' front end (povey window, waveform x 2**15): its released normalisation constants.
BEATS_MEAN = 15.41663
BEATS_STD = 6.55582
ESC50_MEAN = -6.627
ESC50_STD = 5.359


def _mel(freq):
    """Kaldi's mel scale, ``1127 ln(1 + f / 700)`` (a float or a tensor)."""
    return 1127.0 * (1.0 + freq / 700.0).log() if torch.is_tensor(freq) else 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: float, low_freq: float, high_freq: float) -> torch.Tensor:
    """Kaldi's triangular mel filters over the FFT bins ``0 .. n_fft/2 - 1``: ``[num_bins, n_fft // 2]`` float32.

    Band ``b`` rises from mel ``lo + b * d`` to ``lo + (b + 1) * d`` and falls to ``lo + (b + 2) * d``, with
    ``d = (mel(high) - mel(low)) / (num_bins + 1)``; the slopes are linear in mel. Computed in float32 in the order
    torchaudio's ``kaldi.get_mel_banks`` uses (no VTLN warp), so the two are equal to the last bit (tested).
    """
    if num_bins < 1 or n_fft % 2 or not 0.0 <= low_freq < high_freq <= 0.5 * sample_rate:
        raise ValueError(f"bad mel bank settings: {num_bins} bins, n_fft {n_fft}, {low_freq}-{high_freq} Hz "
                         f"at {sample_rate} Hz")
    mel_lo, mel_hi = _mel(low_freq), _mel(high_freq)
    delta = (mel_hi - mel_lo) / (num_bins + 1)
    band = torch.arange(num_bins).unsqueeze(1)  # [num_bins, 1]
    left = mel_lo + band * delta
    center = mel_lo + (band + 1.0) * delta
    right = mel_lo + (band + 2.0) * delta
    fft_mel = _mel(sample_rate / n_fft * torch.arange(n_fft / 2)).unsqueeze(0)  # [1, n_fft // 2]
    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(rising, falling))


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _window(window_type: str, win_len: int, device=None, dtype=None) -> torch.Tensor:
    """The analysis window, made with the same operations as torchaudio's kaldi (bit-equal)."""
    w = torch.hann_window(win_len, periodic=False, device=device, dtype=dtype)
    if window_type == "povey":
        return w.pow(0.85)
    if window_type != "hanning":
        raise ValueError(f"window_type must be one of {WINDOW_TYPES}, got {window_type!r}")
    return w


@functools.lru_cache(maxsize=32)
def _fbank_constants(sample_rate: float, num_mel_bins: int, frame_length: float, frame_shift: float):
    """Window, mel matrix groups and frame geometry for one setting (CPU float64 masters, cast per call)."""
    win_len = int(sample_rate * frame_length * 0.001)
    hop = int(sample_rate * frame_shift * 0.001)
    if win_len < 2 or hop < 1:
        raise ValueError(f"frame_length={frame_length} ms / frame_shift={frame_shift} ms are too short at {sample_rate} Hz")
    n_fft = _next_pow2(win_len)
    high = 0.5 * sample_rate
    if num_mel_bins < 1 or _LOW_FREQ >= high:
        raise ValueError(f"num_mel_bins must be >= 1 and the sample rate above {2 * _LOW_FREQ} Hz")
    # [num_mel_bins, n_fft // 2]; the Nyquist bin gets weight 0 (torchaudio pads it the same way).
    mel = kaldi_mel_banks(num_mel_bins, n_fft, float(sample_rate), _LOW_FREQ, 0.5 * sample_rate)
    mel = torch.nn.functional.pad(mel, (0, 1)).T.to(torch.float64)  # [n_fft//2 + 1, num_mel_bins]
    # Split the bands into groups and keep, per group, only the FFT bins where some band of the group is non-zero.
    groups = []
    size = math.ceil(num_mel_bins / _MEL_GROUPS)
    for start in range(0, num_mel_bins, size):
        cols = mel[:, start : start + size]
        nz = (cols != 0).any(dim=1).nonzero().flatten()
        lo, hi = (int(nz.min()), int(nz.max()) + 1) if len(nz) else (0, 1)
        groups.append((start, start + cols.shape[1], lo, hi, cols[lo:hi].contiguous()))
    return win_len, hop, n_fft, groups


@functools.lru_cache(maxsize=64)
def _device_constants(sample_rate, num_mel_bins, frame_length, frame_shift, device: torch.device, dtype: torch.dtype,
                      window_type: str = "hanning"):
    win_len, hop, n_fft, groups = _fbank_constants(sample_rate, num_mel_bins, frame_length, frame_shift)
    # The window is made in the working dtype, exactly as torchaudio makes it, so the FFT input is bit-identical.
    window = _window(window_type, win_len, device=device, dtype=dtype)
    mel_groups = [(a, b, lo, hi, m.to(device=device, dtype=dtype)) for a, b, lo, hi, m in groups]
    return win_len, hop, n_fft, window, mel_groups


def num_frames(num_samples: int, sample_rate: int = 16000, frame_length: float = 25.0, frame_shift: float = 10.0) -> int:
    """Frames kaldi produces for ``num_samples`` samples (snip_edges=True): ``1 + (N - L) // hop``, or 0 if N < L."""
    win_len = int(sample_rate * frame_length * 0.001)
    hop = int(sample_rate * frame_shift * 0.001)
    return 0 if num_samples < win_len else 1 + (num_samples - win_len) // hop


def kaldi_fbank(
    waveforms: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    dither: float = 0.0,
    window_type: str = "hanning",
) -> torch.Tensor:
    """Log-mel filter banks equal to torchaudio's kaldi ``fbank`` with the AST/AudioMAE/EAT settings, per row.

    waveforms: ``[B, N]`` or ``[N]`` float tensor on any device.
    window_type: ``hanning`` (AST/AudioMAE/EAT) or ``povey`` (torchaudio's default, BEATs).
    Returns ``[B, T, num_mel_bins]`` (or ``[T, num_mel_bins]``), ``T = 1 + (N - frame_len) // hop`` (0 if N < frame_len).
    """
    if dither != 0.0:
        raise ValueError("kaldi_fbank supports dither=0.0 only (the setting of every reference recipe)")
    if not torch.is_tensor(waveforms) or not waveforms.is_floating_point():
        raise TypeError("kaldi_fbank expects a floating-point tensor [B, N] or [N]")
    squeeze = waveforms.dim() == 1
    x = waveforms.unsqueeze(0) if squeeze else waveforms
    if x.dim() != 2:
        raise ValueError(f"kaldi_fbank expects [B, N] or [N], got shape {tuple(waveforms.shape)}")
    if window_type not in WINDOW_TYPES:
        raise ValueError(f"window_type must be one of {WINDOW_TYPES}, got {window_type!r}")
    win_len, hop, n_fft, window, mel_groups = _device_constants(
        float(sample_rate), int(num_mel_bins), float(frame_length), float(frame_shift), x.device, x.dtype, window_type
    )
    B, N = x.shape
    T = 0 if N < win_len else 1 + (N - win_len) // hop
    out = torch.empty(B, T, num_mel_bins, device=x.device, dtype=x.dtype)
    if T == 0 or B == 0:
        return out.squeeze(0) if squeeze else out
    x = x.contiguous()
    chunk = B if x.device.type != "cpu" else max(1, _CHUNK_FRAMES // T)
    buf = torch.zeros(min(chunk, B), T, n_fft, device=x.device, dtype=x.dtype)  # zero tail = kaldi's padding
    ybuf = torch.empty(min(chunk, B), T, win_len, device=x.device, dtype=x.dtype)
    for s in range(0, B, chunk):
        xc = x[s : s + chunk]
        b = xc.shape[0]
        frames = xc.unfold(-1, win_len, hop)  # [b, T, L] view
        y = torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=ybuf[:b])  # remove each frame's DC offset
        z = buf[:b, :, :win_len]
        # pre-emphasis z[i] = y[i] - 0.97 * y[i-1] (z[0] against y[0] itself), then the window, in torchaudio's order
        torch.mul(y[..., :-1], _PREEMPHASIS, out=z[..., 1:])
        torch.sub(y[..., 1:], z[..., 1:], out=z[..., 1:])
        torch.sub(y[..., 0], _PREEMPHASIS * y[..., 0], out=z[..., 0])
        z.mul_(window)
        spec = torch.fft.rfft(buf[:b])  # [b, T, n_fft//2 + 1] complex
        power = torch.mul(spec.real, spec.real)
        power.addcmul_(spec.imag, spec.imag)
        power = power.view(b * T, -1)
        o = out[s : s + b].view(b * T, num_mel_bins)
        for a, e, lo, hi, m in mel_groups:
            o[:, a:e] = power[:, lo:hi] @ m
        o.clamp_min_(_LOG_FLOOR).log_()
    return out.squeeze(0) if squeeze else out


@dataclass
class FrontEndConfig(DictConfig):
    """Everything needed to reproduce a model's input from a waveform; stored in every checkpoint and export."""

    kind = "front-end"

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length: float = 25.0  # ms
    frame_shift: float = 10.0  # ms
    target_length: int = 1024  # frames after pad/crop (1024 = 10.24 s)
    mean: float = AUDIOSET_MEAN  # normalisation: (x - mean) / (2 * std)
    std: float = AUDIOSET_STD
    # Padding frames (after a clip's real audio) are masked out of attention, pooling, masks and losses. False: the
    # model attends to the padding as the reference recipes' models do (reproduce their numbers exactly).
    mask_padding: bool = True
    window_type: str = "hanning"  # "povey" for BEATs
    waveform_scale: float = 1.0  # the waveform is multiplied by this before the fbank (BEATs: 32768, int16 range)
    spectrogram: str = "kaldi"  # "kaldi" (kaldi fbank, mean/std) or "mel_db_minmax" (BAT: audiossl.frontend.bat_mel)
    top_db: float = 80.0  # mel_db_minmax: dB floor below each clip's maximum


# The settings that shape the features an encoder learns from (not target_length, mean/std or mask_padding): a
# model fine-tuned from a pretrained encoder keeps these unless its own config sets them (waveform_scale only
# together with the checkpoint's mean/std: a dataset's statistics are measured at the scale of the config they were
# measured for, 1 unless it sets one).
FEATURE_KEYS = ("sample_rate", "num_mel_bins", "frame_length", "frame_shift", "window_type", "waveform_scale",
                "spectrogram", "top_db")


class FrontEnd(nn.Module):
    """Waveforms ``[B, N]`` -> normalised log-mel ``[B, target_length, num_mel_bins]``.

    fbank -> zero-pad at the end (in the log-mel domain, before normalising) or crop to ``target_length`` frames
    (the first frames, or a random window per clip when ``random_crop=True``) -> ``(x - mean) / (2 * std)``.
    """

    def __init__(self, config: FrontEndConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None:
            config = FrontEndConfig()
        elif isinstance(config, dict):
            config = FrontEndConfig.from_dict(config)
        if overrides:
            config = FrontEndConfig.from_dict({**config.to_dict(), **overrides})
        if config.std <= 0:
            raise ValueError(f"front-end std must be positive, got {config.std}")
        if config.window_type not in WINDOW_TYPES:
            raise ValueError(f"front-end window_type must be one of {WINDOW_TYPES}, got {config.window_type!r}")
        if config.spectrogram not in SPECTROGRAMS:
            raise ValueError(f"spectrogram must be one of {SPECTROGRAMS}, got {config.spectrogram!r}")
        self.config = config

    @property
    def is_mel(self) -> bool:
        return self.config.spectrogram == "mel_db_minmax"

    def _samples(self, ms: float) -> int:
        return int(self.config.sample_rate * ms * 0.001)

    def fbank(self, waveforms: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
        """Un-normalised features ``[B, T, F]``: kaldi log-mel, or (``mel_db_minmax``) the power mel spectrogram
        (``num_samples [B]``: each row's real length, where its centred frames reflect)."""
        c = self.config
        if self.is_mel:
            return mel_power(waveforms, c.sample_rate, self._samples(c.frame_length), self._samples(c.frame_shift),
                             c.num_mel_bins, num_samples)
        if c.waveform_scale != 1.0:
            waveforms = waveforms * c.waveform_scale
        return kaldi_fbank(waveforms, c.sample_rate, c.num_mel_bins, c.frame_length, c.frame_shift,
                           window_type=c.window_type)

    def pad_or_crop(self, feats: torch.Tensor, random_crop: bool = False,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[B, T, F]`` -> (``[B, target_length, F]``, crop starts ``[B]`` or ``None``): zero frames appended at the
        end, or a crop (the first frames, or a random window per row)."""
        target = self.config.target_length
        T = feats.shape[1]
        if T < target:
            return torch.nn.functional.pad(feats, (0, 0, 0, target - T)), None
        if T == target or not random_crop:
            return feats[:, :target], None
        g = generator
        starts = torch.randint(0, T - target + 1, (feats.shape[0],), generator=g, device=g.device if g else None)
        starts = starts.to(feats.device)
        idx = starts[:, None] + torch.arange(target, device=feats.device)  # [B, target]
        return torch.gather(feats, 1, idx[..., None].expand(-1, -1, feats.shape[2])), starts

    def normalize(self, feats: torch.Tensor, num_frames: torch.Tensor | None = None) -> torch.Tensor:
        """``(x - mean) / (2 std)``; ``mel_db_minmax``: per-clip dB + min-max over each row's first ``num_frames``
        frames (all when None), the frames after them set to 0."""
        if self.is_mel:
            return db_minmax(feats, self.config.top_db, num_frames)
        return (feats - self.config.mean) / (2.0 * self.config.std)

    def zero_padding_frames(self, feats: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames beyond each row's real audio set to 0 in the log-mel domain.

        A batch pads short clips with zero *samples*; the reference recipes pad the *log-mel* with zeros instead
        (digital silence would give the log floor, -15.9). Frames made entirely of real samples are unchanged.
        feats ``[B, T, F]``, num_samples ``[B]``.
        """
        valid = self.real_frames(num_samples).to(feats.device)  # [B]
        keep = torch.arange(feats.shape[1], device=feats.device)[None, :] < valid[:, None]  # [B, T]
        return feats * keep[..., None].to(feats.dtype)

    def real_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames of real audio for ``num_samples [B]`` samples: ``[B]`` int64 (kaldi framing; 0 below one frame;
        ``mel_db_minmax``: centred frames, ``1 + n // hop``)."""
        c = self.config
        win = int(c.sample_rate * c.frame_length * 0.001)
        hop = int(c.sample_rate * c.frame_shift * 0.001)
        n = num_samples.reshape(-1).long()
        if self.is_mel:
            return torch.where(n > 0, torch.div(n, hop, rounding_mode="floor") + 1, torch.zeros_like(n))
        return torch.where(n >= win, torch.div(n - win, hop, rounding_mode="floor") + 1, torch.zeros_like(n))

    def forward(self, waveforms: torch.Tensor, random_crop: bool = False, num_samples: torch.Tensor | None = None,
                return_frames: bool = False, generator: torch.Generator | None = None):
        """Waveforms ``[B, N]`` (or ``[N]``) -> normalised log-mel ``[B, target_length, F]``.

        ``num_samples [B]``: the real length of each row when the batch was zero-padded (as data batches are).
        ``return_frames``: also return ``[B]`` int64, how many of the ``target_length`` output frames hold real audio
        (at least 1), for the encoder's padding mask; ``None`` when ``mask_padding`` is off.
        """
        squeeze = waveforms.dim() == 1
        wav = waveforms[None] if squeeze else waveforms
        feats = self.fbank(wav, num_samples) if self.is_mel else self.fbank(wav)
        if num_samples is not None:
            if not self.is_mel:  # (mel_db_minmax: padding is set to 0 after normalising)
                feats = self.zero_padding_frames(feats, num_samples.reshape(-1))
            real = self.real_frames(num_samples).to(feats.device)
        else:
            real = torch.full((wav.shape[0],), feats.shape[1], dtype=torch.long, device=feats.device)
        feats, starts = self.pad_or_crop(feats, random_crop, generator)
        if starts is not None:
            real = real - starts
        out = self.normalize(feats, real.clamp(1, self.config.target_length) if self.is_mel else None)
        if squeeze:
            out = out[0]
        if not return_frames:
            return out
        frames = real.clamp(1, self.config.target_length) if self.config.mask_padding else None
        return out, (frames[0] if squeeze and frames is not None else frames)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
