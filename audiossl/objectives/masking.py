"""Masks for masked-prediction pretraining: pure functions returning index tensors.

Every function takes the batch size and the patch grid ``(time patches, freq patches)`` (patches indexed time-major,
``t * grid_f + f``, as the encoder flattens them), a ``torch.Generator`` for reproducibility, and returns sorted index
tensors; the models only consume them (``encoder(x, keep=keep)``, ``gather``/``scatter`` at ``masked``).

* ``random_mask``           MAE / AudioMAE: a uniformly random subset of patches stays visible.
* ``inverse_block_mask``    EAT / data2vec 2.0: the visible patches are a few 5x5 blocks, topped up or thinned at
                            random to exactly ``int(N * (1 - mask_ratio))`` (102 of 512 at the defaults).
* ``jepa_masks``            A-JEPA: one context block and several target blocks; a curriculum moves the targets from
                            random blocks to time-frequency-aware strips (full-band time spans, full-time freq bands).
* ``time_freq_keep``        AudioMAE fine-tuning (``random_masking_2d``): whole time rows and frequency columns are
                            dropped; the kept patches are the crossings of the kept rows and columns.

Padding. Each function takes an optional ``valid [B, N]`` (``AudioEncoder.patch_valid``: True where a patch holds
real audio; real patches are the first time patches of a row). Masks are then drawn over each row's real patches
only, with the reference's proportions applied to its real patch count, and a row that selects fewer patches than
the longest row is topped up with *fillers*: padding patches, which the encoder and the losses ignore
(``valid.gather(1, idx)`` tells them apart). Without ``valid`` the draws are exactly the reference's.
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


def split_with_fillers(selected: torch.Tensor, valid: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``selected [B, N]`` (a subset of ``valid``; counts may differ per row) -> (chosen ``[B, K]``, rest
    ``[B, N - K]``), sorted ascending. ``K`` is the largest count, so a row with fewer selected patches is topped up
    with padding patches (``~valid``, the fillers), unless some row has too few padding patches for that: then ``K``
    is the largest size every row can reach and rows selecting more keep a uniformly random ``K`` of theirs."""
    count = selected.sum(dim=1)
    pad = ~valid & ~selected
    K = int(count.max()) if selected.shape[0] else 0
    reach = int((count + pad.sum(dim=1)).min()) if selected.shape[0] else 0
    if K > reach:  # trim the rows that select more than every row can hold
        K = reach
        score = torch.where(selected, _rand(selected.shape, generator, selected.device), -1.0)
        selected = _top_per_row(score, torch.clamp(count, max=K))
    priority = torch.where(selected, 0, torch.where(pad, 1, 2)).to(torch.int8)  # selected, then fillers, then rest
    order = torch.argsort(priority, dim=1, stable=True)
    return order[:, :K].sort(dim=1).values, order[:, K:].sort(dim=1).values


def _top_per_row(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, N]``: the ``k[b]`` highest scores of each row (ties broken by position)."""
    order = score.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return rank < k[:, None]


def random_mask(
    batch: int,
    num_patches: int,
    mask_ratio: float = 0.8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE masking: keep ``int(N * (1 - mask_ratio))`` patches chosen uniformly at random (``N``: the row's real
    patches when ``valid [B, N]`` is given; padding fillers keep the batch rectangular).

    Returns (keep ``[B, K]``, masked ``[B, N - K]``), both sorted ascending.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    noise = _rand((batch, num_patches), generator, device)
    if valid is not None:
        k = (valid.sum(dim=1) * (1 - mask_ratio)).long().clamp_min(1)  # [B]
        return split_with_fillers(_top_per_row(torch.where(valid, -noise, -2.0), k), valid)
    K = max(1, int(num_patches * (1 - mask_ratio)))
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
    valid: torch.Tensor | None = None,
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

    With ``valid``, each row does this on its own real grid (its first ``T_b`` time patches, ``N_b = T_b * F``
    patches): ``int(N_b * (keep + adjust) / block**2)`` centres drawn over the real patches, squares clamped to the
    real grid, exactly ``int(N_b * keep)`` visible; then padding fillers.

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
    if valid is not None:
        return _inverse_block_mask_padded(valid, grid, keep_ratio, block, adjust, generator)
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


def _inverse_block_mask_padded(valid: torch.Tensor, grid: tuple[int, int], keep_ratio: float, block: int,
                               adjust: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``inverse_block_mask`` on each row's real grid (see there), padding fillers to the longest row's count."""
    T, Fp = grid
    B, N = valid.shape
    dev = valid.device
    real_t = valid.view(B, T, Fp)[:, :, 0].sum(dim=1)  # [B] real time patches
    real = real_t * Fp  # [B] real patches
    n_centres = (real * ((keep_ratio + adjust) / block**2)).long()  # [B]
    C = int(n_centres.max())
    vis = torch.zeros(B, N, dtype=torch.bool, device=dev)  # inside a square
    if C > 0:
        centres = (_rand((B, C), generator, dev) * real[:, None]).long().clamp_max(N - 1)  # uniform over real patches
        used = torch.arange(C, device=dev)[None, :] < n_centres[:, None]  # [B, C]
        ct, cf = centres // Fp, centres % Fp
        offs = torch.arange(block, device=dev) - block // 2
        ti = torch.minimum((ct[:, :, None] + offs).clamp_min(0), (real_t - 1)[:, None, None])  # [B, C, block]
        fi = (cf[:, :, None] + offs).clamp(0, Fp - 1)
        flat = ti[:, :, :, None] * Fp + fi[:, :, None, :]  # [B, C, block, block]
        hits = used[:, :, None, None].expand_as(flat).reshape(B, -1).to(torch.int32)  # unused centres add nothing
        count = torch.zeros(B, N, dtype=torch.int32, device=dev)
        count.scatter_add_(1, flat.reshape(B, -1), hits)
        vis = count > 0
    score = torch.where(valid, vis.to(torch.float32) * 2.0 + _rand((B, N), generator, dev), -1.0)
    k = (real * keep_ratio).long().clamp_min(1)  # [B] exactly int(N_b * keep) visible
    return split_with_fillers(_top_per_row(score, k), valid)


def time_freq_keep(
    batch: int,
    grid: tuple[int, int],
    time_drop: float,
    freq_drop: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """AudioMAE's fine-tuning patch dropping: per clip keep ``int(T * (1 - time_drop))`` time rows and
    ``int(F * (1 - freq_drop))`` frequency columns, each a uniformly random subset; the kept patches are every
    (kept row, kept column) pair. With ``valid`` the rows are drawn among each clip's real rows (``T_b`` of them,
    at least one kept) and padding fillers keep the batch rectangular.

    Returns keep ``[B, K]`` sorted ascending (time-major patch indices). AudioMAE keeps them in draw order; the
    order is immaterial once the positions are added (mean pooling, attention)."""
    T, Fp = grid
    if not (0.0 <= time_drop < 1.0 and 0.0 <= freq_drop < 1.0):
        raise ValueError(f"patch drop fractions must be in [0, 1), got ({time_drop}, {freq_drop})")
    noise_t = _rand((batch, T), generator, device)
    noise_f = _rand((batch, Fp), generator, device)
    kf = max(1, int(Fp * (1 - freq_drop)))
    cols = _top_per_row(-noise_f, torch.full((batch,), kf, device=noise_f.device))  # [B, F] kept columns
    if valid is None:
        real_t = torch.full((batch,), T, device=noise_t.device)
    else:
        real_t = valid.view(batch, T, Fp)[:, :, 0].sum(dim=1)
    kt = (real_t.to(torch.float64) * (1 - time_drop)).long().clamp_min(1)  # int(T_b * (1 - p)), as AudioMAE's int()
    in_real = torch.arange(T, device=noise_t.device)[None, :] < real_t[:, None]
    rows = _top_per_row(torch.where(in_real, -noise_t, -2.0), kt)  # [B, T] kept (real) rows
    sel = (rows[:, :, None] & cols[:, None, :]).reshape(batch, T * Fp)
    if valid is None:
        return _sorted_split(sel)[0]
    return split_with_fillers(sel, valid, generator)[0]


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
    # "ijepa": one size for every random target block of the batch, scale and aspect both from one uniform (linear),
    # capped below the grid (I-JEPA MaskCollator._sample_block_size); "independent": per block, independent scale and
    # log-uniform aspect draws
    block_sizes: str = "ijepa"


def ijepa_block_size(u: float, real_t: torch.Tensor, Fp: int, scale: tuple[float, float],
                     aspect: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA's ``_sample_block_size`` for one uniform ``u``: ``max_keep = int(T * F * (s0 + u (s1 - s0)))``,
    ``ar = a0 + u (a1 - a0)``, ``h = round(sqrt(max_keep ar))`` (time), ``w = round(sqrt(max_keep / ar))`` (freq),
    lowered until ``h < T`` and ``w < F``; per row of ``real_t [B]`` (each clip's real time patches)."""
    s = scale[0] + u * (scale[1] - scale[0])
    ar = aspect[0] + u * (aspect[1] - aspect[0])
    keep = torch.floor(real_t.to(torch.float64) * Fp * s)  # int(height * width * mask_scale)
    h = torch.round(torch.sqrt(keep * ar)).long()
    w = torch.round(torch.sqrt(keep / ar)).long()
    h = torch.minimum(h, real_t - 1).clamp_min(1)
    w = w.clamp(1, max(1, Fp - 1))
    return h, w


def _block_sizes(real_t: torch.Tensor, Fp: int, scale: float, aspect: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row block extents (time ``[B]``, freq ``[B]``) of area ``scale * T_b * F`` and aspect ``time / freq``."""
    area = scale * real_t.to(torch.float64) * Fp
    h = torch.round(torch.sqrt(area * aspect)).long()  # time extent
    w = torch.round(torch.sqrt(area / aspect)).long()  # freq extent
    return torch.minimum(h.clamp_min(1), real_t), w.clamp(1, Fp)


def _placed_blocks(grid: tuple[int, int], h: torch.Tensor, w: torch.Tensor, real_t: torch.Tensor,
                   generator, device) -> torch.Tensor:
    """One ``h_b x w_b`` (time x freq) block per row at a uniform position inside its real grid: bool ``[B, T, F]``."""
    T, Fp = grid
    B = real_t.shape[0]
    t0 = (_rand((B,), generator, device) * (real_t - h + 1)).long()  # [B] in [0, T_b - h_b]
    f0 = (_rand((B,), generator, device) * (Fp - w + 1)).long()
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
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A-JEPA masks: (context ``[B, Kc]``, ``num_targets`` target tensors ``[B, Kt_i]``), all sorted ascending.

    Each target block's shape is drawn once per batch (the same uniforms for every row, as I-JEPA's collator does):
    * with probability ``1 - p_tf``: a random block (area ``target_scale``, aspect ``target_aspect``); with
      ``block_sizes="ijepa"`` every random block of the batch has one size, from one uniform for both scale and
      aspect (``ijepa_block_size``), else each its own independent draws;
    * with probability ``p_tf``: a time-frequency-aware strip — half the time a full-band time span (all frequency
      patches of ``strip_scale * T`` consecutive time steps), half the time a full-time frequency band.
    ``p_tf = tf_max * min(1, progress / curriculum_steps)`` where ``progress`` in [0, 1] is the fraction of training
    done. Positions are drawn per row. The context is a large random block (``context_scale``) minus every target
    patch, then cut at random to the smallest size in the batch so the batch stays rectangular.

    With ``valid`` (padding), areas and spans are fractions of each row's real grid (``T_b`` real time patches),
    blocks lie inside it, contexts are not cut to the smallest row, and padding fillers keep the batch rectangular.
    """
    cfg = cfg or JepaMaskConfig()
    T, Fp = grid
    N = T * Fp
    g = generator
    padded = valid is not None
    real_t = valid.view(batch, T, Fp)[:, :, 0].sum(dim=1) if padded else torch.full((batch,), T, device=device)
    real_t = real_t.to(torch.long)

    def u() -> float:
        return float(_rand((), g, device))

    def indices(sel: torch.Tensor) -> torch.Tensor:  # bool [B, N] -> sorted indices [B, K]
        return split_with_fillers(sel, valid, g)[0] if padded else _sorted_split(sel)[0]

    p_tf = cfg.tf_max * min(1.0, max(0.0, progress) / max(cfg.curriculum_steps, 1e-8))
    if cfg.block_sizes not in ("ijepa", "independent"):
        raise ValueError(f"block_sizes must be 'ijepa' or 'independent', got {cfg.block_sizes!r}")
    shared = ijepa_block_size(u(), real_t, Fp, cfg.target_scale, cfg.target_aspect) if cfg.block_sizes == "ijepa" else None
    targets = []
    covered = torch.zeros(batch, T, Fp, dtype=torch.bool, device=real_t.device)
    full_f = torch.full_like(real_t, Fp)
    for _ in range(cfg.num_targets):
        if u() < p_tf:
            span_frac = cfg.strip_scale[0] + u() * (cfg.strip_scale[1] - cfg.strip_scale[0])
            if u() < 0.5:  # full-band time strip
                h, w = torch.round(span_frac * real_t.to(torch.float64)).long().clamp_min(1), full_f
            else:  # full-time frequency band
                h, w = real_t, torch.full_like(real_t, max(1, int(round(span_frac * Fp))))
        elif shared is not None:
            h, w = shared
        else:
            scale = cfg.target_scale[0] + u() * (cfg.target_scale[1] - cfg.target_scale[0])
            aspect = math.exp(math.log(cfg.target_aspect[0]) + u() * math.log(cfg.target_aspect[1] / cfg.target_aspect[0]))
            h, w = _block_sizes(real_t, Fp, scale, aspect)
        blk = _placed_blocks((T, Fp), h, w, real_t, g, device)  # [B, T, Fp]
        covered |= blk
        targets.append(indices(blk.reshape(batch, N)))

    # context: a large block, minus all targets
    scale = cfg.context_scale[0] + u() * (cfg.context_scale[1] - cfg.context_scale[0])
    h, w = _block_sizes(real_t, Fp, scale, 1.0 * T / Fp)
    ctx = (_placed_blocks((T, Fp), h, w, real_t, g, device) & ~covered).reshape(batch, N)
    free = ~covered.reshape(batch, N)
    if padded:  # per row: fall back to every uncovered real patch, then to every real patch
        free &= valid
        small = ctx.sum(dim=1) < cfg.min_context
        ctx = torch.where(small[:, None], free, ctx)
        small = ctx.sum(dim=1) < cfg.min_context
        ctx = torch.where(small[:, None], valid, ctx)
        return indices(ctx), targets
    # equalised to the smallest count in the batch
    K = int(ctx.sum(dim=1).min())
    if K < cfg.min_context:  # the targets swallowed the context block: use every patch no target covers
        ctx = free
        K = int(ctx.sum(dim=1).min())
        if K < cfg.min_context:  # targets cover (almost) the whole grid: the context may overlap them
            ctx, K = torch.ones_like(ctx), min(cfg.min_context, N)
    score = ctx.to(torch.float32) * 2.0 + _rand((batch, N), g, ctx.device)
    keep = score.topk(K, dim=1).indices.sort(dim=1).values
    return keep, targets
