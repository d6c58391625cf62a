"""Probes on a frozen encoder: CGP / LCGP / Head2Toe / the linear probe against transcriptions of BAT's heads, padding
invariance on every kind of encoder, the asymmetric loss, ``audiossl probe`` end to end (a probe checkpoint exports,
predicts and runs in ONNX like a classifier), every shipped probe YAML, and the memory model."""

import glob
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers import config, pretrained, synth_root  # noqa: F401  (fixtures)

from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.tasks.probe_memory import cgp_step_memory, measure_peak_bytes
from audiossl.models.probe_heads import ConvexGatedProbe, Head2ToeProbe, LayerMixProbe
from audiossl.tasks.asymmetric_loss import asymmetric_loss
from audiossl.tasks.probe import ProbeModule, probe_param_groups

TINY = {"name": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 4}
ENCODERS = {  # the probe must run on any of our encoders
    "eat": {**TINY, "block_style": "post"},
    "bat": {**TINY, "block_style": "post", "attn_gate": True, "pos_embed": "sincos_bat", "chunk_time_patches": 4},
    "mae": {**TINY, "block_style": "pre"},
    "no_cls": {**TINY, "block_style": "post", "num_prefix_tokens": 0},  # BEATs-like: patches only
}


# --- transcriptions of BAT's heads (models/heads.py), over BAT's cache layout -------------------------------------
def bat_cache(layers, P, T, Fp):
    """Our ``[B, P + N, D]`` block outputs -> BAT's feat_cache: patch_tokens ``[L, B, D, T, F]``, cls ``[L, B, D]``."""
    pt = torch.stack([h[:, P:] for h in layers])  # [L, B, N, D]
    L, B, N, D = pt.shape
    return pt.transpose(2, 3).reshape(L, B, D, T, Fp), torch.stack([h[:, 0] for h in layers])


def bat_cgp(head: ConvexGatedProbe, patch_tokens, cls_tokens, use_cls=True):
    """``CGP.patch_cls_forward`` / ``patch_avg_forward`` with a 1x1 convolution over the (T, F) grid."""
    L, B, D, T, Fp = patch_tokens.shape
    x = F.normalize(patch_tokens, dim=2)
    p = F.normalize(head.prototypes[:, :, None, None], dim=1)  # [K, D, 1, 1]
    a = torch.softmax(head.layer_logits, dim=0)
    x = (a.reshape(L, 1, 1, 1, 1) * x).sum(dim=0)
    act = F.conv2d(x, p).reshape(B, p.shape[0], -1)  # [B, K, T * F]
    if use_cls:
        c = (a.reshape(L, 1, 1) * F.normalize(cls_tokens, dim=2)).sum(dim=0)
        mid = c @ p.squeeze().T
    else:
        mid = act.mean(dim=-1)
    feats = torch.stack([act.min(dim=-1).values, mid, act.max(dim=-1).values], dim=-1).reshape(B, -1)
    return head.linear(feats)


def _layers(enc_spec, x, frames=None):
    m = AudioClassifier(enc_spec, None, {"target_length": x.shape[1]}).eval()
    with torch.no_grad():
        tokens, layers, valid = m.encode(x, frames, layers=True)
    return m, tokens, layers, valid


@pytest.mark.parametrize("use_cls", [True, False])
def test_cgp_equals_bats_cgp(use_cls):
    torch.manual_seed(0)
    spec = ENCODERS["eat"] if use_cls else ENCODERS["no_cls"]
    m, tokens, layers, _ = _layers(spec, torch.randn(3, 96, 128))
    head = ConvexGatedProbe(64, 2, 7, num_prototypes=50, dropout=0.0, use_cls=use_cls).eval()
    with torch.no_grad():
        head.layer_logits.copy_(torch.tensor([0.3, -1.2]))
    P = m.encoder.num_prefix_tokens
    ref = bat_cgp(head, *bat_cache(layers, P, 6, 8), use_cls=use_cls) if use_cls else \
        bat_cgp(head, bat_cache(layers, 0, 6, 8)[0], None, use_cls=False)
    with torch.no_grad():
        ours = head([h.clone() for h in layers], P)
        again = head([h.clone() for h in layers], P, inplace=True)
    assert (ours - ref).abs().max() < 1e-5 and torch.equal(ours, again)
    # interleaved features: prototype k's [min, cls, max] are columns 3k .. 3k + 2
    f = head.similarities([h.clone() for h in layers], P)
    assert torch.all(f[:, 0::3] <= f[:, 2::3])


def test_lcgp_h2t_and_linear_equal_bats_heads():
    torch.manual_seed(1)
    m, tokens, layers, _ = _layers(ENCODERS["eat"], torch.randn(2, 64, 128))
    cls = torch.stack([h[:, 0] for h in layers])  # [L, B, D]
    lcgp = LayerMixProbe(64, 2, 5, dropout=0.0).eval()
    with torch.no_grad():
        lcgp.layer_logits.copy_(torch.tensor([0.7, -0.1]))
    a = torch.softmax(lcgp.layer_logits, 0).reshape(-1, 1, 1)
    ref = lcgp.linear(lcgp.norm((a * cls).sum(0)))  # LinearCGP.cls_forward
    assert (lcgp(layers, 1) - ref).abs().max() < 1e-5
    h2t = Head2ToeProbe(64, 2, 5, dropout=0.0).eval()
    ref = h2t.linear(h2t.norm(cls.permute(1, 0, 2).flatten(1)))  # Head2Toe.cls_forward
    assert (h2t(layers, 1) - ref).abs().max() < 1e-5
    w = h2t.linear.weight
    assert torch.allclose(h2t.penalty(), torch.linalg.vector_norm(w, dim=0).sum() * math.sqrt(5))
    # BAT's linear probe is our classifier head with a dropout: final CLS -> LayerNorm -> dropout -> Linear
    clf = AudioClassifier(ENCODERS["eat"], HeadConfig(num_classes=5, dropout=0.2), {"target_length": 64}).eval()
    clf.encoder.load_state_dict(m.encoder.state_dict())
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        t = clf.encoder(x)
        assert torch.allclose(clf(x), clf.head.linear(clf.head.norm(t[:, 0])), atol=1e-6)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("probe", ["cgp", "lcgp", "h2t", "linear"])
def test_probes_ignore_padding_on_every_encoder(encoder, probe):
    """A clip padded into a longer window gets the logits it gets alone: min/max/mean over its real patches only."""
    torch.manual_seed(2)
    spec = ENCODERS[encoder]
    pool = "mean" if encoder == "no_cls" else "cls"
    clf = AudioClassifier(spec, HeadConfig(num_classes=4, pool=pool, probe=probe, num_prototypes=32),
                          {"target_length": 160}).eval()
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 160, 128)
    frames = torch.tensor([160, 75])  # the second clip: 5 time patches (75 frames, the last patch part padding)
    with torch.no_grad():
        padded = clf(x, frames)
        alone = clf(x[1:, :80], torch.tensor([75]))
        leaky = clf(x)
    assert (padded[1] - alone[0]).abs().max() < 1e-5
    assert (leaky[1] - alone[0]).abs().max() > 1e-4  # without the mask the padding would change them


def test_asymmetric_loss_equals_bats():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 9, generator=g) * 3, (torch.rand(6, 9, generator=g) > 0.7).float()

    def bat_asl(x, y, gneg, gpos, clip, eps=1e-8):  # AsymmetricLossMultiLabel.forward, reduction mean
        s = torch.sigmoid(x)
        neg = 1 - s if not clip else (1 - s + clip).clamp(max=1)
        loss = y * torch.log(s.clamp(min=eps)) + (1 - y) * torch.log(neg.clamp(min=eps))
        pt = s * y + neg * (1 - y)
        return -(loss * torch.pow(1 - pt, gpos * y + gneg * (1 - y)).detach()).mean()

    for gneg, gpos, clip in ((1, 0, 0), (4, 1, 0.05)):
        assert torch.allclose(asymmetric_loss(x, y, gneg, gpos, clip), bat_asl(x, y, gneg, gpos, clip), atol=1e-6)
    # gamma- 1, gamma+ 0: negatives weighted by their own probability (held out of the gradient), positives by 1
    xr = x.clone().requires_grad_(True)
    asymmetric_loss(xr, y).backward()
    s = torch.sigmoid(x)
    want = (-(y * (1 - s)) + (1 - y) * s * s) / y.numel()
    assert torch.allclose(xr.grad, want, atol=1e-6)


def test_probe_optimiser_groups():
    m = ProbeModule(encoder=ENCODERS["eat"], probe="cgp", num_prototypes=16, front_end={"target_length": 64})
    m.build(3, list("abc"), True, None)
    m._trainer = type("T", (), {"max_steps": 10})()
    opt = m.configure_optimizers()["optimizer"]
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    h = m.model.head
    assert wd[id(h.linear.weight)] == 0.05 and wd[id(h.prototypes)] == 0.0 and wd[id(h.layer_logits)] == 0.0
    assert wd[id(h.linear.bias)] == 0.0 and tuple(opt.param_groups[0]["betas"]) == (0.9, 0.999)
    assert not set(wd) & {id(p) for p in m.model.encoder.parameters()}  # the encoder is frozen
    assert probe_param_groups([("x.prototypes", h.prototypes)], 0.1)[1]["params"] == [h.prototypes]


# --- audiossl probe end to end -------------------------------------------------------------------------------------
def _probe(root, data, init, *extra, steps=3):
    from audiossl.cli.train import probe

    assert probe(["--config", config("probe", "tiny.yaml"), "--data.root", data, "--model.init_from", init,
                 "--trainer.max_steps", str(steps), "--trainer.default_root_dir", root, "--data.num_workers", "0",
                 "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", str(steps),
                 "--model.num_prototypes", "64", *extra]) == 0


@pytest.mark.parametrize("probe", ["cgp", "linear"])
def test_probe_cli_trains_head_only_and_exports_like_a_classifier(probe, pretrained, synth_root, tmp_path):
    from audiossl.cli.main import main as cli
    from audiossl.hub.export import export_checkpoint, load_model
    from audiossl.cli.train import latest_checkpoint

    root = str(tmp_path / "probe")
    _probe(root, synth_root, pretrained, "--model.probe", probe, "--model.roll", "true")
    ck_path = latest_checkpoint(root)
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    meta = ck["audiossl"]
    assert meta["kind"] == "classifier" and meta["head"]["probe"] == probe and len(meta["label_names"]) == 16
    pre = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"]
    enc = {k[len("model.encoder."):]: v for k, v in ck["state_dict"].items() if k.startswith("model.encoder.")}
    assert enc and all(torch.equal(v, pre["encoder." + k]) for k, v in enc.items())  # frozen, bit for bit
    head_key = "model.head.prototypes" if probe == "cgp" else "model.head.linear.weight"
    assert head_key in ck["state_dict"]
    report = export_checkpoint(ck_path, tmp_path / "export", onnx=True)
    assert report["kind"] == "classifier" and report["onnx"]["max_abs_diff"] < 1e-4
    model = load_model(tmp_path / "export")
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(40000)).astype(np.float32), 16000)
    assert len(model.predict(str(wav), top_k=3)) == 3
    assert cli(["evaluate", "--ckpt_path", ck_path, "--data.root", synth_root, "--out", str(tmp_path / "eval"),
                "--data.num_workers", "0"]) == 0


def test_probe_takes_the_teacher_and_model_directories(pretrained, tmp_path):
    from audiossl.hub.export import export_checkpoint

    m = ProbeModule(init_from=pretrained, encoder_weights="teacher", probe="lcgp")
    m.build(4, list("abcd"), False, None)
    sd = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(m.model.encoder.blocks[0].attn.qkv.weight, sd["teacher.model.blocks.0.attn.qkv.weight"])
    export_checkpoint(pretrained, tmp_path / "enc")
    d = ProbeModule(init_from=str(tmp_path / "enc"), probe="h2t")
    d.build(4, list("abcd"), False, None)
    assert torch.equal(d.model.encoder.blocks[0].attn.qkv.weight, sd["encoder.blocks.0.attn.qkv.weight"])
    assert d.model.front_end.config.target_length == 192  # the checkpoint's front end
    with pytest.raises(ValueError, match="probe must be one of"):
        ProbeModule(init_from=pretrained, probe="knn")


@pytest.mark.parametrize("path", sorted(glob.glob(config("probe", "*.yaml"))), ids=os.path.basename)
def test_probe_config_instantiates_and_builds(path, pretrained, synth_root, tmp_path):
    from audiossl.cli.train import build_cli

    cli = build_cli(ProbeModule, ["--config", path, "--data.root", synth_root, "--model.init_from", pretrained,
                                  "--model.num_prototypes", "32", "--trainer.default_root_dir", str(tmp_path),
                                  "--trainer.accelerator", "cpu", "--trainer.devices", "1"], "runs/probe", False)
    dm = cli.datamodule
    cli.model.build(dm.num_classes, dm.label_names, dm.multi_label, dm.stats)
    assert cli.model.model.head.linear.out_features == 16 and cli.trainer.max_steps > 0


# --- memory ---------------------------------------------------------------------------------------------------------
def test_cgp_memory_model_matches_a_measured_step():
    """The CGP step's peak tensor memory (frozen encoder under no_grad, head forward + backward + AdamW step), measured
    on CPU in fp32 at batch 2 and 3, against the model in audiossl.tasks.probe_memory."""
    torch.manual_seed(0)
    spec = {**TINY, "block_style": "post", "depth": 3, "embed_dim": 96, "num_heads": 4}
    clf = AudioClassifier(spec, HeadConfig(num_classes=10, probe="cgp", num_prototypes=2000),
                          {"target_length": 256})
    clf.encoder.requires_grad_(False).eval()
    opt = torch.optim.AdamW(clf.head.parameters(), lr=1e-3, foreach=True)  # the GPU default

    def step(B):
        x = torch.randn(B, 256, 128)
        with torch.no_grad():
            tokens, layers, valid = clf.encode(x, None, layers=True)
        loss = clf.head_logits(tokens, layers, valid, inplace=True).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step(1)  # AdamW state and gradients exist from here on, as in training
    for B in (2, 3):
        measured = measure_peak_bytes(lambda: step(B))
        model = cgp_step_memory(B, patches=128, dim=96, depth=3, mlp_hidden=384, prototypes=2000, classes=10,
                                act_bytes=4, sim_bytes=4, include_weights=False)
        assert abs(model["peak"] - measured) / measured < 0.15, (B, measured, model)
