"""BAT's front end in plain torch, batched, on any device: power mel spectrogram -> dB -> per-clip min-max to [0, 1].

BAT computes, per clip (``torchaudio`` is only the reference of the tests, never imported here)::

    MelSpectrogram(sample_rate=16000, n_fft=1024, hop_length=160, n_mels=128)   # Hann 1024 (periodic), centred
    AmplitudeToDB("power", top_db=80)                                          # on [B, 1, F, T]: the floor per clip
    (x - x.min()) / (x.max() - x.min() + 1e-8)                                 # over the clip's F x T values
    then zero-pad the time axis to the window (0 = the clip's minimum)

* ``mel_power`` ``[B, N] -> [B, T, n_mels]``, ``T = 1 + N // hop``: the frames are centred (``center=True``, the
  signal reflected by ``n_fft // 2`` at both ends). With ``num_samples [B]`` each row is reflected at *its own* end,
  so a clip zero-padded in a batch gets exactly the frames it gets alone (frames past its end are meaningless).
* ``htk_mel_banks``: torchaudio's ``melscale_fbanks`` (HTK scale, no filter norm), same float32 operations.
* ``db_minmax`` ``[B, T, F]`` -> ``[B, T, F]``: ``10 log10(max(x, 1e-10))``, floored at the clip's maximum - top_db,
  min-max to [0, 1]; with ``num_frames [B]`` the maximum, the floor and the minimum come from each clip's real frames
  and the frames after them are set to 0.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

AMIN = 1e-10  # AmplitudeToDB's power floor
MINMAX_EPS = 1e-8  # BAT's min-max denominator guard


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def htk_mel_banks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters ``[n_freqs, n_mels]`` float32 over the FFT bins ``0 .. sample_rate / 2``.

    Filter ``m`` rises linearly in Hz from corner ``m`` to corner ``m + 1`` and falls to corner ``m + 2``, the
    ``n_mels + 2`` corners evenly spaced on the mel scale ``2595 log10(1 + f / 700)`` from ``f_min`` to ``f_max``.
    """
    if not 0.0 <= f_min < f_max <= sample_rate / 2 or n_mels < 1 or n_freqs < 2:
        raise ValueError(f"bad mel settings: {n_mels} mels over {n_freqs} bins, {f_min}-{f_max} Hz at {sample_rate} Hz")
    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mels = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    corners = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)  # [n_mels + 2] Hz
    width = corners[1:] - corners[:-1]  # [n_mels + 1]
    dist = corners[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = (-1.0 * dist[:, :-2]) / width[:-1]
    falling = dist[:, 2:] / width[1:]
    return torch.max(torch.zeros(1), torch.min(rising, falling))


@functools.lru_cache(maxsize=16)
def _constants(sample_rate: int, n_fft: int, n_mels: int, device: torch.device, dtype: torch.dtype):
    window = torch.hann_window(n_fft, device=device, dtype=dtype)  # periodic, as torchaudio's default
    banks = htk_mel_banks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate).to(device=device, dtype=dtype)
    return window, banks


def num_frames(num_samples: int, hop: int) -> int:
    """Centred frames of ``num_samples`` samples: ``1 + N // hop``."""
    return 1 + num_samples // hop if num_samples > 0 else 0


def _reflect_at_own_ends(x: torch.Tensor, pad: int, num_samples: torch.Tensor | None) -> torch.Tensor:
    """``[B, N]`` -> ``[B, N + 2 pad]``: each row reflected by ``pad`` samples at its start and at its own end
    (``num_samples``; the whole row when None), as ``F.pad(row[:n], (pad, pad), 'reflect')`` would put it."""
    y = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]  # right for rows that fill the batch
    if num_samples is None:
        return y
    n = num_samples.to(device=x.device, dtype=torch.long).reshape(-1, 1).clamp(1, x.shape[1])  # [B, 1]
    k = torch.arange(pad, device=x.device)[None, :]  # [1, pad]
    src = (n - 2 - k).clamp_min(0)  # reflection about the last real sample
    dst = n + pad + k  # where they go in the padded row
    return y.scatter(1, dst, x.gather(1, src))


def mel_power(waveforms: torch.Tensor, sample_rate: int = 16000, n_fft: int = 1024, hop: int = 160,
              n_mels: int = 128, num_samples: torch.Tensor | None = None) -> torch.Tensor:
    """Power mel spectrogram ``[B, T, n_mels]`` (``T = 1 + N // hop``) of ``waveforms [B, N]`` (or ``[N]`` ->
    ``[T, n_mels]``), equal to torchaudio's ``MelSpectrogram`` of each clip (transposed to time-major)."""
    if not torch.is_tensor(waveforms) or not waveforms.is_floating_point():
        raise TypeError("mel_power expects a floating-point tensor [B, N] or [N]")
    squeeze = waveforms.dim() == 1
    x = waveforms[None] if squeeze else waveforms
    if x.dim() != 2:
        raise ValueError(f"mel_power expects [B, N] or [N], got shape {tuple(waveforms.shape)}")
    B, N = x.shape
    if N <= n_fft // 2:
        raise ValueError(f"{N} samples are too few for centred frames of {n_fft} (reflection needs > {n_fft // 2})")
    window, banks = _constants(int(sample_rate), int(n_fft), int(n_mels), x.device, x.dtype)
    padded = _reflect_at_own_ends(x, n_fft // 2, num_samples)  # [B, N + n_fft]
    spec = torch.stft(padded, n_fft, hop_length=hop, win_length=n_fft, window=window, center=False,
                      normalized=False, onesided=True, return_complex=True)  # [B, n_fft/2 + 1, T]
    power = spec.abs().pow(2.0)
    out = torch.matmul(power.transpose(1, 2), banks)  # [B, T, n_mels]
    return out[0] if squeeze else out


def db_minmax(power: torch.Tensor, top_db: float = 80.0, num_frames: torch.Tensor | None = None) -> torch.Tensor:
    """Power mel ``[B, T, F]`` -> per-clip dB, floored at ``max - top_db``, min-max scaled to [0, 1]; with
    ``num_frames [B]`` the statistics use each row's first ``num_frames`` frames and the rest is set to 0."""
    x = 10.0 * torch.log10(torch.clamp(power, min=AMIN))
    B, T, _ = x.shape
    if num_frames is None:
        peak = x.amax(dim=(1, 2), keepdim=True)  # [B, 1, 1]
        if top_db is not None:
            x = torch.max(x, peak - top_db)
        low = x.amin(dim=(1, 2), keepdim=True)
        return (x - low) / (peak - low + MINMAX_EPS)
    real = torch.arange(T, device=x.device)[None, :] < num_frames.to(x.device).reshape(-1, 1)  # [B, T]
    real = real[..., None]  # [B, T, 1]
    peak = torch.where(real, x, -torch.inf).amax(dim=(1, 2), keepdim=True)
    if top_db is not None:
        x = torch.max(x, peak - top_db)
    low = torch.where(real, x, torch.inf).amin(dim=(1, 2), keepdim=True)
    return torch.where(real, (x - low) / (peak - low + MINMAX_EPS), 0.0)
