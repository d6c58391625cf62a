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

from audiossl.frontend.augment import beta, mixup, roll_and_gain, spec_augment
from audiossl.tasks.finetune import FinetuneModule, layer_decay_scales
from audiossl.tasks.metrics import classification_metrics, d_prime
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
    # EAT: np.nanmean over scikit-learn's per-class APs, which are 0.0 (not NaN) for a class without positives
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eat = np.nanmean([average_precision_score(targets[:, c], scores[:, c]) for c in range(8)])
    assert m["mAP_all_classes"] == pytest.approx(eat, abs=1e-6) and m["mAP_all_classes"] < m["mAP"]
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
    # under mixup EAT does not smooth: its mixup_target mixes the raw one-hot targets (the smoothing is commented out)
    soft = m.soft_targets(t)
    eat_target = F.one_hot(t, 4).float()
    lam = 0.7
    assert torch.equal(soft, eat_target)
    mixed = lam * soft + (1 - lam) * soft.flip(0)
    expect = (-(lam * eat_target + (1 - lam) * eat_target.flip(0)) * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(m.loss(logits, mixed, mixed=True), expect, atol=1e-6)
    # timm's Mixup (smoothing_under_mixup) smooths them: the soft CE then equals label-smoothed CE when unmixed
    m = _module(label_smoothing=0.1, smoothing_under_mixup=True)
    m.build(4, list("abcd"), False, None)
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


def test_spec_augment_is_torchaudio_iid_masking():
    """Same draws, same masks as torchaudio's FrequencyMasking/TimeMasking(iid_masks=True) (EAT's spectrogram_augment):
    the span is [floor(start), floor(start) + floor(width)), not [floor(start), floor(start + width))."""
    import torchaudio

    x = torch.randn(64, 100, 128) + 5.0
    for seed in range(5):
        torch.manual_seed(seed)
        ours = spec_augment(x, freq_param=25.6, time_param=0.0)
        torch.manual_seed(seed)
        ref = torchaudio.transforms.FrequencyMasking(25.6, iid_masks=True)(x.transpose(1, 2)[:, None])[:, 0]
        assert torch.equal(ours, ref.transpose(1, 2))
        torch.manual_seed(seed)
        ours = spec_augment(x, freq_param=0.0, time_param=20.48)
        torch.manual_seed(seed)
        ref = torchaudio.transforms.TimeMasking(20.48, iid_masks=True)(x.transpose(1, 2)[:, None])[:, 0]
        assert torch.equal(ours, ref.transpose(1, 2))
    # AST/AudioMAE mask the log-mel before normalising: the masked value is the normalised log-mel zero
    fill = (0.0 - -4.268) / (2 * 4.569)
    out = spec_augment(x, 40.0, 0.0, torch.Generator().manual_seed(0), fill=fill)
    changed = out != x
    assert changed.any() and torch.all(out[changed] == torch.tensor(fill))


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


def test_gain_only_is_audiomae_roll_mag_aug():
    """AudioMAE ``_roll_mag_aug``: ``np.roll(waveform, randint(len(waveform)))`` on the ``[1, N]`` tensor from
    torchaudio.load rolls by 0, then x (Beta(10, 10) + 0.5): the waveform scaled, not shifted."""
    w = torch.randn(4, 500)
    out = roll_and_gain(w, torch.Generator().manual_seed(0), shift=False)
    gains = out / w
    assert torch.allclose(gains, gains[:, :1].expand_as(gains), atol=1e-5) and not torch.allclose(out, w)


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
    from audiossl.cli.train import finetune

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
    from audiossl.tasks.evaluate import main as evaluate_main

    _finetune(str(tmp_path / "ft"), synth_root, "--model.init_from", pretrained)
    ck = tmp_path / "ft" / "checkpoints" / "last.ckpt"
    meta = torch.load(ck, map_location="cpu", weights_only=True)["audiossl"]
    assert meta["kind"] == "classifier" and len(meta["label_names"]) == 16 and meta["multi_label"] is True
    out = tmp_path / "eval"
    best = tmp_path / "ft" / "checkpoints" / "best.ckpt"
    assert evaluate_main(["--ckpt_path", str(ck), "--data.root", synth_root, "--out", str(out),
                          "--data.num_workers", "0", "--best_ckpt_path", str(best)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("mAP", "mAUC", "d_prime", "accuracy", "num_clips"):
        assert k in m
    # last and best side by side, the best labelled as chosen on the evaluation data itself
    assert m["checkpoint"]["step"] == 4 and m["checkpoint"]["path"] == str(ck)
    b = m["best_test_selected"]
    assert b["step"] == 4 and "TEST-SELECTED" in b["selection"] and b["num_clips"] == 16
    assert b["mAP"] == pytest.approx(json.loads((out / "best" / "metrics.json").read_text())["mAP"])
    assert b["mAP"] == pytest.approx(m["mAP"])  # one validation only: best is last here
    hist = [json.loads(line) for line in (tmp_path / "ft" / "val_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [4] and hist[0]["mAP"] == pytest.approx(m["mAP"], abs=1e-5)
    assert m["num_clips"] == 16 and 0 <= m["mAP"] <= 1
    p = np.load(out / "predictions.npz")
    assert sorted(p["keys"].tolist()) == sorted(set(p["keys"].tolist())) and len(p["keys"]) == 16
    assert p["scores"].shape == (16, 16) and p["targets"].shape == (16, 16)
    # the saved scores give the saved mAP
    again = classification_metrics(torch.from_numpy(p["scores"]), torch.from_numpy(p["targets"]))
    assert again["mAP"] == pytest.approx(m["mAP"])
    lines = (out / "per_class.csv").read_text().splitlines()
    assert lines[0] == "index,name,ap,auc,positives" and len(lines) == 17


# --- AST / AudioMAE options ------------------------------------------------------------------------------------------
def test_pair_mixup_is_ast_dataset_mixup():
    """AST/AudioMAE ``__getitem__``: with probability p a clip is mixed with another clip, lam ~ Beta(10, 10) per clip,
    the partner cut to the clip's own length: w = lam w1 + (1 - lam) w2, y = lam y1 + (1 - lam) y2."""
    from audiossl.frontend.augment import mix_pairs

    B, N = 8, 400
    w = torch.randn(B, N)
    n = torch.tensor([400, 300, 400, 120, 400, 400, 250, 400])
    for i, k in enumerate(n.tolist()):
        w[i, k:] = 0.0
    y = (torch.rand(B, 5) < 0.4).float()
    applied, partners, lams = 0, torch.zeros(B, B), []
    for seed in range(300):
        out, ym, lam = mix_pairs(w, y, 10.0, 0.5, torch.Generator().manual_seed(seed), n)
        for i in range(B):
            if lam[i] == 1.0:
                assert torch.equal(out[i], w[i]) and torch.equal(ym[i], y[i])
                continue
            applied += 1
            lams.append(float(lam[i]))
            cut = w * (torch.arange(N)[None] < n[i]).float()  # every candidate partner, cut to clip i's length
            cand = [j for j in range(B) if j != i and torch.allclose(out[i], lam[i] * w[i] + (1 - lam[i]) * cut[j],
                                                                    atol=1e-6)]
            assert len(cand) == 1, (seed, i)
            j = cand[0]
            partners[i, j] += 1
            assert torch.allclose(ym[i], lam[i] * y[i] + (1 - lam[i]) * y[j], atol=1e-6)
            assert torch.equal(out[i, n[i]:], torch.zeros(N - n[i]))  # nothing of the partner beyond the clip
    assert 0.45 < applied / (300 * B) < 0.55
    lams = torch.tensor(lams)
    assert lams.mean() == pytest.approx(0.5, abs=0.01) and lams.var() == pytest.approx(1 / 84, rel=0.15)
    assert partners.diagonal().sum() == 0 and partners.sum(1).min() > 0.6 * partners.sum(1).mean() / 1.0
    # partners uniform over the other clips
    rows = partners / partners.sum(1, keepdim=True)
    off = rows[~torch.eye(B, dtype=torch.bool)]
    assert (off - 1 / (B - 1)).abs().max() < 0.12


def _audiomae_random_masking_2d(x, mask_t_prob, mask_f_prob, T, F_):
    """Transcription of AudioMAE ``models_vit.VisionTransformer.random_masking_2d`` (fine-tuning): x [N, T*F, D]."""
    N, L, D = x.shape
    x = x.reshape(N, T, F_, D)
    len_keep_T = int(T * (1 - mask_t_prob))
    noise = torch.rand(N, T, device=x.device)
    ids_keep = torch.argsort(noise, dim=1)[:, :len_keep_T]
    x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, F_, D))
    x = x.permute(0, 2, 1, 3)
    len_keep_F = int(F_ * (1 - mask_f_prob))
    noise = torch.rand(N, F_, device=x.device)
    ids_keep = torch.argsort(noise, dim=1)[:, :len_keep_F]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, len_keep_T, D))
    return x_masked.permute(0, 2, 1, 3).reshape(N, len_keep_F * len_keep_T, D)


def test_patch_drop_keeps_what_audiomae_keeps():
    from audiossl.objectives.masking import time_freq_keep

    T, F_ = 64, 8
    ids = torch.arange(T * F_, dtype=torch.float32)[None, :, None].repeat(6, 1, 1)
    for seed in range(4):
        torch.manual_seed(seed)
        keep = time_freq_keep(6, (T, F_), 0.2, 0.2)
        torch.manual_seed(seed)
        ref = _audiomae_random_masking_2d(ids, 0.2, 0.2, T, F_)[..., 0].long().sort(dim=1).values
        assert keep.shape == (6, 51 * 6) and torch.equal(keep, ref)
    # with padding: rows drawn among each clip's real rows only, fillers beyond
    real_t = torch.tensor([64, 20, 5])
    valid = (torch.arange(T)[None] < real_t[:, None]).repeat_interleave(F_, dim=1)
    keep = time_freq_keep(3, (T, F_), 0.2, 0.2, torch.Generator().manual_seed(0), None, valid)
    kv = valid.gather(1, keep)
    assert kv.sum(1).tolist() == [51 * 6, int(20 * 0.8) * 6, int(5 * 0.8) * 6]
    assert ((keep // F_)[kv] < real_t.repeat_interleave(kv.sum(1))).all()


def test_validation_scores_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    m = _module()
    m.build(4, list("abcd"), True, None)
    m.eval()
    w = torch.randn(3, 16000 * 64 // 100) * 0.1
    batch = {"audio": w, "target": torch.zeros(3, 4), "key": ["a", "b", "c"]}
    with torch.no_grad():
        expect = torch.sigmoid(m.model(*m.features(w)))
        m.on_validation_epoch_start()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m.validation_step(batch, 0)
            bf16 = torch.sigmoid(m.model(*m.features(w)).float())
    assert m._scores[0].dtype == torch.float32 and torch.equal(m._scores[0], expect)
    assert not torch.equal(bf16, expect)  # what validation produced before: bf16-rounded logits


def test_dataset_stats_overriding_the_checkpoint_front_end_warn(pretrained):
    meta = torch.load(pretrained, map_location="cpu", weights_only=True)["audiossl"]["front_end"]
    m = FinetuneModule(init_from=pretrained)
    with pytest.warns(UserWarning, match=r"mean -5\.0000, std 4\.0000 from the dataset's statistics.*"
                                         rf"trained with mean {meta['mean']:.4f}, std {meta['std']:.4f}"):
        m.build(16, [str(i) for i in range(16)], True, {"mean": -5.0, "std": 4.0})
    assert m.model.front_end.config.mean == -5.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FinetuneModule(init_from=pretrained, front_end={"mean": meta["mean"], "std": meta["std"]}).build(
            16, [str(i) for i in range(16)], True, {"mean": -5.0, "std": 4.0})


def test_the_features_the_encoder_was_pretrained_on_carry_over_unless_the_config_sets_them(tmp_path):
    """An encoder pretrained on 64 mel bins at a 5 ms hop with the povey window is fine-tuned on the same features; a
    setting the fine-tuning config gives still wins."""
    from audiossl.hub.export import save_model
    from audiossl.models.classifier import AudioClassifier

    enc = {"name": "vit_base", "depth": 1, "embed_dim": 32, "num_heads": 2, "num_mel_bins": 64}
    fe = {"target_length": 64, "num_mel_bins": 64, "frame_shift": 5.0, "window_type": "povey",
          "waveform_scale": 32768.0, "mean": 15.4, "std": 6.5}
    save_model(AudioClassifier(enc, head=None, front_end=fe), tmp_path / "enc")
    m = FinetuneModule(init_from=str(tmp_path / "enc"), front_end={"target_length": 32})
    m.build(3, list("abc"), False, None)
    c = m.model.front_end.config
    assert (c.num_mel_bins, c.frame_shift, c.window_type, c.target_length) == (64, 5.0, "povey", 32)
    assert (c.waveform_scale, c.mean, c.std) == (32768.0, 15.4, 6.5)  # BEATs-style: the scale its mean/std go with
    with pytest.warns(UserWarning, match="statistics"):  # the dataset's statistics (of unscaled waveforms) replace them
        m = FinetuneModule(init_from=str(tmp_path / "enc"))
        m.build(3, list("abc"), False, {"mean": -6.9, "std": 4.4})
    c = m.model.front_end.config
    assert (c.waveform_scale, c.mean, c.num_mel_bins, c.window_type) == (1.0, -6.9, 64, "povey")
    m = FinetuneModule(init_from=str(tmp_path / "enc"), front_end={"window_type": "hanning"})
    m.build(3, list("abc"), False, None)
    assert (m.model.front_end.config.window_type, m.model.front_end.config.frame_shift) == ("hanning", 5.0)


def test_final_norm_override_and_head_init(tmp_path):
    """AudioMAE's fine-tuning model: ``del self.norm`` (mean pool -> fc_norm -> head), head trunc-normal std 2e-5."""
    from audiossl.hub.export import save_model
    from audiossl.models.classifier import AudioClassifier

    enc = {"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4, "block_style": "pre"}
    pre = AudioClassifier(enc, head=None, front_end={"target_length": 64})
    save_model(pre, tmp_path / "mae")
    m = FinetuneModule(init_from=str(tmp_path / "mae"), pool="mean")
    m.build(5, list("abcde"), True, None)
    assert isinstance(m.model.encoder.norm, torch.nn.LayerNorm)
    torch.manual_seed(0)
    m = FinetuneModule(init_from=str(tmp_path / "mae"), pool="mean", final_norm=False, head_init_std=2e-5)
    m.build(527, [str(i) for i in range(527)], True, None)
    assert isinstance(m.model.encoder.norm, torch.nn.Identity) and not m.model.encoder.config.final_norm
    assert torch.equal(m.model.encoder.blocks[1].mlp.fc2.weight, pre.encoder.blocks[1].mlp.fc2.weight)
    assert m.model.head.linear.weight.std().item() == pytest.approx(2e-5, rel=0.05)
    x = torch.randn(2, 64, 128)
    m.model.eval()  # no drop path
    with torch.no_grad():
        tokens = pre.encoder.forward_tokens(pre.encoder.embed(x))  # with the final norm
        pooled_wo = m.model.forward_features(x)[0]
        raw = m.model.encoder.forward_tokens(m.model.encoder.embed(x))[:, 1:].mean(1)
    assert torch.allclose(pooled_wo, raw, atol=1e-6) and not torch.allclose(pooled_wo, tokens[:, 1:].mean(1), atol=1e-3)
    m = FinetuneModule(init_from=str(tmp_path / "mae"), head_init_std=None)  # AST's new head: nn.Linear's own init
    m.build(5, list("abcde"), True, None)
    bound = 1 / math.sqrt(64)
    assert m.model.head.linear.weight.abs().max() <= bound and m.model.head.linear.weight.std() > 0.3 * bound


def test_finetune_with_the_audiomae_and_ast_options_trains(pretrained, synth_root, tmp_path):
    """A real Trainer with patch dropping, pair mixup on waveforms, masks before normalisation, Adam with a step
    schedule in epochs, BEiT layer decay, mean BCE: it trains, the lr follows the schedule, and best.ckpt is written."""
    from helpers import tb_scalars

    root = tmp_path / "ft"
    _finetune(str(root), synth_root, "--model.init_from", pretrained, "--model.patch_drop", "[0.25, 0.25]",
              "--model.mixup_style", "pair", "--model.mixup", "10.0", "--model.mixup_prob", "0.5",
              "--model.specaug_freq", "48", "--model.specaug_time", "40", "--model.specaug_before_norm", "true",
              "--model.optimizer", "adam", "--model.lr_schedule", "step", "--model.lr_step_epochs", "[1]",
              "--model.lr_step_gamma", "0.5", "--model.warmup_steps", "0", "--model.layer_decay_style", "beit",
              "--model.bce_reduction", "mean", "--model.pool", "mean", "--trainer.max_steps", "6",
              "--trainer.log_every_n_steps", "1", "--data.epoch_size", "48", steps=6)
    losses = tb_scalars(str(root), "train/loss")
    assert len(losses) == 6 and all(v == v for v in losses.values())
    ck = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    lrs = [g["lr"] for g in ck["optimizer_states"][0]["param_groups"] if g["lr_scale"] == 1.0]
    assert lrs and lrs[0] == pytest.approx(1e-3 * 0.5)  # 3 steps per epoch: after epoch 1 the lr is halved
    assert (root / "checkpoints" / "best.ckpt").is_file()
    hist = [json.loads(line) for line in (root / "val_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [6] and 0 <= hist[0]["mAP"] <= 1


def test_epoch_weight_average_is_ast_validate_wa(pretrained, synth_root, tmp_path):
    """AST ``validate_wa``: the state dicts saved after epochs wa_start..wa_end summed and divided by their count."""
    import lightning as L

    from audiossl.tasks.weight_averaging import EpochWeightAverage
    from audiossl.hub.reader import classifier_from_checkpoint
    from audiossl.data import AudioDataModule

    class Record(L.Callback):
        def __init__(self):
            self.states = {}

        def on_train_epoch_end(self, trainer, module):
            self.states[trainer.current_epoch + 1] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    m = FinetuneModule(init_from=pretrained, front_end={"target_length": 192}, warmup_steps=1, mixup=0.0, lr=1e-3)
    dm = AudioDataModule(synth_root, batch_size=16, num_workers=0, epoch_size=32, clip_seconds=2.0)
    avg, rec = EpochWeightAverage(first_epoch=2, last_epoch=3), Record()
    L.Trainer(max_epochs=4, callbacks=[avg, rec], default_root_dir=str(tmp_path), logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, accelerator="cpu").fit(m, datamodule=dm)
    sd_a = {k: v.clone() for k, v in rec.states[2].items()}  # AST: sdA = epoch wa_start
    for key in sd_a:
        sd_a[key] = sd_a[key] + rec.states[3][key]
    sd_a = {k: v / 2.0 for k, v in sd_a.items()}
    ck = torch.load(tmp_path / "checkpoints" / "averaged.ckpt", map_location="cpu", weights_only=True)
    assert ck["averaged_epochs"] == [2, 3] and set(ck["state_dict"]) == set(sd_a)
    for k, v in sd_a.items():
        assert torch.allclose(ck["state_dict"][k], v, atol=1e-6), k
    assert not torch.allclose(rec.states[2]["model.head.linear.weight"], rec.states[4]["model.head.linear.weight"])
    model = classifier_from_checkpoint(tmp_path / "checkpoints" / "averaged.ckpt")
    assert torch.allclose(model.head.linear.weight, sd_a["model.head.linear.weight"], atol=1e-6)
    # the running sum is the callback's state: a resumed run continues it
    again = EpochWeightAverage(first_epoch=2, last_epoch=3)
    again.load_state_dict(avg.state_dict())
    assert again.count == 2 and torch.equal(again.sum["model.head.linear.bias"], avg.sum["model.head.linear.bias"])


@pytest.mark.parametrize("recipe", ["as20k_audiomae.yaml", "esc50_ast.yaml", "as2m_ast.yaml"])
def test_audiomae_and_ast_recipes_run(recipe, synth_root, tmp_path):
    """The AudioMAE/AST recipes train as written (epochs, step schedule, averaging), on a tiny encoder."""
    from audiossl.cli.train import finetune

    tiny = "{name: vit_tiny, depth: 2, embed_dim: 64, num_heads: 4, block_style: pre}"
    extra = ["--data.eval_split", "eval", "--data.eval_fold", "null"] if "esc50" in recipe else []
    assert finetune(["--config", config("finetune", recipe), "--data.root", synth_root, "--model.encoder", tiny,
                     "--model.front_end", "{target_length: 192}", "--trainer.max_epochs", "2",
                     "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0", "--data.batch_size", "16",
                     "--data.epoch_size", "32", "--data.clip_seconds", "2.0", "--data.train_split", "train",
                     "--trainer.enable_progress_bar", "false", "--trainer.devices", "1", "--trainer.strategy", "auto",
                     *extra]) == 0
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 4 and ck["audiossl"]["kind"] == "classifier"
    if recipe == "as2m_ast.yaml":  # weights after epochs 1 and 2 averaged
        avg = torch.load(tmp_path / "checkpoints" / "averaged.ckpt", map_location="cpu", weights_only=True)
        assert avg["averaged_epochs"] == [1, 2]
