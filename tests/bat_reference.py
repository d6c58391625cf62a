"""A transcription of BAT's encoder and decoder forward from a plain state dict (BAT's own key names), written from
``houtan-ghaffari/BAT_ICML2026`` ``models/vit.py``, ``models/ssl.py`` and ``models/pos_embed.py``: explicit attention
with the sigmoid gate, post-LN blocks, the (8, 64) numpy sin-cos table, and the split of long inputs into 64-patch
windows. The tests compare audiossl's encoder, decoder and importer against it."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def bat_table(dim: int, grid=(8, 64)) -> torch.Tensor:
    """``get_2d_sincos_pos_embed_flexible(dim, grid)`` in numpy float32: ``[grid[0] * grid[1], dim]``."""
    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float32)
        omega /= d / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    h = np.arange(grid[0], dtype=np.float32)
    w = np.arange(grid[1], dtype=np.float32)
    g = np.stack(np.meshgrid(w, h), axis=0).reshape(2, 1, grid[0], grid[1])
    return torch.from_numpy(np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)).float()


def _ln(x, sd, key, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[key + ".weight"] + sd[key + ".bias"]


def _lin(x, sd, key):
    y = x @ sd[key + ".weight"].T
    return y + sd[key + ".bias"] if key + ".bias" in sd else y


def block(x, sd, b, heads):
    """``EncoderBlock.forward_norm_last`` with ``Attention(use_gate=key present)``."""
    B, N, C = x.shape
    qkv = _lin(x, sd, b + "attn.qkv").reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    o = (a @ v).transpose(1, 2).reshape(B, N, C)
    if b + "attn.gate.weight" in sd:
        o = o * torch.sigmoid(_lin(x, sd, b + "attn.gate"))
    z = x + _lin(o, sd, b + "attn.proj")
    x = _ln(z, sd, b + "norm1")
    h = _lin(x, sd, b + "mlp.fc1")
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return _ln(x + _lin(h, sd, b + "mlp.fc2"), sd, b + "norm2")


def bat_encoder(sd: dict, x: torch.Tensor, heads: int, chunk: int = 64):
    """``ViT.extract_features_with_patch_tokens``: x ``[B, T, F]`` -> (per-block CLS ``[L, B, D]`` averaged over the
    windows, per-block patch tokens ``[L, B, N, D]`` concatenated over the windows, time-major)."""
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    p = F.conv2d(x[:, None], sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)  # [B, D, Tp, Fp]
    B, D, Tp, Fp = p.shape
    p = p.flatten(2).transpose(1, 2).reshape(B, Tp, Fp, D)
    cls_all, patch_all = [], []
    for xi in torch.split(p, chunk, dim=1):
        xi = xi.flatten(1, 2)
        xi = xi + sd["pos_embed"][:, : xi.shape[1]]
        xi = torch.cat([sd["cls_token"].expand(B, -1, -1), xi], dim=1)
        xi = _ln(xi, sd, "pre_norm")
        cls, pt = [], []
        for i in range(depth):
            xi = block(xi, sd, f"blocks.{i}.", heads)
            cls.append(xi[:, 0])
            pt.append(xi[:, 1:])
        cls_all.append(torch.stack(cls))
        patch_all.append(torch.stack(pt))
    return torch.stack(cls_all).mean(0), torch.cat(patch_all, dim=2)


def bat_decoder(sd: dict, visible: torch.Tensor, keep: torch.Tensor, heads: int, num_patches: int):
    """``ViT_MaskedDecoder.forward`` (``in_proj`` Identity): mask-token canvas, scatter, + pos, blocks, out_proj."""
    B, K, D = visible.shape
    canvas = sd["mask_token"].repeat(B, num_patches, 1)
    x = torch.scatter(canvas, 1, keep[..., None].expand(-1, -1, D), visible) + sd["pos_embed"][:, :num_patches]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        x = block(x, sd, f"blocks.{i}.", heads)
    return x @ sd["out_proj.weight"].T


def bat_make_targets(layers: list[torch.Tensor]) -> torch.Tensor:
    """``MLR_Teacher.make_targets``: instance norm over tokens, layer mean, layer norm, both with eps 1e-6."""
    y = torch.stack(layers)
    y = (y - y.mean(dim=2, keepdim=True)) / (y.var(dim=2, correction=0, keepdim=True) + 1e-6).sqrt()
    y = y.mean(dim=0)
    return (y - y.mean(dim=2, keepdim=True)) / (y.var(dim=2, correction=0, keepdim=True) + 1e-6).sqrt()


def bat_state_dict(dim=64, depth=2, heads=4, seed=0, gated=True, rows=512) -> dict:
    """Random non-trivial weights in the released encoder layout (HF ``lrauch/BAT-vit-b16-pretrainedAS2M`` keys)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {
        "patch_embed.proj.weight": r(dim, 1, 16, 16),
        "patch_embed.proj.bias": r(dim),
        "pos_embed": bat_table(dim, (rows // 64, 64))[None],
        "pre_norm.weight": 1 + r(dim),
        "pre_norm.bias": r(dim),
        "cls_token": r(1, 1, dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim), b + "attn.qkv.weight": r(3 * dim, dim),
                   b + "attn.qkv.bias": r(3 * dim), b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
                   b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim), b + "mlp.fc1.weight": r(4 * dim, dim),
                   b + "mlp.fc1.bias": r(4 * dim), b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim)})
        if gated:
            sd.update({b + "attn.gate.weight": r(dim, dim), b + "attn.gate.bias": r(dim)})
    return sd
