import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from audiossl.models import AudioEncoder, EncoderConfig, build_encoder, create_encoder, list_encoders
from audiossl.models.classifier import AudioClassifier
from audiossl.models.pos_embed import sincos_2d

TINY = dict(depth=2, embed_dim=64, num_heads=4)


@pytest.mark.parametrize("name", [n for n in list_encoders() if n.startswith("vit_")])  # beats_base: test_beats.py
@pytest.mark.parametrize("style", ["pre", "post"])
def test_registry_shapes(name, style):
    enc = create_encoder(name, depth=1, block_style=style)
    x = torch.randn(2, 64, 128)
    out = enc(x)
    assert out.shape == (2, 1 + 4 * 8, enc.config.embed_dim)
    assert enc.config.name == name


def test_registry_sizes_match_the_vit_family():
    expect = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16)}
    for name, (d, depth, heads) in expect.items():
        c = create_encoder(name, depth=1).config
        assert (c.embed_dim, c.num_heads, c.patch_size, c.patch_stride) == (d, heads, 16, 16)
    assert create_encoder("vit_large", depth=1).config.embed_dim == 1024
    with pytest.raises(ValueError, match="unknown encoder"):
        create_encoder("vit_huge")


def test_vit_base_parameter_count_equals_timm_vit_b16():
    ours = create_encoder("vit_base")
    n = sum(p.numel() for p in ours.parameters())
    ref = VisionTransformer(img_size=(1024, 128), patch_size=16, in_chans=1, num_classes=0, embed_dim=768, depth=12,
                            num_heads=12, pos_embed="none")
    assert n == sum(p.numel() for p in ref.parameters())
    assert 85e6 < n < 87e6  # ViT-B/16 (86M) with a 1-channel patch embedding and no learned table


def _timm_twin(enc: AudioEncoder, T: int) -> VisionTransformer:
    """A timm ViT holding our weights and our sin-cos table as its (class-free) position table."""
    c = enc.config
    ref = VisionTransformer(img_size=(T, c.num_mel_bins), patch_size=16, in_chans=1, num_classes=0,
                            embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, no_embed_class=True,
                            global_pool="")
    sd = {k: v for k, v in enc.state_dict().items()}
    mapped = {
        "cls_token": sd.pop("prefix_tokens"),
        "patch_embed.proj.weight": sd.pop("patch_embed.weight"),
        "patch_embed.proj.bias": sd.pop("patch_embed.bias"),
        "pos_embed": enc.patch_positions(T // 16, c.num_mel_bins // 16)[None].float(),
    }
    mapped.update(sd)
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    assert not unexpected and not [m for m in missing if not m.startswith("head")], (missing, unexpected)
    return ref.eval()


def test_pre_style_equals_timm_vision_transformer():
    enc = create_encoder("vit_base", **TINY, block_style="pre").eval()
    x = torch.randn(2, 96, 128)
    ref = _timm_twin(enc, 96)
    assert torch.allclose(enc(x), ref.forward_features(x[:, None]), atol=1e-5)


def _ln(x, m):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + m.eps) * m.weight + m.bias


def _attn(x, a):
    B, N, D = x.shape
    H = a.num_heads
    qkv = (x @ a.qkv.weight.T + a.qkv.bias).view(B, N, 3, H, D // H)
    q, k, v = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
    o = (w @ v).transpose(1, 2).reshape(B, N, D)
    return o @ a.proj.weight.T + a.proj.bias


def _mlp(x, m):
    h = x @ m.fc1.weight.T + m.fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return h @ m.fc2.weight.T + m.fc2.bias


def _reference_forward(enc, x):
    """The whole encoder written out by hand: patchify, positions, CLS, pre-norm, blocks, final norm."""
    c = enc.config
    B, T, Fq = x.shape
    gt, gf = T // 16, Fq // 16
    patches = x.view(B, gt, 16, gf, 16).permute(0, 1, 3, 2, 4).reshape(B, gt * gf, 256)  # time-major
    tok = patches @ enc.patch_embed.weight.view(c.embed_dim, 256).T + enc.patch_embed.bias
    tok = tok + sincos_2d(c.embed_dim, gt, gf).float()
    h = torch.cat([enc.prefix_tokens.expand(B, -1, -1), tok], dim=1)
    ffn = []
    if c.block_style == "post":
        h = _ln(h, enc.pre_norm)
    for blk in enc.blocks:
        if c.block_style == "pre":
            h = h + _attn(_ln(h, blk.norm1), blk.attn)
            f = _mlp(_ln(h, blk.norm2), blk.mlp)
            h = h + f
        else:
            h = _ln(h + _attn(h, blk.attn), blk.norm1)
            f = _mlp(h, blk.mlp)
            h = _ln(h + f, blk.norm2)
        ffn.append(f)
    if c.block_style == "pre":
        h = _ln(h, enc.norm)
    return h, ffn


@pytest.mark.parametrize("style", ["pre", "post"])
def test_block_styles_match_hand_written_reference(style):
    enc = create_encoder("vit_base", **TINY, block_style=style).eval()
    for p in enc.parameters():  # non-trivial norms and biases
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 64, 128)
    ref, ref_ffn = _reference_forward(enc, x)
    out, layers, ffn = enc(x, return_layers=True)
    assert torch.allclose(out, ref, atol=1e-4)
    assert len(layers) == len(ffn) == 2
    for a, b in zip(ffn, ref_ffn):
        assert torch.allclose(a, b, atol=1e-4)
    if style == "post":  # no final norm: the last block output is the output
        assert torch.equal(layers[-1], out)
        assert isinstance(enc.norm, torch.nn.Identity)
    else:
        assert isinstance(enc.pre_norm, torch.nn.Identity)


def test_styles_differ():
    a = create_encoder("vit_base", **TINY, block_style="pre")
    b = create_encoder("vit_base", **TINY, block_style="post")
    b.load_state_dict(a.state_dict(), strict=False)
    x = torch.randn(1, 32, 128)
    assert not torch.allclose(a.eval()(x), b.eval()(x), atol=1e-3)


@pytest.mark.parametrize("style", ["pre", "post"])
def test_keep_all_equals_full_forward_and_subset_shapes(style):
    enc = create_encoder("vit_base", **TINY, block_style=style).eval()
    x = torch.randn(3, 64, 128)
    N = enc.num_patches(64)
    full = enc(x)
    perm = torch.stack([torch.randperm(N) for _ in range(3)])
    kept = enc(x, keep=perm)
    # same tokens, permuted: attention is permutation-equivariant once positions are added
    for i in range(3):
        assert torch.allclose(kept[i, 1:], full[i, 1:][perm[i]], atol=1e-5)
        assert torch.allclose(kept[i, 0], full[i, 0], atol=1e-5)
    keep = torch.stack([torch.randperm(N)[:7].sort().values for _ in range(3)])
    out = enc(x, keep=keep)
    assert out.shape == (3, 8, 64)
    # a kept subset is the same as running the trunk on those embedded patches alone
    emb = enc.embed(x)
    sub = torch.stack([emb[i, keep[i]] for i in range(3)])
    assert torch.allclose(out, enc.forward_tokens(sub), atol=1e-6)


def test_sincos_known_values_and_time_major_order():
    pe = sincos_2d(8, grid_t=3, grid_f=2)  # rows t*2 + f ; first half encodes f, second half t
    assert pe.shape == (6, 8)
    omega = torch.tensor([1.0, 0.01], dtype=torch.float64)
    row = pe[1 * 2 + 0]  # t=1, f=0
    expect = torch.cat([torch.zeros(2), torch.ones(2), torch.sin(omega), torch.cos(omega)])
    assert torch.allclose(row, expect.double())
    row = pe[2 * 2 + 1]  # t=2, f=1
    expect = torch.cat([torch.sin(omega), torch.cos(omega), torch.sin(2 * omega), torch.cos(2 * omega)])
    assert torch.allclose(row, expect.double())
    # a longer grid starts with the same rows (what truncating EAT's stored table gives)
    assert torch.equal(sincos_2d(8, 10, 2)[:6], pe)


def test_positions_for_any_length_and_padding():
    enc = create_encoder("vit_base", **TINY)
    assert enc(torch.randn(1, 50, 128)).shape == (1, 1 + 4 * 8, 64)  # 50 frames padded to 64
    assert enc(torch.randn(1, 1024, 128)).shape == (1, 513, 64)
    strict = create_encoder("vit_base", **TINY, pad_input=False)
    with pytest.raises(ValueError, match="whole number"):
        strict(torch.randn(1, 50, 128))
    with pytest.raises(ValueError, match="mel bins"):
        enc(torch.randn(1, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, T, F\]"):
        enc(torch.randn(64, 128))


def test_overlapping_patches_freq_order_learned_positions():
    enc = AudioEncoder(EncoderConfig(**TINY, patch_stride=10, num_prefix_tokens=2, pos_embed="learned",
                                     pos_grid=[9, 12], patch_order="freq"))
    x = torch.randn(2, 100, 128)  # (100-16)//10+1 = 9 time patches, (128-16)//10+1 = 12 freq patches
    assert enc(x).shape == (2, 2 + 108, 64)
    # shorter inputs crop the table's time axis, longer ones interpolate it
    assert enc(torch.randn(1, 60, 128)).shape == (1, 2 + 5 * 12, 64)
    assert enc(torch.randn(1, 200, 128)).shape == (1, 2 + 19 * 12, 64)
    pos = enc.patch_positions(9, 12)
    table = enc.pos_table[0, 2:]
    assert torch.equal(pos, table)
    short = enc.patch_positions(5, 12)  # freq-major rows f*Tp + t: crop keeps t < 5 of every f
    assert torch.equal(short.view(12, 5, -1), table.view(12, 9, -1)[:, :5])


def test_drop_path_and_config_round_trip():
    enc = create_encoder("vit_base", **TINY, drop_path=0.1)
    assert isinstance(enc.blocks[0].drop_path, torch.nn.Identity)
    assert abs(enc.blocks[1].drop_path.drop_prob - 0.1) < 1e-6
    again = build_encoder(enc.config.to_dict())
    assert again.config == enc.config
    with pytest.raises(ValueError, match="unknown encoder settings"):
        EncoderConfig.from_dict({"depht": 2})
    with pytest.raises(ValueError, match="block_style"):
        create_encoder("vit_base", block_style="sandwich")


def test_classifier_round_trip_and_pooling():
    m = AudioClassifier(encoder={"name": "vit_base", **TINY}, head={"num_classes": 5}, front_end={"target_length": 64},
                        label_names=list("abcde"))
    x = torch.randn(2, 64, 128)
    assert m(x).shape == (2, 5)
    m2 = AudioClassifier.from_config_dict(m.config_dict())
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m.eval()(x), m2.eval()(x))
    with pytest.raises(ValueError, match="label names"):
        AudioClassifier(encoder={"name": "vit_base", **TINY}, head={"num_classes": 5}, label_names=["a"])
