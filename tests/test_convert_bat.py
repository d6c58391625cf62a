"""``audiossl convert bat``: the released layouts (HF safetensors, BAT_base.pt, BAT's trainer output) against a
transcription of BAT's forward (gate, stored positions, 64-patch windows), then predict / embed / ONNX."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from bat_reference import bat_encoder, bat_state_dict
from safetensors.torch import save_file

import audiossl
from audiossl.cli.main import main
from audiossl.convert import ConversionError, convert_bat
from audiossl.frontend.features import FrontEnd

HEADS = 4


def hf_dir(tmp_path, sd, config=None):
    d = tmp_path / "BAT-vit-b16-pretrainedAS2M"
    d.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config or {"model_type": "bat", "num_attention_heads": HEADS,
                                                         "chunk_time_patches": 64, "n_mels": 128, "top_db": 80}))
    return d


def test_hf_safetensors_equal_bats_forward_and_export_onnx(tmp_path, capsys):
    sd = bat_state_dict()
    sd["pos_embed"] = sd["pos_embed"] + 1e-3 * torch.randn(sd["pos_embed"].shape, generator=torch.Generator().manual_seed(9))  # a stored table is kept as is
    out = tmp_path / "out"
    assert main(["convert", "bat", str(hf_dir(tmp_path, sd)), "--out", str(out), "--onnx"]) == 0
    assert "512-row table kept as a frozen buffer" in capsys.readouterr().err  # warned: it differs from the formula
    model = audiossl.load_model(out)
    c = model.encoder.config
    assert (c.attn_gate, c.pos_embed, c.pos_grid, c.chunk_time_patches, c.num_heads) == (True, "sincos_bat", [64, 8],
                                                                                        64, HEADS)
    assert torch.equal(model.encoder.pos_fixed, sd["pos_embed"])
    assert model.front_end.config.spectrogram == "mel_db_minmax" and model.pool == "cls" and not model.has_head
    for frames in (1024, 640, 1536):  # one window, a shorter input (table prefix), two windows
        x = torch.rand(2, frames, 128)
        with torch.no_grad():
            _, layers, _ = model.encoder(x, return_layers=True)
        cls, patches = bat_encoder(sd, x, HEADS)
        assert (layers[-1][:, 0] - cls[-1]).abs().max() < 1e-5
        assert (layers[-1][:, 1:] - patches[-1]).abs().max() < 1e-5
    # embed: the CLS of BAT's own front end + forward on a 10.23 s clip (exactly 1024 frames)
    wave = 0.1 * torch.randn(163680, generator=torch.Generator().manual_seed(0))
    emb, frame_tokens = model.embed(wave, 16000)
    cls, patches = bat_encoder(sd, FrontEnd(model.front_end.config)(wave[None]), HEADS)
    assert (emb - cls[-1][0]).abs().max() < 1e-5 and (frame_tokens - patches[-1][0]).abs().max() < 1e-5
    # the ONNX graph (traced at one window) runs two windows too
    from audiossl.models.inference import OnnxRunner

    x = torch.rand(1, 1536, 128)
    got = OnnxRunner(out / "model.onnx").run(x, num_frames=torch.tensor([1536]))
    with torch.no_grad():
        ref, _ = model.forward_features(x, torch.tensor([1536]))
    assert np.abs(got["embedding"] - ref.numpy()).max() < 1e-4


def test_bat_base_pt_and_trainer_output_layouts(tmp_path):
    sd = bat_state_dict(seed=1, rows=1024)  # a longer stored table: BAT's loader keeps the first 512 rows
    teacher = bat_state_dict(seed=2)
    ckpt = {"state_dict": {**{"student.encoder." + k: v for k, v in sd.items()},
                           **{"student.decoder.blocks.0.norm1.weight": torch.ones(64)},
                           **{"teacher.encoder." + k: v for k, v in teacher.items()}}}
    torch.save(ckpt, tmp_path / "BAT_base.pt")
    model, report = convert_bat(tmp_path / "BAT_base.pt", num_heads=HEADS)
    assert model.encoder.pos_fixed.shape == (1, 512, 64) and any("teacher.encoder" in k for k in report.ignored)
    x = torch.rand(1, 1024, 128)
    ref = {**sd, "pos_embed": sd["pos_embed"][:, :512]}
    with torch.no_grad():
        assert (model.encoder(x)[:, 0] - bat_encoder(ref, x, HEADS)[0][-1]).abs().max() < 1e-5

    torch.save({"encoder": sd, "decoder": {}, "ema_encoder": teacher, "optimized_steps": 10, "args": {"lr": 5e-4}},
               tmp_path / "BAT_state.pt")
    student, _ = convert_bat(tmp_path / "BAT_state.pt", num_heads=HEADS)
    ema, rep = convert_bat(tmp_path / "BAT_state.pt", num_heads=HEADS, teacher=True)
    assert "EMA teacher" in rep.summary()
    with torch.no_grad():
        assert (ema.encoder(x)[:, 0] - bat_encoder(teacher, x, HEADS)[0][-1]).abs().max() < 1e-5
        assert (student.encoder(x) - model.encoder(x)).abs().max() < 1e-6
    with pytest.raises(ConversionError, match="no EMA teacher"):
        convert_bat(tmp_path / "BAT_base.pt", teacher=True)


def test_bat_linear_probe_state_predicts(tmp_path):
    """BAT's LinearHead (head.ln -> head.fc) becomes CLS -> LayerNorm -> Linear; predict and evaluate-style logits
    equal BAT's forward."""
    sd = bat_state_dict(seed=3)
    g = torch.Generator().manual_seed(4)
    sd.update({"head.ln.weight": 1 + 0.1 * torch.randn(64, generator=g), "head.ln.bias": torch.randn(64, generator=g),
               "head.fc.weight": torch.randn(50, 64, generator=g), "head.fc.bias": torch.randn(50, generator=g)})
    out = tmp_path / "esc"
    assert main(["convert", "bat", str(hf_dir(tmp_path, sd)), "--out", str(out), "--target-length", "512",
                 "--onnx"]) == 0
    model = audiossl.load_model(out)
    assert model.has_head and not model.multi_label and model.label_names[0] == "dog"  # ESC-50 names for 50 classes
    x = torch.rand(2, 512, 128)
    cls, _ = bat_encoder(sd, x, HEADS)
    ln = torch.nn.functional.layer_norm(cls[-1], (64,), sd["head.ln.weight"], sd["head.ln.bias"], eps=1e-6)
    with torch.no_grad():
        assert (model(x) - (ln @ sd["head.fc.weight"].T + sd["head.fc.bias"])).abs().max() < 1e-4
    wav = tmp_path / "clip.wav"
    sf.write(wav, (0.2 * np.random.default_rng(0).standard_normal(80000)).astype(np.float32), 16000)
    top = model.predict(str(wav), top_k=3)
    assert len(top) == 3 and all(0 <= p <= 1 for _, p in top)
    assert main(["predict", str(wav), "--model", str(out), "--top-k", "2"]) == 0


def test_bat_import_errors_name_the_problem(tmp_path):
    sd = bat_state_dict()
    no_gate = {k: v for k, v in sd.items() if k != "blocks.1.attn.gate.bias"}
    with pytest.raises(ConversionError, match=r"blocks \[1\] have no attention gate"):
        convert_bat(hf_dir(tmp_path, no_gate))
    odd = {**sd, "blocks.0.attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(ConversionError, match=r"no place .*blocks\.0\.attn\.q_norm\.weight"):
        convert_bat(hf_dir(tmp_path, odd))
    with pytest.raises(ConversionError, match="no EMA teacher"):
        convert_bat(hf_dir(tmp_path, sd) / "model.safetensors", teacher=True)
