"""Optimiser groups and learning-rate schedules against transcriptions of the reference schedulers: fairseq's composite
optimiser + cosine scheduler (EAT/SSLAM), AudioMAE's ``adjust_learning_rate`` + BEiT layer decay, AST's warm-up +
MultiStepLR, I-JEPA's warm-up and cosine weight decay."""

from __future__ import annotations

import math
import types

import pytest
import torch

from audiossl.tasks.finetune import FinetuneModule, layer_decay_scales
from audiossl.models import create_encoder
from audiossl.objectives import JEPA
from audiossl.objectives.base import cosine_weight_decay, param_groups, scheduled_lr, warmup_cosine

TWELVE = {"name": "vit_base", "depth": 12, "embed_dim": 32, "num_heads": 2, "block_style": "post"}


def _module(encoder=TWELVE, **kw) -> FinetuneModule:
    m = FinetuneModule(encoder=dict(encoder), front_end={"target_length": 64}, **kw)
    m.build(3, list("abc"), True, None)
    return m


def _lrs(sched, opt, steps: int) -> list[list[float]]:
    """Each group's lr for optimizer steps 0 .. steps-1, as Lightning's per-step LambdaLR gives them."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


# --- fairseq (EAT / SSLAM) -----------------------------------------------------------------------------------------
class FairseqCosine:
    """Transcription of fairseq ``CosineLRSchedule`` (data2vec 2.0 era, d871f616): the peak is clamped to be no
    lower than ``min_lr``, the warm-up starts at ``min_lr`` (``warmup_init_lr = -1``), ``step_update(n)`` gives the lr
    used by the update after ``n`` updates."""

    def __init__(self, lr, min_lr, warmup_updates, max_update, lr_shrink=0.1):
        self.max_lr = lr
        if self.max_lr < min_lr:
            min_lr = self.max_lr
        self.min_lr, self.warmup_init_lr = min_lr, min_lr
        self.period = max_update - warmup_updates
        self.lr_step = (self.max_lr - self.warmup_init_lr) / warmup_updates if warmup_updates > 0 else 1
        self.warmup_updates, self.lr_shrink = warmup_updates, lr_shrink

    def step_update(self, num_updates):
        if num_updates < self.warmup_updates:
            return self.warmup_init_lr + num_updates * self.lr_step
        curr = num_updates - self.warmup_updates
        i = math.floor(curr / self.period)
        t_i, t_curr = self.period, curr - self.period * i
        shrink = self.lr_shrink**i
        lo, hi = self.min_lr * shrink, self.max_lr * shrink
        return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * t_curr / t_i))


def test_lr_floor_absolute_is_fairseq_composite_schedule():
    """EAT fine-tuning: every lr-scale group (block i: 0.65 ** (12 - i)) gets its own fairseq cosine scheduler with peak
    lr * scale and the *unscaled* min_lr 1e-6 (composite ``dynamic_groups``); blocks whose peak is below 1e-6 run at a
    constant lr, the rest warm up from 1e-6."""
    total, warmup = 400, 40
    m = _module(lr=5e-5, min_lr=1e-6, warmup_steps=warmup, layer_decay=0.65, lr_floor="absolute",
                warmup_init="floor")
    m._trainer = types.SimpleNamespace(max_steps=total)
    cfg = m.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    refs = [FairseqCosine(5e-5 * g["lr_scale"], 1e-6, warmup, total) for g in opt.param_groups]
    got = _lrs(sched, opt, total)
    for s in range(total):
        for j, ref in enumerate(refs):
            assert got[s][j] == pytest.approx(ref.step_update(s), rel=1e-9, abs=1e-15), (s, j)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert scales[0] == pytest.approx(0.65**12)
    low = [j for j, g in enumerate(opt.param_groups) if 5e-5 * g["lr_scale"] < 1e-6]
    assert low and all(got[0][j] == got[-1][j] == pytest.approx(5e-5 * opt.param_groups[j]["lr_scale"]) for j in low)
    # the default (scaled) floor is not fairseq's: block 0 would end at 1e-6 * 0.65**12, not at its constant peak
    m2 = _module(lr=5e-5, min_lr=1e-6, warmup_steps=warmup, layer_decay=0.65)
    m2._trainer = types.SimpleNamespace(max_steps=total)
    cfg2 = m2.configure_optimizers()
    got2 = _lrs(cfg2["lr_scheduler"]["scheduler"], cfg2["optimizer"], total)
    j0 = [j for j, g in enumerate(cfg2["optimizer"].param_groups) if g["lr_scale"] == scales[0]][0]
    assert got2[-1][j0] < 0.1 * refs[low[0]].step_update(total - 1)


def test_default_schedule_is_unchanged():
    """``lr_floor: scaled`` + ``warmup_init: one_step`` (the defaults) is the original warmup_cosine, scaled."""
    for scale in (1.0, 0.3):
        for s in (0, 5, 9, 10, 50, 99):
            ref = 1e-3 * scale * warmup_cosine(s, 10, 100, 1e-5 / 1e-3)
            assert scheduled_lr(s, 1e-3 * scale, 1e-5 * scale, 10, 100) == pytest.approx(ref, rel=1e-12)


def test_decay_all_params_decays_biases_norms_and_tokens():
    """fairseq's composite optimiser ignores ``weight_decay_scale: 0``, so EAT/SSLAM decay every parameter."""
    enc = create_encoder("vit_base", depth=2, embed_dim=32, num_heads=2, block_style="post")
    named = list(enc.named_parameters())
    ours = param_groups(named, 0.05)
    assert {g["weight_decay"] for g in ours} == {0.0, 0.05}
    literal = param_groups(named, 0.05, decay_all=True)
    assert [g["weight_decay"] for g in literal] == [0.05]
    assert {id(p) for g in literal for p in g["params"]} == {id(p) for _, p in named}
    m = _module(decay_all_params=True)
    m._trainer = types.SimpleNamespace(max_steps=10)
    opt = m.configure_optimizers()["optimizer"]
    named = dict(m.model.named_parameters())
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for n in ("encoder.prefix_tokens", "encoder.pre_norm.weight", "encoder.blocks.0.attn.qkv.bias", "head.norm.bias"):
        assert wd_of[id(named[n])] == 0.05, n


# --- AudioMAE ------------------------------------------------------------------------------------------------------
def _beit_layer_id(name: str, num_layers: int) -> int:
    """Transcription of MAE/AudioMAE ``util/lr_decay.get_layer_id_for_vit``, our parameter names for timm's."""
    name = {"prefix_tokens": "cls_token", "pos_table": "pos_embed"}.get(name, name)
    if name in ("cls_token", "pos_embed"):
        return 0
    if name.startswith(("patch_embed", "pre_norm")):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def test_beit_layer_decay_includes_the_embeddings():
    enc = create_encoder("vit_base", depth=12, embed_dim=32, num_heads=2, block_style="pre")
    num_layers = len(enc.blocks) + 1
    scales = layer_decay_scales(enc, 0.75, prefix="", style="beit")
    for n, _ in enc.named_parameters():
        assert scales.get(n, 1.0) == pytest.approx(0.75 ** (num_layers - _beit_layer_id(n, num_layers))), n
    assert scales["patch_embed.weight"] == pytest.approx(0.75**13)
    eat = layer_decay_scales(enc, 0.75, prefix="")
    assert "patch_embed.weight" not in eat and eat["blocks.11.mlp.fc1.weight"] == pytest.approx(0.75)


def test_warmup_epochs_zero_start_scaled_floor_is_audiomae_schedule():
    """AudioMAE ``lr_sched.adjust_learning_rate`` per iteration (fractional epochs, warm-up from 0, half-cycle cosine
    to min_lr) times each group's BEiT ``lr_scale`` -- floor included."""
    ipe, epochs, warm, lr, min_lr = 100, 6, 1.5, 2e-4, 1e-6
    m = _module(encoder=dict(TWELVE, block_style="pre"), lr=lr, min_lr=min_lr, warmup_epochs=warm,
                warmup_init="zero", layer_decay=0.75, layer_decay_style="beit", betas=(0.9, 0.999))
    m._trainer = types.SimpleNamespace(max_steps=-1, estimated_stepping_batches=ipe * epochs,
                                       num_training_batches=ipe, accumulate_grad_batches=1)
    cfg = m.configure_optimizers()
    opt = cfg["optimizer"]
    got = _lrs(cfg["lr_scheduler"]["scheduler"], opt, ipe * epochs)

    def audiomae(epoch):  # util/lr_sched.py
        if epoch < warm:
            return lr * epoch / warm
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warm) / (epochs - warm)))

    for it in range(ipe * epochs):
        for j, g in enumerate(opt.param_groups):
            assert got[it][j] == pytest.approx(audiomae(it / ipe) * g["lr_scale"], rel=1e-9, abs=1e-16), (it, j)
    assert got[0][0] == 0.0


# --- AST -------------------------------------------------------------------------------------------------------------
def test_adam_step_schedule_is_ast():
    """AST ``traintest.py``: Adam(weight_decay=5e-7, betas=(0.95, 0.999)); every 50 steps up to step 1000 the lr is set
    to step/1000 * lr; MultiStepLR(milestones, gamma) stepped after every epoch."""
    ipe, epochs, lr = 1100, 5, 1e-5
    m = _module(encoder=dict(TWELVE, block_style="pre"), lr=lr, weight_decay=5e-7, betas=(0.95, 0.999),
                optimizer="adam", decay_all_params=True, layer_decay=1.0, warmup_steps=1000, warmup_init="zero",
                warmup_quantum=50, lr_schedule="step", lr_step_epochs=[2, 3, 4], lr_step_gamma=0.5)
    m._trainer = types.SimpleNamespace(max_steps=-1, estimated_stepping_batches=ipe * epochs,
                                       num_training_batches=ipe, accumulate_grad_batches=1)
    cfg = m.configure_optimizers()
    opt = cfg["optimizer"]
    assert type(opt) is torch.optim.Adam and [g["weight_decay"] for g in opt.param_groups] == [5e-7]
    got = [row[0] for row in _lrs(cfg["lr_scheduler"]["scheduler"], opt, ipe * epochs)]

    p = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.Adam([p], lr, weight_decay=5e-7, betas=(0.95, 0.999))
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(ref_opt, list(range(2, 1000, 1)), gamma=0.5)
    ref, global_step = [], 0
    for _epoch in range(epochs):
        for _ in range(ipe):
            if global_step <= 1000 and global_step % 50 == 0:
                for group in ref_opt.param_groups:
                    group["lr"] = (global_step / 1000) * lr
            ref.append(ref_opt.param_groups[0]["lr"])
            ref_opt.step()
            global_step += 1
        ref_sched.step()
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-18)


# --- I-JEPA ----------------------------------------------------------------------------------------------------------
def test_fractional_warmup_start_is_ijepa_warmup():
    """I-JEPA ``WarmupCosineSchedule.step()`` increments its counter first: update s uses
    start + (s + 1) / warmup * (ref - start), with start_lr / lr = 0.0002 / 0.001 = 0.2."""
    ref_lr, start_lr, warmup = 1e-3, 2e-4, 40
    for s in range(warmup):
        _step = s + 1
        expect = start_lr + (_step / warmup) * (ref_lr - start_lr) if _step < warmup else ref_lr
        assert scheduled_lr(s, ref_lr, 1e-6, warmup, 400, 0.2) == pytest.approx(expect, rel=1e-12)


def test_cosine_weight_decay_is_ijepa_and_skips_exempt_groups():
    class CosineWDSchedule:  # transcription of I-JEPA src/utils/schedulers.py
        def __init__(self, ref_wd, T_max, final_wd=0.0):
            self.ref_wd, self.final_wd, self.T_max, self._step = ref_wd, final_wd, T_max, 0.0

        def step(self):
            self._step += 1
            progress = self._step / self.T_max
            new_wd = self.final_wd + (self.ref_wd - self.final_wd) * 0.5 * (1.0 + math.cos(math.pi * progress))
            return max(self.final_wd, new_wd) if self.final_wd <= self.ref_wd else min(self.final_wd, new_wd)

    ref = CosineWDSchedule(0.04, 100, 0.4)
    for s in range(100):
        assert cosine_weight_decay(s + 1, 100, 0.04, 0.4) == pytest.approx(ref.step(), rel=1e-12)
    m = JEPA(encoder={"name": "vit_base", "depth": 2, "embed_dim": 32, "num_heads": 2}, predictor_dim=32,
             predictor_depth=1, predictor_heads=2, weight_decay=0.04, weight_decay_end=0.4)
    m._trainer = types.SimpleNamespace(max_steps=100, global_step=49, log_every_n_steps=1000)
    opt = m.configure_optimizers()["optimizer"]
    m.on_before_optimizer_step(opt)
    wds = sorted({g["weight_decay"] for g in opt.param_groups})
    assert wds == [0.0, pytest.approx(cosine_weight_decay(50, 100, 0.04, 0.4))] and wds[1] == pytest.approx(0.22)
