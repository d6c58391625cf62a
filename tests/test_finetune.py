"""Fine-tuning and evaluation: metrics vs scikit-learn, losses, augmentation invariants, layer decay, linear probing,
init_from errors, and a tiny fine-tune -> evaluate run end to end."""

from __future__ import annotations

import json
import math
import os
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import config, pretrained, synth_root  # noqa: F401  (fixtures)
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from audiossl.augment import beta, mixup, roll_and_gain, spec_augment
from audiossl.finetune import FinetuneModule, layer_decay_scales
from audiossl.metrics import classification_metrics, d_prime
from audiossl.models import create_encoder

TINY = {"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4, "block_style": "post"}


# --- metrics --------------------------------------------------------------------------------------------------------
def test_metrics_equal_sklearn_with_ties_and_empty_classes():
    rng = np.random.default_rng(0)
    scores = rng.random((300, 8)).astype(np.float32)
    scores[:, 1] = np.round(scores[:, 1] * 3) / 3  # heavy ties
    targets = (rng.random((300, 8)) < 0.15).astype(np.float32)
    targets[:, 5] = 0  # a class with no positives: excluded from mAP
    targets[:, 6] = 1  # all positives: AP defined (1.0), AUC undefined
    m = classification_metrics(torch.from_numpy(scores), torch.from_numpy(targets))
    aps = [average_precision_score(targets[:, c], scores[:, c]) for c in range(8) if targets[:, c].sum() > 0]
    assert m["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert math.isnan(m["per_class_ap"][5]) and m["num_classes_with_positives"] == 7
    aucs = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(8) if 0 < targets[:, c].sum() < 300]
    assert m["mAUC"] == pytest.approx(np.mean(aucs), abs=1e-6)
    assert m["d_prime"] == pytest.approx(math.sqrt(2) * 0.0, abs=0.2)  # random scores: AUC ~ 0.5
    top = scores.argmax(1)
    assert m["accuracy"] == pytest.approx(np.mean(targets[np.arange(300), top] > 0.5))


def test_single_label_accuracy_and_dprime():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 200)
    s = rng.random((200, 5)).astype(np.float32)
    s[np.arange(100), y[:100]] += 1.0  # half are right
    m = classification_metrics(torch.from_numpy(s), torch.from_numpy(y))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, s.argmax(1)))
    assert d_prime(0.5) == pytest.approx(0.0) and d_prime(0.76025) == pytest.approx(1.0, abs=1e-3)


# --- losses ---------------------------------------------------------------------------------------------------------
def _module(**kw) -> FinetuneModule:
    m = FinetuneModule(encoder=dict(TINY), front_end={"target_length": 64}, **kw)
    return m


def test_bce_is_summed_over_positives_and_ce_uses_label_smoothing():
    m = _module()
    m.build(4, list("abcd"), True, None)
    logits = torch.randn(6, 4)
    y = (torch.rand(6, 4) < 0.4).float()
    y[0, 0] = 1
    expect = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / y.sum()
    assert torch.allclose(m.loss(logits, y, mixed=False), expect)
    m = _module(label_smoothing=0.1)
    m.build(4, list("abcd"), False, None)
    t = torch.tensor([0, 1, 2, 3, 1, 0])
    assert torch.allclose(m.loss(logits, t, mixed=False), F.cross_entropy(logits, t, label_smoothing=0.1))
    soft = m.soft_targets(t)
    assert torch.allclose(soft.sum(1), torch.ones(6)) and soft.max() == pytest.approx(0.9 + 0.1 / 4)
    assert torch.allclose(m.loss(logits, soft, mixed=True), F.cross_entropy(logits, t, label_smoothing=0.1), atol=1e-6)


# --- augmentation ---------------------------------------------------------------------------------------------------
def test_mixup_invariants():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 10, 8), torch.eye(6)
    xm, ym, lam = mixup(x, y, alpha=0.8, prob=1.0, generator=g)
    assert 0 < lam < 1
    assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(ym, lam * y + (1 - lam) * y.flip(0))
    assert torch.allclose(ym.sum(1), torch.ones(6))  # probability mass preserved
    x2, y2, lam2 = mixup(x, y, alpha=0.8, prob=0.0, generator=g)
    assert lam2 == 1.0 and x2 is x and y2 is y
    applied = sum(mixup(x, y, 0.8, 0.3, torch.Generator().manual_seed(s))[2] < 1 for s in range(400))
    assert 80 < applied < 160  # ~30% of batches mixed
    draws = beta(0.8, 0.8, (4000,), torch.Generator().manual_seed(1))
    assert draws.mean() == pytest.approx(0.5, abs=0.03) and draws.var() == pytest.approx(0.25 / 2.6, abs=0.01)


def test_spec_augment_masks_one_band_and_one_span_per_clip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 100, 128) + 5.0  # no natural zeros
    out = spec_augment(x, freq_param=25.6, time_param=20.0, generator=g)
    for i in range(16):
        zf = (out[i] == 0).all(dim=0).nonzero().flatten()  # fully masked mel bins
        zt = (out[i] == 0).all(dim=1).nonzero().flatten()  # fully masked frames
        assert len(zf) <= 26 and len(zt) <= 20
        if len(zf):
            assert zf.max() - zf.min() + 1 == len(zf)  # one contiguous band
        if len(zt):
            assert zt.max() - zt.min() + 1 == len(zt)
        keep = (out[i] != 0)
        assert torch.equal(out[i][keep], x[i][keep])  # everything else untouched


def test_roll_keeps_the_padding_at_the_end():
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(3, 100)
    w[:, :60] = torch.randn(3, 60)
    out = roll_and_gain(w, g, num_samples=torch.tensor([60, 60, 60]))
    assert torch.equal(out[:, 60:], torch.zeros(3, 40))
    for i in range(3):  # the real part is a rotation of itself, times a gain
        ratios = [(out[i, :60] / torch.roll(w[i, :60], s)).std().item() for s in range(60)]
        assert min(ratios) < 1e-5


def test_sample_rate_mismatch_is_a_clear_error():
    m = _module()
    with pytest.raises(ValueError, match="32000 Hz but the model's front end expects 16000 Hz"):
        m.build(4, list("abcd"), True, None, data_sample_rate=32000)


def test_roll_and_gain_is_a_circular_shift_times_a_gain():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1000)
    out = roll_and_gain(w, g)
    for i in range(4):
        ratios = [(out[i] / torch.roll(w[i], s)).std().item() for s in range(1000)]
        s = int(np.argmin(ratios))
        gain = (out[i] / torch.roll(w[i], s)).mean().item()
        assert ratios[s] < 1e-5 and 0.5 < gain < 1.5


# --- layer decay, linear probe, init errors --------------------------------------------------------------------------
def test_layer_decay_scales_follow_eat():
    enc = create_encoder("vit_base", depth=4, embed_dim=64, num_heads=4, block_style="post")
    s = layer_decay_scales(enc, 0.65)
    assert s["model.encoder.blocks.3.attn.qkv.weight"] == pytest.approx(0.65)
    assert s["model.encoder.blocks.0.mlp.fc1.bias"] == pytest.approx(0.65**4)
    assert "model.encoder.patch_embed.weight" not in s and "model.encoder.pre_norm.weight" not in s  # scale 1.0
    m = FinetuneModule(encoder=dict(TINY, depth=4), front_end={"target_length": 64}, layer_decay=0.65)
    m.build(3, list("abc"), True, None)
    m._trainer = types.SimpleNamespace(max_steps=10)  # configure_optimizers reads max_steps only
    opt = m.configure_optimizers()["optimizer"]
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    named = dict(m.model.named_parameters())
    assert scale_of[id(named["encoder.blocks.3.attn.qkv.weight"])] == pytest.approx(0.65)
    assert scale_of[id(named["encoder.blocks.1.norm2.weight"])] == pytest.approx(0.65**3)
    for n in ("encoder.patch_embed.weight", "encoder.prefix_tokens", "head.linear.weight", "head.norm.weight"):
        assert scale_of[id(named[n])] == 1.0, n
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd_of[id(named["encoder.blocks.0.attn.qkv.bias"])] == 0.0 and wd_of[id(named["head.linear.weight"])] == 0.05
    assert wd_of[id(named["encoder.prefix_tokens"])] == 0.0


def _finetune(root: str, data: str, *extra: str, steps: int = 4) -> None:
    from audiossl.train_cli import finetune

    assert finetune(["--config", config("finetune", "tiny.yaml"), "--data.root", data,
                     "--trainer.max_steps", str(steps), "--trainer.default_root_dir", root,
                     "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
                     "--trainer.val_check_interval", str(steps), "--data.batch_size", "16", *extra]) == 0


def test_linear_probe_leaves_encoder_bit_identical(pretrained, synth_root, tmp_path):
    _finetune(str(tmp_path), synth_root, "--model.init_from", pretrained, "--model.freeze_encoder", "true", steps=3)
    pre = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"]
    ft = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    enc = {k[len("model.encoder."):]: v for k, v in ft.items() if k.startswith("model.encoder.")}
    assert enc and all(torch.equal(v, pre["encoder." + k]) for k, v in enc.items())
    head = ft["model.head.linear.weight"]
    assert head.shape == (16, 128) and head.abs().sum() > 0


def test_init_from_with_wrong_shapes_fails_clearly(pretrained, tmp_path):
    ck = torch.load(pretrained, map_location="cpu", weights_only=True)
    ck["state_dict"]["encoder.blocks.0.attn.qkv.weight"] = torch.zeros(10, 10)
    del ck["state_dict"]["encoder.blocks.1.mlp.fc2.bias"]
    bad = tmp_path / "bad.ckpt"
    torch.save(ck, bad)
    m = FinetuneModule(init_from=str(bad))
    with pytest.raises(ValueError) as e:
        m.build(16, [str(i) for i in range(16)], True, None)
    msg = str(e.value)
    assert "blocks.0.attn.qkv.weight" in msg and "(10, 10)" in msg and "blocks.1.mlp.fc2.bias" in msg


def test_finetune_then_evaluate_writes_outputs(pretrained, synth_root, tmp_path):
    from audiossl.evaluate import main as evaluate_main

    _finetune(str(tmp_path / "ft"), synth_root, "--model.init_from", pretrained)
    ck = tmp_path / "ft" / "checkpoints" / "last.ckpt"
    meta = torch.load(ck, map_location="cpu", weights_only=True)["audiossl"]
    assert meta["kind"] == "classifier" and len(meta["label_names"]) == 16 and meta["multi_label"] is True
    out = tmp_path / "eval"
    assert evaluate_main(["--ckpt_path", str(ck), "--data.root", synth_root, "--out", str(out),
                          "--data.num_workers", "0"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("mAP", "mAUC", "d_prime", "accuracy", "num_clips"):
        assert k in m
    assert m["num_clips"] == 16 and 0 <= m["mAP"] <= 1
    p = np.load(out / "predictions.npz")
    assert sorted(p["keys"].tolist()) == sorted(set(p["keys"].tolist())) and len(p["keys"]) == 16
    assert p["scores"].shape == (16, 16) and p["targets"].shape == (16, 16)
    # the saved scores give the saved mAP
    again = classification_metrics(torch.from_numpy(p["scores"]), torch.from_numpy(p["targets"]))
    assert again["mAP"] == pytest.approx(m["mAP"])
    lines = (out / "per_class.csv").read_text().splitlines()
    assert lines[0] == "index,name,ap,auc,positives" and len(lines) == 17
