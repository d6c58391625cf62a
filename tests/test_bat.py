"""BAT: the encoder options (gate, position table, windows) against a transcription of BAT's forward, the mel_db_minmax
front end against torchaudio per clip, the objective against BAT's loss, its optimiser and init, and a tiny run."""

import math
import os

import pytest
import torch
import torchaudio
from bat_reference import bat_decoder, bat_encoder, bat_make_targets, bat_table
from helpers import config, synth_root  # noqa: F401  (fixture)
from test_features import speech_like

from audiossl.frontend.features import FrontEnd, FrontEndConfig
from audiossl.objectives.masking import inverse_block_mask
from audiossl.frontend.bat_mel import htk_mel_banks, mel_power
from audiossl.models import AudioEncoder
from audiossl.models.pos_embed import sincos_2d, sincos_bat
from audiossl.objectives import BAT

ENC = dict(embed_dim=64, depth=2, num_heads=4, block_style="post", attn_gate=True, pos_embed="sincos_bat",
           chunk_time_patches=64)
BAT_FE = dict(spectrogram="mel_db_minmax", frame_length=64.0, frame_shift=10.0)


def bat_names(enc: AudioEncoder) -> dict:
    """Our encoder's weights under BAT's key names."""
    rename = {"patch_embed.weight": "patch_embed.proj.weight", "patch_embed.bias": "patch_embed.proj.bias",
              "prefix_tokens": "cls_token", "pos_fixed": "pos_embed"}
    return {rename.get(k, k): v for k, v in enc.state_dict().items()}


def perturbed(module, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


# --- encoder -----------------------------------------------------------------------------------------------------
def test_bat_table_is_bats_layout_not_ours():
    ours = sincos_bat(768, 512).float()
    ref = bat_table(768)  # numpy float32, get_2d_sincos_pos_embed_flexible(768, (8, 64))
    assert (ours - ref).abs().max() < 1e-5
    assert (ours - sincos_2d(768, 64, 8).float()).abs().max() > 1.9  # not EAT's (time, freq) table
    # token (t, f) = row 8 t + f: first half encodes 8 (t mod 8) + f, second half t div 8
    t, f = 13, 5
    assert torch.allclose(ours[8 * t + f, :384], sincos_bat(768, 64)[8 * (t % 8) + f, :384].float())
    assert torch.allclose(ours[8 * t + f, 384:], sincos_bat(768, 64 * (t // 8) + 1)[64 * (t // 8), 384:].float())
    enc = AudioEncoder(ENC)
    assert "pos_fixed" in enc.state_dict() and "pos_fixed" not in dict(enc.named_parameters())  # frozen


@pytest.mark.parametrize("frames", [1024, 512, 1280, 2304])
def test_encoder_equals_bat_transcription_gate_positions_windows(frames):
    """Per-block CLS (averaged over 64-patch windows) and patch tokens (concatenated) as BAT computes them."""
    torch.manual_seed(0)
    enc = perturbed(AudioEncoder(ENC)).eval()
    x = torch.randn(2, frames, 128)
    with torch.no_grad():
        _, layers, _ = enc(x, return_layers=True)
    cls, patches = bat_encoder(bat_names(enc), x, heads=4)
    for i in range(2):
        assert (layers[i][:, 0] - cls[i]).abs().max() < 1e-5
        assert (layers[i][:, 1:] - patches[i]).abs().max() < 1e-5
    # the gate matters: the same weights without it compute something else
    ungated = {k: v for k, v in bat_names(enc).items() if ".gate." not in k}
    assert (bat_encoder(ungated, x, heads=4)[0] - cls).abs().max() > 1e-2


def test_windows_ignore_padding_and_padding_windows():
    """A short clip in a long padded window: the same tokens as the clip alone, though two of its windows are all
    padding (those take no part in the CLS average) and one is cut by the clip's end."""
    torch.manual_seed(1)
    enc = perturbed(AudioEncoder({**ENC, "chunk_time_patches": 4}), seed=1).eval()
    x = torch.randn(2, 16 * 16, 128)
    frames = torch.tensor([16 * 16, 6 * 16 - 3])  # the second clip: 6 time patches of 16
    with torch.no_grad():
        out = enc(x, num_frames=frames)
        alone = enc(x[1:, : 6 * 16])
    assert (out[1, : alone.shape[1]] - alone[0]).abs().max() < 1e-5
    with torch.no_grad():
        unmasked = enc(x)
    assert (unmasked[1, 0] - alone[0, 0]).abs().max() > 1e-3  # without the mask the padding windows leak in
    with pytest.raises(ValueError, match="token dropping"):
        enc(x, keep=torch.zeros(2, 3, dtype=torch.long))


# --- front end ---------------------------------------------------------------------------------------------------
def torchaudio_bat(wave: torch.Tensor) -> torch.Tensor:
    """BAT's SSLDataTransforms for one clip: MelSpectrogram -> AmplitudeToDB(top_db 80) on [1, 1, F, T] -> min-max.
    Returns [T, F]."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=1024, hop_length=160, n_mels=128)
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)
    x = db(mel(wave[None]).unsqueeze(1)).flatten(1)
    lo, hi = x.aminmax(dim=1, keepdim=True)
    return ((x - lo) / (hi - lo + 1e-8)).reshape(128, -1).T


def test_mel_banks_equal_torchaudio_bit_for_bit():
    import torchaudio.functional as AF

    for n_freqs, n_mels, sr in ((513, 128, 16000), (257, 64, 8000), (1025, 80, 44100)):
        ref = AF.melscale_fbanks(n_freqs, 0.0, sr / 2, n_mels, sr, norm=None, mel_scale="htk")
        assert torch.equal(htk_mel_banks(n_freqs, 0.0, sr / 2, n_mels, sr), ref)


def test_mel_db_minmax_batch_equals_torchaudio_per_clip():
    """A zero-padded batch of clips of different lengths (speech, noise, a tone, one clip filling the batch): each
    row's real frames equal BAT's per-clip torchaudio computation, the rest is 0, frames = 1 + n // 160."""
    lengths = [16000, 9001, 5123, 2400]
    t = torch.arange(16000) / 16000
    clips = [speech_like(16000), 0.3 * torch.randn(16000), torch.sin(2 * math.pi * 440 * t), speech_like(16000, seed=2)]
    w = torch.stack([c.clone() for c in clips])
    for i, n in enumerate(lengths):
        w[i, n:] = 0.0
    fe = FrontEnd(FrontEndConfig(**BAT_FE, target_length=112))
    out, frames = fe(w, num_samples=torch.tensor(lengths), return_frames=True)
    assert out.shape == (4, 112, 128) and frames.tolist() == [1 + n // 160 for n in lengths]
    for i, n in enumerate(lengths):
        ref = torchaudio_bat(clips[i][:n])
        T = ref.shape[0]
        assert T == frames[i]
        assert (out[i, :T] - ref).abs().max() < 1e-5, i
        assert out[i, T:].abs().max() == 0.0  # padded with 0 after normalising
        assert out[i, :T].min() == 0.0 and abs(float(out[i, :T].max()) - 1.0) < 1e-6
    # the same clip alone (no lengths): the same numbers; without lengths the batch's zeros would enter the stats
    assert torch.allclose(fe(clips[1][:9001]), out[1], atol=1e-6)
    assert (fe(w)[1, :57] - out[1, :57]).abs().max() > 1e-3
    # the power spectrogram itself, reflected at each row's own end, equals torchaudio's to float rounding
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=1024, hop_length=160, n_mels=128)
    p = mel_power(w, num_samples=torch.tensor(lengths))
    ref = mel(clips[2][:5123])[:, :].T
    assert torch.allclose(p[2, : ref.shape[0]], ref, rtol=1e-5, atol=1e-9)


def test_mel_front_end_config_round_trip_and_crop():
    fe = FrontEnd(**BAT_FE, target_length=64)
    assert FrontEndConfig.from_dict(fe.config.to_dict()) == fe.config and fe.is_mel
    w = torch.randn(2, 16000) * 0.1  # 101 frames
    out, frames = fe(w, random_crop=True, return_frames=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 64, 128) and frames.tolist() == [64, 64]
    assert all(float(out[i].min()) == 0.0 and abs(float(out[i].max()) - 1.0) < 1e-6 for i in range(2))
    with pytest.raises(ValueError, match="spectrogram must be one of"):
        FrontEnd(spectrogram="mfcc")


# --- the objective -----------------------------------------------------------------------------------------------
def make_bat(**kw):
    args = dict(encoder=dict(ENC), num_views=3, mask_block=3, decoder_depth=2, decoder_heads=4,
                front_end=dict(BAT_FE, target_length=128))
    return BAT(**{**args, **kw})


def test_bat_loss_equals_bat_reference():
    """compute_loss == BAT's ssl_train_step on the same masks: make_targets over the teacher's block outputs, the
    decoder transcription, global + local 1:1 with no scalings."""
    torch.manual_seed(2)
    m = make_bat()
    perturbed(m.decoder, 0.05, seed=3)
    B, V = 2, 3
    fb = torch.rand(B, 128, 128)
    grid = m.encoder.grid_shape(128)
    keep, masked = inverse_block_mask(B * V, grid, 0.8, 3, 0.07, torch.Generator().manual_seed(5))
    m.masks = lambda *a, **k: (keep, masked)
    ours = m.compute_loss(fb, torch.Generator().manual_seed(0))

    with torch.no_grad():
        _, teacher_layers, _ = m.teacher.model(fb, return_layers=True)
        y = bat_make_targets([h[:, 1:] for h in teacher_layers]).repeat_interleave(V, 0)  # [BV, N, D]
    tokens = m.encoder(fb.repeat_interleave(V, 0), keep=keep)  # [BV, 1 + K, D]
    dec = {k: v for k, v in m.decoder.state_dict().items()}
    dec["pos_embed"] = dec.pop("pos")
    pred = bat_decoder(dec, tokens[:, 1:], keep, 4, grid[0] * grid[1])
    mask = torch.ones(B * V, grid[0] * grid[1])
    mask.scatter_(1, keep, 0.0)  # 1 = masked
    global_ = (tokens[:, 0] - y.mean(dim=1)).pow(2).mean()
    local = ((pred - y).pow(2).mean(dim=2) * mask).sum() / mask.sum()
    assert torch.allclose(ours["global_loss"], global_, rtol=1e-5)
    assert torch.allclose(ours["local_loss"], local, rtol=1e-5)
    assert torch.allclose(ours["loss"], global_ + local, rtol=1e-5)
    # targets come from block outputs, not FFN outputs: those would give another loss
    with torch.no_grad():
        _, _, ffn = m.teacher.model(fb, return_layers=True)
        y_ffn = bat_make_targets([h[:, 1:] for h in ffn]).repeat_interleave(V, 0)
    assert abs(float(((pred.detach() - y_ffn).pow(2).mean(dim=2) * mask).sum() / mask.sum()) - float(local.detach())) > 1e-3


def test_bat_optimiser_init_and_teacher():
    m = make_bat()
    m._trainer = type("T", (), {"max_steps": 10})()  # configure_optimizers reads max_steps only
    opt = m.configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.05
    assert tuple(opt.param_groups[0]["betas"]) == (0.9, 0.95)
    in_opt = {id(p) for p in opt.param_groups[0]["params"]}
    named = dict(m.named_parameters())
    for n in ("encoder.prefix_tokens", "encoder.blocks.0.norm1.bias", "decoder.mask_token", "decoder.pos",
              "decoder.blocks.1.attn.gate.bias", "encoder.pre_norm.weight"):
        assert id(named[n]) in in_opt, n  # weight decay on every parameter, as BAT
    assert not in_opt & {id(p) for p in m.teacher.parameters()}
    assert len(in_opt) == len([n for n in named if not n.startswith("teacher.")])
    # BAT's init: xavier-uniform Linear weights (the gate too), zero biases
    w = m.encoder.blocks[0].attn.gate.weight
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert float(m.decoder.blocks[0].mlp.fc1.bias.detach().abs().max()) == 0.0
    assert torch.equal(m.teacher.model.blocks[1].attn.gate.weight, m.encoder.blocks[1].attn.gate.weight)
    with pytest.raises(ValueError, match="CLS"):
        BAT(encoder={**ENC, "num_prefix_tokens": 0}, decoder_depth=1, decoder_heads=4)


def test_bat_tiny_learns_on_a_fixed_batch():
    torch.manual_seed(0)
    m = make_bat(num_views=2)
    fb = FrontEnd(**BAT_FE, target_length=128)(torch.randn(4, 20800) * 0.1)
    opt = torch.optim.AdamW([p for n, p in m.named_parameters() if not n.startswith("teacher.")], lr=1e-3,
                            weight_decay=0.05)
    losses = []
    for step in range(12):
        out = m.compute_loss(fb, torch.Generator().manual_seed(step % 2))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.teacher.update(m.encoder, step + 1)
        losses.append(float(out["loss"]))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


def test_bat_tiny_pretrains_with_the_cli_and_exports(synth_root, tmp_path):
    from audiossl.hub.export import export_checkpoint, load_model
    from audiossl.cli.train import pretrain

    root = str(tmp_path / "run")
    assert pretrain(["--config", config("pretrain", "bat_tiny.yaml"), "--data.root", synth_root,
                     "--trainer.max_steps", "2", "--trainer.default_root_dir", root, "--data.num_workers", "0",
                     "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]) == 0
    ck = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    meta = ck["audiossl"]
    assert meta["objective"] == "bat" and meta["encoder"]["attn_gate"] and meta["front_end"]["spectrogram"] == "mel_db_minmax"
    assert ck["global_step"] == 2 and "encoder.pos_fixed" in ck["state_dict"]
    export_checkpoint(os.path.join(root, "checkpoints", "last.ckpt"), tmp_path / "export")
    model = load_model(tmp_path / "export")
    assert model.pool == "cls"  # BAT trains its CLS as the clip summary
    emb, frames = model.embed(torch.randn(32000) * 0.1, 16000)
    assert emb.shape == (128,) and torch.isfinite(frames).all()


def test_finetuning_a_bat_checkpoint_keeps_its_front_end(tmp_path):
    from audiossl.tasks.finetune import FinetuneModule

    m = make_bat()
    ckpt = tmp_path / "bat.ckpt"
    meta = {"format": 1, "kind": "pretrain", "objective": "bat", "encoder": m.encoder.config.to_dict(),
            "front_end": m.front_end.config.to_dict()}
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in m.encoder.state_dict().items()}, "audiossl": meta}, ckpt)
    ft = FinetuneModule(init_from=str(ckpt), front_end={"target_length": 96})
    ft.build(3, list("abc"), True, None)
    c = ft.model.front_end.config
    assert (c.spectrogram, c.frame_length, c.target_length) == ("mel_db_minmax", 64.0, 96)
    assert torch.equal(ft.model.encoder.pos_fixed, m.encoder.pos_fixed)
