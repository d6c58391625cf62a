"""Importers: HF AST parity with transformers, the EAT/SSLAM key map against a hand-written post-LN forward,
AudioMAE against timm's ViT, and clear errors for what the encoder cannot represent."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import audiossl
from audiossl.cli.main import main
from audiossl.convert import ConversionError, convert_audiomae, convert_eat, convert_hf_ast

D, DEPTH, HEADS, MEL = 64, 2, 4, 128


class Opaque:  # stands for a config object (e.g. OmegaConf) that torch.load(weights_only=True) refuses
    pass


# --- a reference sin-cos table written from MAE's formula (numpy, meshgrid(w, h), first half = w = frequency) -----
def _mae_sincos_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_sincos_2d(dim, grid_h, grid_w):
    grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)
    emb = np.concatenate([_mae_sincos_1d(dim // 2, grid[0]), _mae_sincos_1d(dim // 2, grid[1])], axis=1)
    return torch.from_numpy(emb).float()  # [grid_h * grid_w, dim]


# --- hand-written reference computations -----------------------------------------------------------------------
def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _attn(x, qkv_w, qkv_b, proj_w, proj_b, heads):
    B, N, C = x.shape
    qkv = (x @ qkv_w.T + qkv_b).view(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1)
    return (a @ v).transpose(1, 2).reshape(B, N, C) @ proj_w.T + proj_b


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def eat_reference(sd, x, prefix=""):
    """EAT/data2vec 2.0 post-LN forward written from the state dict (fairseq key names): CLS output, and logits
    when fc_norm/head exist."""
    m = prefix + "modality_encoders.IMAGE."
    B, T, Fq = x.shape
    w = sd[m + "local_encoder.proj.weight"]
    p = F.conv2d(x[:, None], w, sd[m + "local_encoder.proj.bias"], stride=16)  # [B, D, T/16, F/16]
    p = p.flatten(2).transpose(1, 2)  # time-major
    p = p + sd[m + "fixed_positional_encoder.positions"][:, : p.shape[1]]
    h = torch.cat([sd[m + "extra_tokens"].expand(B, -1, -1), p], dim=1)
    h = _ln(h, sd[m + "context_encoder.norm.weight"], sd[m + "context_encoder.norm.bias"])
    for i in range(DEPTH):
        b = f"{prefix}blocks.{i}."
        h = h + _attn(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"], sd[b + "attn.proj.weight"],
                      sd[b + "attn.proj.bias"], HEADS)
        r = _ln(h, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        f = _gelu(r @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]) @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        h = _ln(r + f, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
    if "fc_norm.weight" not in sd:
        return h
    return _ln(h[:, 0], sd["fc_norm.weight"], sd["fc_norm.bias"]) @ sd["head.weight"].T + sd["head.bias"]


def eat_state_dict(max_time=16, classes=None, table=None):
    """A tiny state dict with EAT's exact key names and shapes (dims scaled down), random non-trivial values."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    m = "modality_encoders.IMAGE."
    sd = {
        m + "local_encoder.proj.weight": r(D, 1, 16, 16),
        m + "local_encoder.proj.bias": r(D),
        m + "extra_tokens": r(1, 1, D),
        m + "fixed_positional_encoder.positions": mae_sincos_2d(D, max_time, MEL // 16)[None] if table is None else table,
        m + "context_encoder.norm.weight": 1 + r(D),
        m + "context_encoder.norm.bias": r(D),
        m + "decoder.proj.weight": r(D, D),
        m + "decoder.proj.bias": r(D),
    }
    for j in range(6):
        sd[m + f"decoder.blocks.{j}.0.weight"] = r(D, D // 16, 3, 3)
        sd[m + f"decoder.blocks.{j}.0.bias"] = r(D)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
                   b + "attn.qkv.bias": r(3 * D), b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
                   b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D), b + "mlp.fc1.weight": r(4 * D, D),
                   b + "mlp.fc1.bias": r(4 * D), b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D)})
    if classes:
        sd = {"model." + k: v for k, v in sd.items()}
        sd.update({"fc_norm.weight": 1 + r(D), "fc_norm.bias": r(D), "head.weight": r(classes, D), "head.bias": r(classes)})
    return sd


def fairseq_file(path, sd, num_heads=HEADS, **cfg):
    ema = {k: v.clone() for k, v in sd.items() if "blocks." in k and "decoder" not in k}
    torch.save({"cfg": {"model": {"num_heads": num_heads, "embed_dim": D, "depth": DEPTH, "norm_eps": 1e-6, **cfg},
                        "task": {"data": "/data"}},
                "model": {**sd, "_ema": ema},
                "optimizer_history": [{"criterion_name": "ModelCriterion", "num_updates": 10}],
                "extra_state": {"epoch": 1}}, path)
    return path


# --- EAT / SSLAM -------------------------------------------------------------------------------------------------
def test_eat_pretrained_fairseq_map_equals_post_ln_reference(tmp_path):
    sd = eat_state_dict()
    src = fairseq_file(tmp_path / "EAT-base_epoch10_pt.pt", sd)
    assert main(["convert", "eat", str(src), "--out", str(tmp_path / "out"), "--target-length", "128"]) == 0
    model = audiossl.load_model(tmp_path / "out")
    assert not model.has_head and model.pool == "cls"
    c = model.encoder.config
    assert (c.block_style, c.pos_embed, c.num_heads, c.depth, c.final_norm) == ("post", "sincos", HEADS, DEPTH, True)
    assert isinstance(model.encoder.norm, torch.nn.Identity)  # post style: no final norm
    for T in (128, 64):  # the stored table covers 16 time patches; shorter inputs use its first rows
        x = torch.randn(2, T, MEL)
        with torch.no_grad():
            ours = model.encoder(x)
        ref = eat_reference(sd, x)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() < 1e-4
    # embed pools the CLS token, which is the reference's first output token (a clip filling the window: the
    # reference has no padding mask)
    wave = torch.randn(400 + 127 * 160) * 0.1  # exactly 128 frames
    emb, frames = model.embed(wave, 16000)
    ref = eat_reference(sd, model.front_end(wave[None]))
    assert (emb - ref[0, 0]).abs().max() < 1e-4 and (frames - ref[0, 1:]).abs().max() < 1e-4
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["head"] is None and cfg["label_names"] == []


def test_eat_finetuned_and_safetensors_port_give_the_reference_logits(tmp_path):
    sd = eat_state_dict(classes=527)
    src = fairseq_file(tmp_path / "EAT_finetuned_AS2M.pt", sd)
    model, report = convert_eat(src)
    assert report.kind == "classifier" and model.multi_label
    assert model.label_names[0] == "Speech" and len(model.label_names) == 527
    assert any("_ema" in k for k in report.ignored) and any("decoder.proj" in k for k in report.ignored)
    x = torch.randn(2, 128, MEL)
    with torch.no_grad():
        assert (model(x) - eat_reference(sd, x, prefix="model.")).abs().max() < 1e-4

    # the HF port: modality_encoders.IMAGE. -> model., context_encoder.norm -> pre_norm, blocks under model.
    hf = {}
    for k, v in sd.items():
        k = k.replace("model.modality_encoders.IMAGE.context_encoder.norm", "model.pre_norm")
        k = k.replace("model.modality_encoders.IMAGE.", "model.")
        if "decoder" not in k:
            hf[k if k.startswith("model.") else "model." + k] = v.contiguous()
    d = tmp_path / "SSLAM_AS2M_Finetuned"
    d.mkdir()
    save_file(hf, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "eat", "num_heads": HEADS, "norm_eps": 1e-6}))
    out = tmp_path / "sslam"
    assert main(["convert", "sslam", str(d), "--out", str(out)]) == 0
    ported = audiossl.load_model(out)
    with torch.no_grad():
        assert torch.allclose(ported(x), model(x), atol=1e-6)


def test_eat_table_that_is_not_sincos_is_kept_as_a_table(tmp_path):
    table = mae_sincos_2d(D, 16, 8)[None] + 0.01 * torch.randn(1, 128, D)
    sd = eat_state_dict(table=table)
    with pytest.warns(UserWarning, match="differs from 2-D sin-cos"):
        model, report = convert_eat(fairseq_file(tmp_path / "odd.pt", sd))
    assert model.encoder.config.pos_embed == "learned"
    x = torch.randn(1, 64, MEL)  # shorter than the table: its first rows, as EAT truncates
    with torch.no_grad():
        assert (model.encoder(x) - eat_reference(sd, x)).abs().max() < 1e-4


def test_eat_errors_name_the_problem(tmp_path):
    sd = eat_state_dict()
    bad = dict(sd)
    bad["modality_encoders.IMAGE.context_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3 * D, D)
    with pytest.raises(ConversionError, match=r"no place .*IMAGE\.context_encoder\.blocks\.0\.attn\.qkv\.weight"):
        convert_eat(fairseq_file(tmp_path / "prenet.pt", bad))
    with pytest.raises(ConversionError, match="post-LN"):
        convert_eat(fairseq_file(tmp_path / "preln.pt", sd, layer_norm_first=True))
    with pytest.raises(ConversionError, match="no classifier head"):
        convert_eat(fairseq_file(tmp_path / "pt.pt", sd), num_classes=527)

    torch.save({"model": sd, "cfg": Opaque()}, tmp_path / "pickled.pt")
    with pytest.raises(ConversionError, match=r"test_convert\.Opaque\) that audiossl will not unpickle"):
        convert_eat(tmp_path / "pickled.pt")
    assert main(["convert", "eat", str(tmp_path / "pickled.pt"), "--out", str(tmp_path / "x")]) == 1


# --- AudioMAE ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["finetuned_global_pool", "pretrained"])
def test_audiomae_map_equals_timm_vit(tmp_path, variant):
    from timm.models.vision_transformer import VisionTransformer

    T = 128
    finetuned = variant == "finetuned_global_pool"
    ref = VisionTransformer(img_size=(T, MEL), patch_size=16, in_chans=1, num_classes=7 if finetuned else 0,
                            embed_dim=D, depth=DEPTH, num_heads=HEADS, global_pool="avg" if finetuned else "token")
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
        pos = torch.cat([torch.zeros(1, D), mae_sincos_2d(D, T // 16, MEL // 16)])  # AudioMAE: sin-cos, zero CLS row
        ref.pos_embed.copy_(pos[None])
    sd = dict(ref.state_dict())
    if not finetuned:  # a pretraining file also holds the MAE decoder
        sd.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, D),
                   "decoder_pos_embed": torch.zeros(1, 1 + 64, 32), "decoder_pred.weight": torch.randn(256, 32)})
        assert "norm.weight" in sd and "fc_norm.weight" not in sd
    else:
        assert "fc_norm.weight" in sd and "norm.weight" not in sd
    torch.save({"model": sd, "epoch": 3}, tmp_path / "audiomae.pth")
    model, report = convert_audiomae(tmp_path / "audiomae.pth", num_heads=HEADS, target_length=T)
    x = torch.randn(2, T, MEL)
    ref.eval()
    with torch.no_grad():
        if finetuned:
            assert report.kind == "classifier" and model.encoder.config.final_norm is False
            assert (model(x) - ref(x[:, None])).abs().max() < 1e-4
        else:
            assert report.kind == "encoder-only" and len(report.ignored) == 4
            assert (model.encoder(x) - ref.forward_features(x[:, None])).abs().max() < 1e-4
            emb, _ = model.forward_features(x)  # encoder-only AudioMAE pools the patch mean
            assert torch.allclose(emb, ref.forward_features(x[:, None])[:, 1:].mean(1), atol=1e-4)


def test_audiomae_rejects_what_the_encoder_cannot_hold(tmp_path):
    sd = {"patch_embed.proj.weight": torch.zeros(D, 3, 16, 16), "patch_embed.proj.bias": torch.zeros(D),
          "cls_token": torch.zeros(1, 1, D), "pos_embed": torch.zeros(1, 65, D)}
    torch.save({"model": sd}, tmp_path / "rgb.pth")
    with pytest.raises(ConversionError, match=r"patch_embed\.proj\.weight has shape \(64, 3, 16, 16\)"):
        convert_audiomae(tmp_path / "rgb.pth")


# --- HF AST ------------------------------------------------------------------------------------------------------
def _tiny_ast(tmp_path, **overrides):
    from transformers import ASTConfig, ASTForAudioClassification

    cfg = ASTConfig(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=2 * D,
                    max_length=100, num_mel_bins=MEL, num_labels=3, layer_norm_eps=1e-5,
                    id2label={0: "dog", 1: "rain", 2: "siren"}, label2id={"dog": 0, "rain": 1, "siren": 2}, **overrides)
    hf = ASTForAudioClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # CLS, distillation and position tables start at zero: make everything count
            p.add_(0.2 * torch.randn_like(p))
    d = tmp_path / "ast"
    hf.save_pretrained(d)
    return hf, d


def test_hf_ast_reproduces_transformers_logits(tmp_path):
    hf, d = _tiny_ast(tmp_path)
    out = tmp_path / "converted"
    assert main(["convert", "hf-ast", str(d), "--out", str(out), "--onnx"]) == 0  # ONNX checked at 2 batch sizes
    model = audiossl.load_model(out)
    c = model.encoder.config
    assert (c.patch_stride, c.num_prefix_tokens, c.pos_embed, c.patch_order, c.pos_grid) == (10, 2, "learned", "freq", [9, 12])
    assert model.label_names == ["dog", "rain", "siren"] and model.head_config.pool == "prefix"
    assert model.front_end.config.target_length == 100 and abs(model.front_end.config.mean + 4.2677393) < 1e-9
    x = torch.randn(3, 100, MEL)
    with torch.no_grad():
        want = hf(input_values=x).logits
        got = model(x)
    assert (got - want).abs().max() <= 1e-4

    # the same weights under transformers-5 module names (q_proj/k_proj/v_proj/o_proj, layers.N, mlp.fc1/fc2)
    d5 = tmp_path / "ast5"
    d5.mkdir()
    (d5 / "config.json").write_text((d / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(d5 / "model.safetensors"))
    assert any(".q_proj." in k for k in hf.state_dict())
    model5, _ = convert_hf_ast(d5)
    with torch.no_grad():
        assert torch.equal(model5(x), got)


def test_hf_ast_with_unequal_strides_is_refused(tmp_path):
    _, d = _tiny_ast(tmp_path, frequency_stride=10, time_stride=12)
    with pytest.raises(ConversionError, match="frequency_stride 10 != time_stride 12"):
        convert_hf_ast(d)


def _decoder2d_reference(sd, x, grid, groups=16):
    """EAT's ``Decoder2d.forward`` from the fairseq keys: [conv (groups) -> LayerNorm over channels without affine ->
    GELU] + residual per layer, then ``proj``; x [B, N, C] with every grid slot filled."""
    m = "modality_encoders.IMAGE.decoder."
    B, N, C = x.shape
    x = x.transpose(1, 2).reshape(B, C, *grid)
    residual = x
    i = 0
    while m + f"blocks.{i}.0.weight" in sd:
        w = sd[m + f"blocks.{i}.0.weight"]
        y = F.conv2d(x, w, sd[m + f"blocks.{i}.0.bias"], padding=w.shape[-1] // 2, groups=groups)
        y = F.layer_norm(y.transpose(-3, -1), (y.shape[1],)).transpose(-3, -1)  # TransposeLast(tranpose_dim=-3)
        x = _gelu(y) + residual
        residual = x
        i += 1
    x = x.reshape(B, -1, N).transpose(1, 2)
    return x @ sd[m + "proj.weight"].T + sd[m + "proj.bias"]


@pytest.mark.parametrize("full_ema", [True, False])
def test_eat_pretraining_conversion_continues_student_decoder_and_teacher(tmp_path, full_ema):
    """``convert eat --pretraining``: what fairseq's continue_once restores (student, decoder, _ema) lands in an audiossl
    pretraining checkpoint, and init_from loads all three."""
    from audiossl.objectives import EAT, SSLAM

    sd = eat_state_dict(max_time=8)
    # the EMA copy of every trained entry (the sin-cos table is fixed, requires_grad=False: the same in both)
    ema = {k: v if "positions" in k else v + 0.05 * torch.randn_like(v) for k, v in sd.items() if "decoder" not in k}
    if not full_ema:  # data2vec's ema_encoder_only layout: the blocks only
        ema = {k: v for k, v in ema.items() if k.startswith("blocks.")}
    src = tmp_path / "EAT-base_epoch10_pt.pt"
    torch.save({"cfg": {"model": {"num_heads": HEADS, "embed_dim": D, "depth": DEPTH, "norm_eps": 1e-6}},
                "model": {**sd, "_ema": ema}}, src)
    out = tmp_path / "eat"
    assert main(["convert", "eat", str(src), "--out", str(out), "--target-length", "128", "--pretraining"]) == 0
    ck = torch.load(out / "pretraining.ckpt", map_location="cpu", weights_only=True)
    assert ck["audiossl"]["kind"] == "pretrain" and ck["hyper_parameters"] == {
        "decoder_layers": 6, "decoder_kernel": 3, "decoder_groups": 16, "decoder_dim": D}
    enc = {"embed_dim": D, "depth": DEPTH, "num_heads": HEADS, "block_style": "post"}
    m = SSLAM(encoder=enc, front_end={"target_length": 128}, clone_batch=2, unmixed_frames=32)
    m.load_init(str(out / "pretraining.ckpt"))
    x = torch.randn(2, 128, MEL)
    with torch.no_grad():
        assert (m.encoder(x) - eat_reference(sd, x)).abs().max() < 1e-4  # the student
        teacher_sd = {**sd, **ema} if not full_ema else {**{k: v for k, v in sd.items() if "decoder" in k}, **ema}
        assert (m.teacher.model(x) - eat_reference(teacher_sd, x)).abs().max() < 1e-4  # EAT's EMA teacher
        assert (m.teacher.model(x) - m.encoder(x)).abs().max() > 1e-3
        grid = m.encoder.grid_shape(128)
        tokens = torch.randn(2, grid[0] * grid[1], D)
        keep = torch.arange(grid[0] * grid[1]).expand(2, -1)
        ours = m.decoder(tokens, keep, grid)  # every slot visible: no noise enters
        assert (ours - _decoder2d_reference(sd, tokens, grid)).abs().max() < 1e-4  # EAT's trained decoder
    # a fine-tuned file has no decoder or teacher to continue
    ft = fairseq_file(tmp_path / "ft.pt", eat_state_dict(classes=527))
    assert main(["convert", "eat", str(ft), "--out", str(tmp_path / "ft"), "--pretraining"]) == 1
    assert EAT  # the same file starts EAT itself (continued pretraining)
