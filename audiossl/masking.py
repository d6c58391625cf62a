"""Masks for masked-prediction pretraining: pure functions returning index tensors.

Every function takes the batch size and the patch grid ``(time patches, freq patches)`` (patches indexed time-major,
``t * grid_f + f``, as the encoder flattens them), a ``torch.Generator`` for reproducibility, and returns sorted index
tensors; the models only consume them (``encoder(x, keep=keep)``, ``gather``/``scatter`` at ``masked``).

* ``random_mask``           MAE / AudioMAE: a uniformly random subset of patches stays visible.
* ``inverse_block_mask``    EAT / data2vec 2.0: the visible patches are a few 5x5 blocks, topped up or thinned at
                            random to exactly ``int(N * (1 - mask_ratio))`` (102 of 512 at the defaults).
* ``jepa_masks``            A-JEPA: one context block and several target blocks; a curriculum moves the targets from
                            random blocks to time-frequency-aware strips (full-band time spans, full-time freq bands).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _randint(high: int, shape, generator, device) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=generator, device=device)


def _sorted_split(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``visible [B, N]`` with the same count per row -> (keep ``[B, K]``, masked ``[B, N-K]``), ascending."""
    B, N = visible.shape
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)  # visible first, each part ascending
    K = int(visible[0].sum())
    return order[:, :K].contiguous(), order[:, K:].contiguous()


def random_mask(
    batch: int,
    num_patches: int,
    mask_ratio: float = 0.8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE masking: keep ``int(N * (1 - mask_ratio))`` patches chosen uniformly at random.

    Returns (keep ``[B, K]``, masked ``[B, N - K]``), both sorted ascending.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    K = max(1, int(num_patches * (1 - mask_ratio)))
    noise = _rand((batch, num_patches), generator, device)
    keep = noise.argsort(dim=1)[:, :K]  # the K smallest noises stay visible
    visible = torch.zeros(batch, num_patches, dtype=torch.bool, device=noise.device)
    visible.scatter_(1, keep, True)
    return _sorted_split(visible)


def inverse_block_mask(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float = 0.8,
    block: int = 5,
    adjust: float = 0.07,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EAT's inverse block masking (data2vec 2.0 ``compute_block_mask_2d`` with ``inverse_mask=True``).

    On the ``grid = (T, F)`` patch grid, with ``keep = 1 - mask_ratio``:
    1. draw ``int(N * (keep + adjust) / block**2)`` centres uniformly (with replacement);
    2. make every centre's ``block x block`` square visible (offset ``block // 2``, indices clamped at the edges);
    3. correct the count to exactly ``K = int(N * keep)`` visible patches: surplus visible patches are re-masked,
       or missing ones added, uniformly at random (the reference draws them with ``torch.multinomial`` over the
       candidates with equal weights; a random top-K over "block first, then noise" scores draws the same
       distribution without a per-row loop);
    4. everything else is masked (410 of 512 at the defaults: 80.1%).

    Returns (keep ``[B, K]``, masked ``[B, N - K]``), sorted ascending.
    """
    T, Fp = grid
    N = T * Fp
    if block < 2:
        raise ValueError("block must be >= 2 (use random_mask for unstructured masking)")
    keep_ratio = 1.0 - mask_ratio
    K = int(N * keep_ratio)
    if not 0 < K <= N:
        raise ValueError(f"mask_ratio {mask_ratio} keeps {K} of {N} patches")
    n_centres = int(N * ((keep_ratio + adjust) / block**2))
    vis = torch.zeros(batch, T, Fp, dtype=torch.bool, device=device)
    if n_centres > 0:
        centres = _randint(N, (batch, n_centres), generator, device)  # [B, C]
        ct, cf = centres // Fp, centres % Fp
        offs = torch.arange(block, device=centres.device) - block // 2  # [block]
        ti = (ct[:, :, None] + offs).clamp_(0, T - 1)  # [B, C, block]
        fi = (cf[:, :, None] + offs).clamp_(0, Fp - 1)
        flat = ti[:, :, :, None] * Fp + fi[:, :, None, :]  # [B, C, block, block]
        vis.view(batch, N).scatter_(1, flat.reshape(batch, -1), True)
    vis = vis.view(batch, N)
    # exact count: the K highest of (block membership + uniform noise) stay visible
    score = vis.to(torch.float32) * 2.0 + _rand((batch, N), generator, vis.device)
    keep = score.topk(K, dim=1).indices
    visible = torch.zeros(batch, N, dtype=torch.bool, device=vis.device)
    visible.scatter_(1, keep, True)
    return _sorted_split(visible)


def keep_to_mask(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Index tensor ``[B, K]`` -> boolean ``[B, N]`` with True at the masked (not kept) patches."""
    mask = torch.ones(keep.shape[0], num_patches, dtype=torch.bool, device=keep.device)
    mask.scatter_(1, keep, False)
    return mask


# --- A-JEPA ---------------------------------------------------------------------------------------------------------
@dataclass
class JepaMaskConfig:
    """Block geometry for ``jepa_masks``. Scales are fractions of the patch grid's area."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)  # time extent / freq extent, in patches, for random blocks
    context_scale: tuple[float, float] = (0.85, 1.0)
    strip_scale: tuple[float, float] = (0.1, 0.2)  # fraction of the time (or freq) axis covered by a tf strip
    curriculum_steps: float = 0.5  # fraction of training over which tf-aware targets ramp from 0 to tf_max
    tf_max: float = 1.0  # final probability that a target block is a tf-aware strip
    min_context: int = 4


def _random_block(T: int, Fp: int, scale: float, aspect: float) -> tuple[int, int]:
    area = scale * T * Fp
    h = int(round(math.sqrt(area * aspect)))  # time extent
    w = int(round(math.sqrt(area / aspect)))  # freq extent
    return max(1, min(h, T)), max(1, min(w, Fp))


def _placed_blocks(batch: int, grid: tuple[int, int], h: int, w: int, generator, device) -> torch.Tensor:
    """One ``h x w`` (time x freq) block per sample at a uniform position: boolean ``[B, T, F]``."""
    T, Fp = grid
    t0 = _randint(T - h + 1, (batch,), generator, device)  # [B]
    f0 = _randint(Fp - w + 1, (batch,), generator, device)
    tt = torch.arange(T, device=t0.device)
    ff = torch.arange(Fp, device=t0.device)
    in_t = (tt[None, :] >= t0[:, None]) & (tt[None, :] < (t0 + h)[:, None])  # [B, T]
    in_f = (ff[None, :] >= f0[:, None]) & (ff[None, :] < (f0 + w)[:, None])  # [B, F]
    return in_t[:, :, None] & in_f[:, None, :]


def jepa_masks(
    batch: int,
    grid: tuple[int, int],
    progress: float,
    cfg: JepaMaskConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A-JEPA masks: (context ``[B, Kc]``, ``num_targets`` target tensors ``[B, Kt_i]``), all sorted ascending.

    Each target block is, per batch (so every sample has equal-sized targets, as in I-JEPA):
    * with probability ``1 - p_tf``: a random ``h x w`` block (area ``target_scale``, aspect ``target_aspect``);
    * with probability ``p_tf``: a time-frequency-aware strip — half the time a full-band time span (all frequency
      patches of ``strip_scale * T`` consecutive time steps), half the time a full-time frequency band.
    ``p_tf = tf_max * min(1, progress / curriculum_steps)`` where ``progress`` in [0, 1] is the fraction of training
    done. Positions are drawn per sample. The context is a large random block (``context_scale``) minus every target
    patch, then cut at random to the smallest size in the batch so the batch stays rectangular.
    """
    cfg = cfg or JepaMaskConfig()
    T, Fp = grid
    N = T * Fp
    g = generator

    def u(shape=()):
        return _rand(shape, g, device)

    p_tf = cfg.tf_max * min(1.0, max(0.0, progress) / max(cfg.curriculum_steps, 1e-8))
    targets = []
    covered = torch.zeros(batch, T, Fp, dtype=torch.bool, device=device)
    for _ in range(cfg.num_targets):
        if float(u()) < p_tf:
            span_frac = cfg.strip_scale[0] + float(u()) * (cfg.strip_scale[1] - cfg.strip_scale[0])
            if float(u()) < 0.5:  # full-band time strip
                h, w = max(1, int(round(span_frac * T))), Fp
            else:  # full-time frequency band
                h, w = T, max(1, int(round(span_frac * Fp)))
        else:
            scale = cfg.target_scale[0] + float(u()) * (cfg.target_scale[1] - cfg.target_scale[0])
            aspect = math.exp(math.log(cfg.target_aspect[0]) + float(u()) * math.log(cfg.target_aspect[1] / cfg.target_aspect[0]))
            h, w = _random_block(T, Fp, scale, aspect)
        blk = _placed_blocks(batch, (T, Fp), h, w, g, device)  # [B, T, Fp]
        covered |= blk
        targets.append(_sorted_split(blk.reshape(batch, N))[0])

    # context: a large block, minus all targets, equalised to the smallest count in the batch
    scale = cfg.context_scale[0] + float(u()) * (cfg.context_scale[1] - cfg.context_scale[0])
    h, w = _random_block(T, Fp, scale, 1.0 * T / Fp)
    ctx = (_placed_blocks(batch, (T, Fp), h, w, g, device) & ~covered).reshape(batch, N)
    counts = ctx.sum(dim=1)
    K = int(counts.min())
    if K < cfg.min_context:  # the targets swallowed the context block: use every patch no target covers
        ctx = ~covered.reshape(batch, N)
        K = int(ctx.sum(dim=1).min())
        if K < cfg.min_context:  # targets cover (almost) the whole grid: the context may overlap them
            ctx, K = torch.ones_like(ctx), min(cfg.min_context, N)
    score = ctx.to(torch.float32) * 2.0 + _rand((batch, N), g, ctx.device)
    keep = score.topk(K, dim=1).indices.sort(dim=1).values
    return keep, targets
