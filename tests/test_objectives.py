"""Contract tests per objective: outputs, teacher rules, reference loss weighting, learning on a tiny problem."""

import math

import pytest
import torch
import torch.nn.functional as F

from audiossl.objectives.masking import inverse_block_mask
from audiossl.objectives import EAT, JEPA, MAE, OBJECTIVES, SSLAM
from audiossl.objectives.ema import EMATeacher, ema_decay
from audiossl.objectives.sslam import mix_regions, mix_spectrograms, mixed_patch_index
from audiossl.objectives.targets import layer_targets

ENC = {"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4, "block_style": "post"}
# BEATs objectives take a BEATs encoder (no CLS); dropouts off so that two calls draw the same numbers
BEATS_ENC = {"name": "beats_base", "depth": 2, "embed_dim": 64, "num_heads": 4, "patch_proj_dim": 32, "dropout": 0.0,
             "attn_drop": 0.0, "input_dropout": 0.0, "layerdrop": 0.0}
BAT_ENC = {**ENC, "attn_gate": True, "pos_embed": "sincos_bat", "chunk_time_patches": 64}
SMALL = {
    "mae": dict(decoder_dim=32, decoder_depth=1, decoder_heads=4),
    "eat": dict(clone_batch=4, mask_block=3, decoder_layers=2),
    "jepa": dict(predictor_dim=32, predictor_depth=1, predictor_heads=4),
    "sslam": dict(clone_batch=2, mask_block=3, decoder_layers=2, unmixed_frames=32),
    "beats": dict(encoder=BEATS_ENC, tokenizer=dict(kind="random", codebook_size=64, code_dim=16), predictor_depth=1),
    "beats_tokenizer": dict(encoder=BEATS_ENC, teacher_encoder=BEATS_ENC, codebook_size=64, code_dim=16,
                            estimator_depth=1),
    "bat": dict(encoder=BAT_ENC, num_views=4, mask_block=3, decoder_depth=2, decoder_heads=4),
}
EXPECTED_KEYS = {
    "mae": {"loss", "recon_loss", "pred_std", "target_var"},
    "eat": {"loss", "frame_loss", "cls_loss", "pred_std", "target_std", "student_cls_std", "target_var", "masked_pct"},
    "jepa": {"loss", "latent_loss", "pred_std", "target_std", "tf_prob"},
    "sslam": {"loss", "frame_loss", "mix_loss", "cls_loss", "pred_std", "target_std"},
    "beats": {"loss", "token_ce", "masked_acc", "masked_pct", "target_perplexity", "target_codes_used"},
    "beats_tokenizer": {"loss", "cosine_loss", "commitment", "code_perplexity", "codes_used", "dead_codes"},
    "bat": {"loss", "local_loss", "global_loss", "pred_std", "target_std", "student_cls_std", "masked_pct"},
}


def make(name, **kw):
    kw = {**SMALL[name], **kw}
    return OBJECTIVES[name](encoder=dict(kw.pop("encoder", ENC)), **kw)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_contract_keys_finite_and_backward(name):
    m = make(name)
    fb = torch.randn(4, 128, 128)
    out = m.compute_loss(fb, torch.Generator().manual_seed(0))
    assert EXPECTED_KEYS[name] <= set(out)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for n, p in m.named_parameters() if not n.startswith("teacher.")]
    assert all(g is not None for g in grads), "every student/decoder parameter takes part in the loss"
    teacher = getattr(m, "teacher", None)
    if teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        opt_params = {id(p) for g in m.configure_optimizers.__self__.trainable_named_parameters() for p in [g[1]]}
        assert not opt_params & {id(p) for p in teacher.parameters()}


def test_ema_rule_exact_and_schedule():
    assert ema_decay(0, 0.9998, 0.99999, 100) == pytest.approx(0.9998)
    assert ema_decay(50, 0.9998, 0.99999, 100) == pytest.approx((0.9998 + 0.99999) / 2)
    assert ema_decay(100, 0.9998, 0.99999, 100) == 0.99999
    assert ema_decay(10**6, 0.9998, 0.99999, 100) == 0.99999
    m = make("eat", ema_start=0.9, ema_end=0.99, ema_anneal_steps=10)
    before = {n: p.detach().clone() for n, p in m.teacher.model.named_parameters()}
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    d = m.teacher.update(m.encoder, step=5)
    assert d == pytest.approx(0.945)
    student = dict(m.encoder.named_parameters())
    for n, p in m.teacher.model.named_parameters():
        assert torch.allclose(p, d * before[n] + (1 - d) * student[n], atol=1e-7), n
    assert m.teacher.model.patch_embed.weight.dtype == torch.float32


def _fairseq_make_targets(y, k):
    """Literal transcription of data2vec 2.0 ``make_targets`` (instance norm per layer, average, layer norm)."""
    tl = [t.transpose(1, 2) for t in y[-k:]]
    tl = [F.instance_norm(t.float()) for t in tl]
    tl = [t.transpose(1, 2) for t in tl]
    out = tl[0].float()
    for t in tl[1:]:
        out = out + t.float()
    out = out / len(tl)
    return F.layer_norm(out, out.shape[-1:])


def test_layer_targets_match_reference_transcription():
    y = [torch.randn(3, 20, 16) * (i + 1) + i for i in range(4)]
    assert torch.allclose(layer_targets(y, 3), _fairseq_make_targets(y, 3), atol=1e-6)
    # instance norm is over tokens: each channel of each normalised layer has zero mean over tokens
    t = layer_targets(y[:1], 1, layer_norm=False)
    assert t.mean(dim=1).abs().max() < 1e-5


def test_eat_loss_equals_fairseq_weighting():
    """Our EAT loss == the reference computation: sum(reg) / sample_size + sum(cls_reg * sample_size) / sample_size."""
    torch.manual_seed(1)
    m = make("eat", clone_batch=3, mask_noise_std=0.0)
    B, C = 2, 3
    fb = torch.randn(B, 64, 128)
    grid = m.encoder.grid_shape(64)
    keep, masked = inverse_block_mask(B * C, grid, 0.8, 3, 0.07, torch.Generator().manual_seed(5))
    m.masks = lambda *a, **k: (keep, masked)
    ours = m.compute_loss(fb, torch.Generator().manual_seed(0))

    D = m.encoder.embed_dim
    with torch.no_grad():
        _, _, ffn = m.teacher.model(fb, return_layers=True)
        y = _fairseq_make_targets([h[:, 1:] for h in ffn], 2)  # [B, N, D]
    orig_targets = y
    y = y.repeat_interleave(C, 0)
    N = grid[0] * grid[1]
    mask_b = torch.ones(B * C, N, dtype=torch.bool)
    mask_b.scatter_(1, keep, False)
    x = m.encoder(fb.repeat_interleave(C, 0), keep=keep)  # [BC, 1+K, D]
    dx = m.decoder(x[:, 1:], keep, grid)  # noise std 0: deterministic
    sample_size = mask_b.sum()
    reg = F.mse_loss(dx[mask_b].float(), y[mask_b], reduction="none") / math.sqrt(D)
    cls_target = orig_targets.mean(dim=1).repeat_interleave(C, 0)
    cls = F.mse_loss(x[:, 0].float(), cls_target, reduction="none") / math.sqrt(D) * sample_size
    ref_total = (reg.sum() + cls.sum()) / sample_size
    assert torch.allclose(ours["loss"], ref_total, rtol=1e-5)
    assert torch.allclose(ours["frame_loss"], reg.sum() / sample_size, rtol=1e-5)  # fairseq's logged loss_regression
    assert torch.allclose(ours["cls_loss"], cls.sum() / sample_size, rtol=1e-5)  # fairseq's logged loss_cls


def test_eat_initial_frame_loss_magnitude():
    """Layer-normed targets have unit variance per token: a near-zero prediction costs ~sqrt(D) per masked token,
    the scale of the reference logs (EAT/SSLAM base: ~27.7 at init, ~13.7 after 200k updates)."""
    m = make("eat", clone_batch=2)
    with torch.no_grad():
        m.decoder.proj.weight.zero_()
        m.decoder.proj.bias.zero_()
    out = m.compute_loss(torch.randn(2, 64, 128), torch.Generator().manual_seed(0))
    assert out["frame_loss"].item() == pytest.approx(math.sqrt(64), rel=0.02)


def test_sslam_mixture_is_max_in_mixed_regions_and_original_elsewhere():
    g = torch.Generator().manual_seed(0)
    T = 1024
    for _ in range(20):
        s1, s2 = mix_regions(T, 16, 240, g)
        assert s1 % 16 == 0 and s2 % 16 == 0 and 0 <= s1 <= 496 and s1 + 240 <= s2 <= 782
    x = torch.randn(3, 128, 16)
    starts = (16, 80)
    mixed = mix_spectrograms(x, starts, 32)
    partner = torch.roll(x, 1, 0)
    unmixed = torch.zeros(128, dtype=torch.bool)
    unmixed[16:48] = True
    unmixed[80:112] = True
    assert torch.equal(mixed[:, unmixed], x[:, unmixed])
    assert torch.equal(mixed[:, ~unmixed], torch.maximum(x, partner)[:, ~unmixed])
    assert torch.equal(mixed[0, ~unmixed], torch.maximum(x[0], x[2])[~unmixed])  # partner = previous clip
    idx = mixed_patch_index((8, 1), starts, 32, 16)
    assert idx.tolist() == [0, 3, 4, 7]


def test_sslam_source_retention_target():
    """Mixture targets: unmixed original's target in un-mixed regions; mean with the partner's dropped-pass target elsewhere."""
    torch.manual_seed(0)
    m = make("sslam")
    B, T = 3, 128
    fb = torch.randn(B, T, 128)
    grid = m.encoder.grid_shape(T)
    starts = (16, 80)
    idx = mixed_patch_index(grid, starts, 32, 16)
    y = layer_targets(m.teacher_layers(fb), 2)
    dropped = layer_targets(m.teacher_layers(fb, keep=idx.expand(B, -1)), 2)
    # the dropped pass equals running the teacher on only those patches (positions kept)
    tm = m.teacher.model
    emb = tm.embed(fb)[:, idx]
    _, _, ffn = tm.forward_tokens(emb, return_layers=True)
    assert torch.allclose(dropped, layer_targets([h[:, 1:] for h in ffn], 2), atol=1e-5)
    # and differs from slicing the full-context targets (context matters)
    assert not torch.allclose(dropped, y[:, idx], atol=1e-3)


# learning rate, steps, and the fraction of the initial loss (mean of the first 3 steps) that may remain (median of
# the last 10), per objective. MAE's per-step random masks make its curve noisy: it gets more, gentler steps (seeds 0-5
# of this test end at 0.60-0.83 of the start with torch 2.14.1).
FALLS = {"mae": (1e-3, 100, 0.85), "eat": (1e-2, 30, 0.5), "jepa": (5e-3, 30, 0.8), "sslam": (1e-2, 30, 0.5),
         # seeds 0-2 with torch 2.14.1: BEATs 0.61-0.63 of the start, its tokenizer 0.10-0.17
         "beats": (2e-3, 30, 0.75), "beats_tokenizer": (2e-3, 30, 0.35),
         "bat": (1e-2, 30, 0.6)}  # BAT: seeds 0-3 end at 0.37-0.48


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_loss_falls_on_a_tiny_problem(name):
    """AdamW steps on a fixed batch of structured spectrograms: the loss falls by a stated fraction."""
    torch.manual_seed(0)
    lr, steps, remain = FALLS[name]
    m = make(name)
    t = torch.linspace(0, 1, 128)[:, None]
    f = torch.linspace(0, 1, 128)[None]
    # stationary harmonic bands per clip with a slow envelope: masked patches are predictable from visible ones
    fb = torch.stack([torch.sin(2 * math.pi * (4 + 2 * i) * f) * (1 + 0.5 * torch.sin(2 * math.pi * (i + 1) * t))
                      for i in range(4)]) + 0.1 * torch.randn(4, 128, 128)
    opt = torch.optim.AdamW([p for n, p in m.named_parameters() if not n.startswith("teacher.")], lr=lr)
    losses = []
    for step in range(steps):
        out = m.compute_loss(fb, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if isinstance(getattr(m, "teacher", None), EMATeacher):  # (BEATs' tokenizer has a frozen teacher)
            m.teacher.update(m.encoder, step + 1)
        losses.append(out["loss"].item())
    first, last = sum(losses[:3]) / 3, sorted(losses[-10:])[4:6]
    last = sum(last) / 2
    assert last < remain * first, (name, " ".join(f"{v:.3f}" for v in losses))
