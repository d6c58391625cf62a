"""AudioMAE's local-window decoder (``decoder_mode 1``): Swin blocks over the (time x freq) patch grid.

AudioMAE (``models_mae.py``) decodes with 16 ``SwinTransformerBlock``s of its patched timm (``timm_patch/
swin_transformer.py``, timm's Swin-V2 "CR" block): dim 512, 16 heads, window 4 x 4 on the 64 x 8 grid, the shift
alternating (0, 0) / (2, 0) (half a window along time only). Each block:

* ``x = x + norm1(attn(x))``; ``x = x + norm2(mlp(x))`` (res-post-norm);
* attention inside each window, *scaled cosine*: ``(q k^T) / (|q| |k|) / max(tau, 0.01)`` with a learned ``tau`` per
  head (init 1), plus a continuous relative-position bias from a 2 -> 384 -> heads ReLU MLP (dropout 0.1, active in
  training as in the reference) on log-spaced relative coordinates ``sign(d) log(1 + |d|)``;
* shifted windows: the grid rolled by ``-shift``, and a -100 mask between tokens from different wrapped regions.

The decoder around the blocks is AudioMAE's: a Linear to the decoder width, a learned mask token (N(0, 0.02)) at the
masked positions, fixed 2-D sin-cos positions, the CLS dropped before the blocks, a final LayerNorm and a Linear to
the patch values; every Linear xavier-uniform (AudioMAE's ``_init_weights``).

Beyond the reference: any grid (padded with masked tokens to whole windows, then shifted as configured; the
reference's ``_calc_window_shift`` would turn the shift off along a dimension no longer than its window, which never
happens on its 64 x 8 grid), and ``valid [B, N]`` padding masks: padding tokens and fillers are kept out of every
window's attention (an additive -1e4), so a clip's real tokens decode as they would on its own grid -- the shifted
windows wrap around the padded grid, so its first rows are grouped alone either way.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiossl.models.init import xavier_linears_
from audiossl.models.pos_embed import CachedSinCos2d

_SHIFT_MASK = -100.0  # the reference's value between wrapped regions
_PAD_MASK = -1.0e4  # padding keys: exp() underflows to 0 next to any real key


class _MetaMLP(nn.Module):
    """2 -> hidden (ReLU) -> heads, dropout after both layers (timm ``Mlp(drop=0.1)``)."""

    def __init__(self, hidden: int, heads: int, drop: float = 0.1):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, heads)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.relu(self.fc1(x)))))


class WindowCosineAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], meta_hidden: int = 384):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = tuple(window)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.meta_mlp = _MetaMLP(meta_hidden, num_heads)
        self.tau = nn.Parameter(torch.ones(num_heads))
        wh, ww = self.window
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # [2, L]
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2).float()  # [L*L, 2]
        self.register_buffer("rel_log", torch.sign(rel) * torch.log1p(rel.abs()), persistent=False)

    def position_bias(self) -> torch.Tensor:
        L = self.window[0] * self.window[1]
        return self.meta_mlp(self.rel_log).transpose(0, 1).reshape(1, self.num_heads, L, L)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[Bw, L, C]`` (windows); mask additive ``[Bw, 1 or heads, L, L]`` or ``None``."""
        Bw, L, C = x.shape
        q, k, v = self.qkv(x).view(Bw, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        denom = q.norm(dim=-1, keepdim=True) @ k.norm(dim=-1, keepdim=True).transpose(-2, -1)
        attn = (q @ k.transpose(-2, -1)) / denom.clamp(min=1e-6)
        attn = attn / self.tau.clamp(min=0.01).view(1, -1, 1, 1) + self.position_bias()
        if mask is not None:
            attn = attn + mask
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(Bw, L, C))


def _partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * nW, wh * ww, C]``, windows in (time block, freq block) order."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def _merge(windows: torch.Tensor, window: tuple[int, int], H: int, W: int) -> torch.Tensor:
    wh, ww = window
    B = windows.shape[0] // ((H // wh) * (W // ww))
    x = windows.view(B, H // wh, W // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


def shift_regions(H: int, W: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Region ids ``[H, W]`` of the rolled grid: tokens of different ids do not attend to each other. Along a
    dimension with shift 0 everything is one region (what the reference's slices amount to)."""
    ids = []
    for size, w, s in ((H, window[0], shift[0]), (W, window[1], shift[1])):
        r = torch.zeros(size, dtype=torch.long)
        if s:
            r[size - w : size - s] = 1
            r[size - s :] = 2
        ids.append(r)
    return ids[0][:, None] * 3 + ids[1][None, :]


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: tuple[int, int] = (4, 4), mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.window = tuple(window)
        self.attn = WindowCosineAttention(dim, num_heads, self.window)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, shift: tuple[int, int] = (0, 0), valid: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, H, W, C]`` on a grid of whole windows, rolled by ``-shift`` for the attention; ``valid [B, H, W]``
        bool (False: padding / filler)."""
        B, H, W, C = x.shape
        sh, sw = shift
        shifted = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2)) if (sh or sw) else x
        windows = _partition(shifted, self.window)  # [B nW, L, C]
        mask = None
        if sh or sw:
            ids = _partition(shift_regions(H, W, self.window, shift)[None, :, :, None].to(x.device),
                             self.window)[..., 0]  # [nW, L]
            region = (ids[:, None, :] != ids[:, :, None]).to(x.dtype) * _SHIFT_MASK  # [nW, L, L]
            mask = region.repeat(B, 1, 1)[:, None]  # [B nW, 1, L, L]
        if valid is not None:
            v = torch.roll(valid, shifts=(-sh, -sw), dims=(1, 2)) if (sh or sw) else valid
            keys = _partition(v[..., None].to(x.dtype), self.window)[..., 0]  # [B nW, L]
            pad = ((1.0 - keys) * _PAD_MASK)[:, None, None, :]
            mask = pad if mask is None else mask + pad
        out = _merge(self.attn(windows, mask), self.window, H, W)
        if sh or sw:
            out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
        x = x + self.norm1(out)
        return x + self.norm2(self.fc2(F.gelu(self.fc1(x))))


class SwinDecoder(CachedSinCos2d, nn.Module):
    """MAE decoder with local windows; ``TokenDecoder``'s interface: ``(visible, keep, query, grid, valid)``."""

    def __init__(self, in_dim: int, dim: int = 512, depth: int = 16, num_heads: int = 16, out_dim: int | None = None,
                 window: tuple[int, int] = (4, 4), shift: tuple[int, int] = (2, 0), mlp_ratio: float = 4.0):
        super().__init__()
        if dim % 4:
            raise ValueError(f"decoder width must be divisible by 4 (sin-cos positions), got {dim}")
        self.dim, self.window, self.shift = dim, tuple(window), tuple(shift)
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.depth, self.num_heads, self.mlp_ratio = depth, num_heads, mlp_ratio
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, self.window, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim or in_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        xavier_linears_(self)

    def geometry(self, grid: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(shift of the odd blocks, grid padded to whole windows)."""
        return self.shift, tuple(-(-g // w) * w for g, w in zip(grid, self.window))

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, query: torch.Tensor, grid: tuple[int, int],
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """visible ``[B, K, Din]`` at patch indices ``keep [B, K]``; predict at ``query [B, M]`` -> ``[B, M, out]``
        (``valid [B, N]``: padding tokens and fillers take no part in any window's attention)."""
        B = visible.shape[0]
        T, Fp = grid
        N = T * Fp
        x = self.embed(visible)  # [B, K, dim]
        full = self.mask_token.to(x.dtype).expand(B, N, -1).scatter(1, keep[..., None].expand(-1, -1, self.dim), x)
        full = full + self.positions(grid, x.device, x.dtype)  # [B, N, dim]
        shift, (Hp, Wp) = self.geometry(grid)
        h = full.view(B, T, Fp, self.dim)
        ok = None if valid is None else valid.view(B, T, Fp)
        if (Hp, Wp) != (T, Fp):  # whole windows: the extra tokens are padding
            h = F.pad(h, (0, 0, 0, Wp - Fp, 0, Hp - T))
            if ok is None:
                ok = torch.ones(B, T, Fp, dtype=torch.bool, device=x.device)
            ok = F.pad(ok, (0, Wp - Fp, 0, Hp - T), value=False)
        for i, blk in enumerate(self.blocks):
            h = blk(h, shift if i % 2 else (0, 0), ok)
        h = h[:, :T, :Fp].reshape(B, N, self.dim)
        out = self.head(self.norm(h))  # [B, N, out]
        return torch.gather(out, 1, query[..., None].expand(-1, -1, out.shape[-1]))
