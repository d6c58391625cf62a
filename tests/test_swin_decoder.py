"""AudioMAE's local-window decoder against a transcription of its patched timm Swin block, padding invariance, and
the reference initialisations each objective applies (EAT's N(0, 1) CLS, AudioMAE's xavier, I-JEPA's rescaling)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from audiossl.models.swin_decoder import SwinBlock, SwinDecoder
from audiossl.objectives import EAT, JEPA, MAE, SSLAM


def _window_partition(x, ws):
    B, H, W, C = x.shape
    x = x.view(B, H // ws[0], ws[0], W // ws[1], ws[1], C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws[0], ws[1], C)


def _window_reverse(windows, ws, size):
    H, W = size
    B = int(windows.shape[0] / (H * W / ws[0] / ws[1]))
    x = windows.view(B, H // ws[0], W // ws[1], ws[0], ws[1], -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def audiomae_swin_block(x, blk, feat, window, shift, heads):
    """Transcription of AudioMAE ``timm_patch/swin_transformer.py`` ``SwinTransformerBlock.forward`` (eval mode: the
    meta MLP's dropout off) with ``blk``'s weights; x ``[B, H*W, C]``."""
    H, W = feat
    B, L, C = x.shape
    if any(shift):  # _make_attention_mask
        img_mask = torch.zeros((1, H, W, 1))
        cnt = 0
        for h in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
            for w in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
                img_mask[:, h, w, :] = cnt
                cnt += 1
        mask_windows = _window_partition(img_mask, window).view(-1, window[0] * window[1])
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
    else:
        attn_mask = None
    coords = torch.stack(torch.meshgrid([torch.arange(window[0]), torch.arange(window[1])], indexing="ij"),
                         dim=0).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    rel = rel.permute(1, 2, 0).reshape(-1, 2).float()
    rel_log = torch.sign(rel) * torch.log(1.0 + rel.abs())
    a = blk.attn

    def attention(xw, mask):
        Bw, Lw, Cw = xw.shape
        qkv = a.qkv(xw).view(Bw, Lw, 3, heads, Cw // heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        denom = torch.norm(query, dim=-1, keepdim=True) @ torch.norm(key, dim=-1, keepdim=True).transpose(-2, -1)
        attn = query @ key.transpose(-2, -1) / denom.clamp(min=1e-6)
        attn = attn / a.tau.clamp(min=0.01).reshape(1, heads, 1, 1)
        area = window[0] * window[1]
        bias = a.meta_mlp.fc2(F.relu(a.meta_mlp.fc1(rel_log)))
        attn = attn + bias.transpose(1, 0).reshape(heads, area, area).unsqueeze(0)
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(Bw // num_win, num_win, heads, Lw, Lw)
            attn = attn + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, Lw, Lw)
        attn = attn.softmax(dim=-1)
        return a.proj((attn @ value).transpose(1, 2).reshape(Bw, Lw, -1))

    def shifted_window_attn(x):
        x = x.view(B, H, W, C)
        sh, sw = shift
        if any(shift):
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        x_windows = _window_partition(x, window).view(-1, window[0] * window[1], C)
        attn_windows = attention(x_windows, attn_mask).view(-1, window[0], window[1], C)
        x = _window_reverse(attn_windows, window, feat)
        if any(shift):
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x.view(B, L, C)

    x = x + blk.norm1(shifted_window_attn(x))
    return x + blk.norm2(blk.fc2(F.gelu(blk.fc1(x))))


@pytest.mark.parametrize("shift", [(0, 0), (2, 0), (2, 2)])
def test_swin_block_equals_audiomae_block(shift):
    torch.manual_seed(0)
    blk = SwinBlock(32, 4, (4, 4)).eval()
    with torch.no_grad():
        blk.attn.tau.uniform_(0.5, 2.0)  # a trained tau, not the init's ones
    x = torch.randn(3, 12 * 8, 32)
    with torch.no_grad():
        ours = blk(x.view(3, 12, 8, 32), shift).reshape(3, 96, 32)
        ref = audiomae_swin_block(x, blk, (12, 8), (4, 4), shift, 4)
    assert (ours - ref).abs().max() < 1e-5


def test_swin_decoder_alternates_the_shift_and_ignores_padding():
    torch.manual_seed(0)
    dec = SwinDecoder(16, 32, depth=4, num_heads=4, out_dim=8).eval()
    T, Fp = 12, 8
    real_t = [12, 6, 3]
    valid = (torch.arange(T)[None] < torch.tensor(real_t)[:, None]).repeat_interleave(Fp, dim=1)  # [3, 96]
    g = torch.Generator().manual_seed(0)
    keep = torch.stack([torch.randperm(96, generator=g)[:20].sort().values for _ in range(3)])
    query = torch.arange(96).expand(3, -1)
    vis = torch.randn(3, 20, 16)
    with torch.no_grad():
        out = dec(vis, keep, query, (T, Fp), valid)
        for b, rt in enumerate(real_t):  # each clip alone, on its own real grid (padded to whole windows inside)
            n = rt * Fp
            k = keep[b][keep[b] < n]
            alone = dec(vis[b : b + 1][:, keep[b] < n], k[None], torch.arange(n)[None], (rt, Fp))
            assert (out[b, :n] - alone[0]).abs().max() < 1e-5, b
    # AudioMAE's decoder: blocks 1, 3, ... shifted by (2, 0); the shift matters
    x = torch.randn(2, T, Fp, 32)
    with torch.no_grad():
        assert not torch.allclose(dec.blocks[1](x, (2, 0)), dec.blocks[1](x, (0, 0)), atol=1e-4)
    assert dec.geometry((64, 8)) == ((2, 0), (64, 8)) and dec.geometry((3, 8)) == ((2, 0), (4, 8))


def test_mae_with_the_swin_decoder_trains_and_masks_padding():
    torch.manual_seed(0)
    m = MAE(encoder={"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4}, decoder_type="swin",
            decoder_dim=32, decoder_depth=2, decoder_heads=4)
    assert isinstance(m.decoder, SwinDecoder)
    fb = torch.randn(4, 128, 128)
    frames = torch.tensor([128, 40, 70, 17])
    other = fb.clone()
    for i, n in enumerate(frames.tolist()):
        start = -(-n // 16) * 16
        other[i, start:] = torch.randn(128 - start, 128) * 5 + 3
    m.eval()  # the meta MLP's dropout off: the two calls draw the same masks and nothing else
    a = m.compute_loss(fb, torch.Generator().manual_seed(1), frames)
    b = m.compute_loss(other, torch.Generator().manual_seed(1), frames)
    assert torch.allclose(a["loss"], b["loss"], atol=1e-5)
    m.train()
    out = m.compute_loss(fb, torch.Generator().manual_seed(2))
    out["loss"].backward()
    assert all(p.grad is not None for n, p in m.named_parameters())


# --- reference initialisations ---------------------------------------------------------------------------------------
ENC = {"name": "vit_base", "depth": 4, "embed_dim": 64, "num_heads": 4}


def test_eat_and_sslam_cls_is_standard_normal_and_patch_bias_pytorch_default():
    """EAT ``ModalitySpecificEncoder``: ``extra_tokens`` N(0, 1) (``init_extra_token_zero: false``), the patch
    embedding's bias left at Conv2d's U(+-1/sqrt(256)); the teacher is a copy."""
    torch.manual_seed(0)
    for cls in (EAT, SSLAM):
        m = cls(encoder={**ENC, "embed_dim": 256, "block_style": "post"}, clone_batch=2, mask_block=3,
                decoder_layers=1, **({"unmixed_frames": 32} if cls is SSLAM else {}))
        cls_tok = m.encoder.prefix_tokens
        assert cls_tok.std().item() == pytest.approx(1.0, abs=0.12)
        assert torch.equal(m.teacher.model.prefix_tokens, cls_tok)
        bias = m.encoder.patch_embed.bias
        assert bias.abs().max() <= 1 / 16 and bias.abs().max() > 1 / 32 and bias.std() > 0.02
        assert torch.equal(m.teacher.model.patch_embed.bias, bias)


def test_mae_linears_are_xavier_as_audiomae():
    torch.manual_seed(0)
    m = MAE(encoder=dict(ENC, embed_dim=128), decoder_dim=64, decoder_depth=2, decoder_heads=4)
    for name, lin in (("encoder qkv", m.encoder.blocks[0].attn.qkv), ("encoder fc2", m.encoder.blocks[3].mlp.fc2),
                      ("decoder fc1", m.decoder.blocks[0].mlp.fc1), ("decoder head", m.decoder.head)):
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # xavier_uniform
        assert lin.weight.abs().max() <= bound and lin.weight.std().item() == pytest.approx(bound / math.sqrt(3),
                                                                                             rel=0.08), name
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    assert m.encoder.prefix_tokens.std().item() == pytest.approx(0.02, rel=0.3)


def test_jepa_init_is_ijepa_with_fix_init_weight():
    """I-JEPA: trunc-normal 0.02 (Linear and Conv2d, zero biases), then block l's attn.proj and mlp.fc2 / sqrt(2 l)."""
    torch.manual_seed(0)
    m = JEPA(encoder=dict(ENC, embed_dim=256), predictor_dim=128, predictor_depth=3, predictor_heads=4)
    for blocks in (m.encoder.blocks, m.predictor.blocks):
        for i, blk in enumerate(blocks):
            want = 0.02 / math.sqrt(2 * (i + 1))
            assert blk.attn.proj.weight.std().item() == pytest.approx(want, rel=0.06)
            assert blk.mlp.fc2.weight.std().item() == pytest.approx(want, rel=0.06)
            assert blk.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.06)
    assert m.encoder.patch_embed.weight.std().item() == pytest.approx(0.02, rel=0.06)
    assert torch.equal(m.encoder.patch_embed.bias, torch.zeros(256))
    assert torch.equal(m.teacher.model.blocks[2].attn.proj.weight, m.encoder.blocks[2].attn.proj.weight)
