"""Fine-tuning augmentations, as pure functions of a batch and a ``torch.Generator`` (EAT/AudioMAE recipes).

* ``roll_and_gain`` (waveforms ``[B, N]``): circular shift by a uniform random offset, then a gain drawn from
  ``Beta(10, 10) + 0.5`` (AudioMAE/EAT ``roll_mag_aug``).
* ``mixup`` (normalised spectrograms ``[B, T, F]`` and soft targets ``[B, C]``): one ``lam ~ Beta(alpha, alpha)``
  per batch, applied with probability ``prob``; the partner of clip ``i`` is clip ``B - 1 - i`` (timm's "batch" mode:
  the flipped batch); ``x = lam x + (1 - lam) x_flip``, ``y = lam y + (1 - lam) y_flip``.
* ``mix_pairs`` (waveforms ``[B, N]``, AST/AudioMAE dataset mixup): each clip, with probability ``prob``, is mixed
  with a uniformly drawn *other* clip of the batch (AST draws a random clip of the whole training set), its own
  ``lam ~ Beta(alpha, alpha)`` (AST: Beta(10, 10)); the partner is cut to (or zero-padded beyond) the clip's own
  length, ``w = lam w + (1 - lam) w_partner``, ``y = lam y + (1 - lam) y_partner``.
* ``spec_augment`` (``[B, T, F]``): per clip, one frequency mask and one time mask as torchaudio's
  ``FrequencyMasking``/``TimeMasking`` (``mask_along_axis_iid``): ``width = U * param``, ``start = U * (size -
  width)``, masking ``[floor(start), floor(start) + floor(width))``, set to ``fill`` (0: the normalised mean; AST and
  AudioMAE mask before normalising, which is ``fill = -mean / (2 std)`` after it). EAT sizes them by a ratio:
  ``freq_param = F * ratio``, ``time_param = target_length * ratio``.
"""

from __future__ import annotations

import torch


def _rand(shape, g, device):
    return torch.rand(shape, generator=g, device=device)


def beta(a: float, b: float, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Beta(a, b) samples drawn through ``generator`` (``torch.distributions`` cannot take one).

    Integer a, b: the a-th smallest of ``a + b - 1`` uniforms (exact). Otherwise: inverse CDF on a 20,001-point grid.
    """
    shape = tuple(shape)
    if float(a).is_integer() and float(b).is_integer():
        n = int(a + b - 1)
        u = torch.sort(_rand(shape + (n,), generator, device), dim=-1).values
        return u[..., int(a) - 1]
    grid = torch.linspace(1e-6, 1 - 1e-6, 20001, dtype=torch.float64)
    logpdf = (a - 1) * torch.log(grid) + (b - 1) * torch.log1p(-grid)
    cdf = torch.cumsum(torch.exp(logpdf - logpdf.max()), 0)
    cdf = cdf / cdf[-1]
    u = _rand(shape, generator, device).to(torch.float64).cpu()
    i = torch.searchsorted(cdf, u).clamp(max=len(grid) - 1)
    return grid[i].to(device=device, dtype=torch.float32)


def roll_and_gain(wave: torch.Tensor, generator: torch.Generator | None = None,
                  num_samples: torch.Tensor | None = None, shift: bool = True) -> torch.Tensor:
    """``[B, N]`` -> ``[B, N]``: per-clip random circular shift and Beta(10, 10) + 0.5 gain.

    With ``num_samples [B]`` only each row's real samples are rolled (the zero padding after them stays put), as
    the reference rolls the clip before padding it. ``shift=False``: the gain only -- AudioMAE's ``_roll_mag_aug``
    draws its offset as ``randint(len(waveform))`` of the ``[1, N]`` tensor, i.e. 0 (EAT rolls the 1-D array).
    """
    B, N = wave.shape
    n = torch.full((B,), N, device=wave.device) if num_samples is None else num_samples.to(wave.device).clamp(1, N)
    shift = (_rand((B,), generator, wave.device) * n).long() * int(shift)  # [B] in [0, n)
    j = torch.arange(N, device=wave.device)[None, :]  # [1, N]
    idx = torch.where(j < n[:, None], (j - shift[:, None]) % n[:, None], j)  # [B, N]
    gain = beta(10, 10, (B,), generator, wave.device) + 0.5
    return torch.gather(wave, 1, idx) * gain[:, None].to(wave.dtype)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, prob: float = 1.0,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Batch mixup. x ``[B, ...]``, soft targets y ``[B, C]`` -> (x, y, lam); lam = 1 when not applied."""
    if alpha <= 0 or prob <= 0:
        return x, y, 1.0
    if float(_rand((), generator, x.device)) >= prob:
        return x, y, 1.0
    lam = float(beta(alpha, alpha, (), generator, x.device))
    return lam * x + (1.0 - lam) * x.flip(0), lam * y + (1.0 - lam) * y.flip(0), lam


def mix_pairs(wave: torch.Tensor, y: torch.Tensor, alpha: float, prob: float,
              generator: torch.Generator | None = None,
              num_samples: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AST-style mixup on waveforms ``[B, N]`` with soft targets ``[B, C]`` -> (waves, targets, lam ``[B]``; 1 where a
    clip was not mixed). ``num_samples [B]``: each clip's real length; the partner is cut to it."""
    B, N = wave.shape
    lam = torch.ones(B, device=wave.device)
    if alpha <= 0 or prob <= 0 or B < 2:
        return wave, y, lam
    dev = wave.device
    apply = _rand((B,), generator, dev) < prob
    partner = (torch.arange(B, device=dev) + 1 + (_rand((B,), generator, dev) * (B - 1)).long().clamp_max(B - 2)) % B
    lam = torch.where(apply, beta(alpha, alpha, (B,), generator, dev).to(dev), lam)  # [B]
    other = wave[partner]
    if num_samples is not None:  # the partner cut to this clip's own length (AST: padded with zeros or cut)
        n = num_samples.to(dev).reshape(-1, 1)
        other = other * (torch.arange(N, device=dev)[None, :] < n).to(other.dtype)
    lw = lam.to(wave.dtype)[:, None]
    ly = lam.to(y.dtype)[:, None]
    return lw * wave + (1.0 - lw) * other, ly * y + (1.0 - ly) * y[partner], lam


def _mask_along(x: torch.Tensor, param: float, dim: int, generator, fill: float = 0.0) -> torch.Tensor:
    B = x.shape[0]
    size = x.shape[dim]
    if param <= 0:
        return x
    width = _rand((B,), generator, x.device) * param  # [B] in [0, param)
    start = _rand((B,), generator, x.device) * (size - width)  # [B] in [0, size - width)
    pos = torch.arange(size, device=x.device, dtype=x.dtype)
    lo = start.floor()[:, None]
    hide = (pos[None, :] >= lo) & (pos[None, :] < lo + width.floor()[:, None])  # [B, size], torchaudio's span
    shape = [B, 1, 1]
    shape[dim] = size
    hide = hide.view(shape)
    if fill == 0.0:
        return x * (~hide).to(x.dtype)
    return torch.where(hide, torch.full_like(x, fill), x)


def spec_augment(x: torch.Tensor, freq_param: float, time_param: float,
                 generator: torch.Generator | None = None, fill: float = 0.0) -> torch.Tensor:
    """``[B, T, F]`` with one frequency and one time mask per clip (value ``fill``)."""
    x = _mask_along(x, freq_param, 2, generator, fill)
    return _mask_along(x, time_param, 1, generator, fill)
