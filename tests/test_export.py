"""Checkpoint reading, export to safetensors + config.json, load_model, ONNX parity."""

import json

import numpy as np
import pytest
import torch

import audiossl
from audiossl.hub.reader import CheckpointError, classifier_from_checkpoint, encoder_from_checkpoint, read_checkpoint
from audiossl.cli.main import main
from audiossl.hub.export import ExportError, load_model, save_model
from audiossl.models.classifier import AudioClassifier, MissingHeadError

TINY = {"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4}
FRONT = {"target_length": 128, "mean": -5.0, "std": 3.0}
LABELS = ["dog", "rain", "siren", "speech", "engine"]


class NotAWeight:  # an arbitrary object weights_only refuses
    pass


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def tiny_classifier(**kw):
    return _perturb(AudioClassifier(encoder=TINY, head={"num_classes": 5}, front_end=FRONT, label_names=LABELS, **kw)).eval()


def lightning_style(model_sd: dict, meta: dict, prefix: str) -> dict:
    """What a Lightning checkpoint of an audiossl module looks like, with the keys Lightning adds."""
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {prefix + k: v for k, v in model_sd.items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/mAP'}": {"best_model_score": torch.tensor(0.5), "best_k_models": {}}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 3, "_last_lr": [1e-3]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "model": {"encoder": {"name": "vit_base"}}},
        "audiossl": meta,
    }


def classifier_checkpoint(tmp_path, model):
    meta = {"format": 1, "kind": "classifier", **model.config_dict()}
    path = tmp_path / "finetune.ckpt"
    torch.save(lightning_style(model.state_dict(), meta, "model."), path)
    return path


def pretrain_checkpoint(tmp_path, encoder, objective="eat"):
    meta = {"format": 1, "kind": "pretrain", "encoder": encoder.config.to_dict(),
            "front_end": {"target_length": 128, "mean": -5.0, "std": 3.0, "sample_rate": 16000, "num_mel_bins": 128,
                          "frame_length": 25.0, "frame_shift": 10.0}, "objective": objective}
    sd = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    sd.update({f"teacher.{k}": v + 1 for k, v in encoder.state_dict().items()})  # an EMA teacher beside the student
    sd["decoder.proj.weight"] = torch.zeros(4, 4)
    ckpt = lightning_style({}, meta, "")
    ckpt["state_dict"] = sd
    path = tmp_path / "pretrain.ckpt"
    torch.save(ckpt, path)
    return path


def test_export_cli_then_load_model_gives_identical_logits(tmp_path, capsys):
    model = tiny_classifier(multi_label=False)
    ckpt = classifier_checkpoint(tmp_path, model)
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    assert "5 classes" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["audiossl_version"] == audiossl.__version__
    assert cfg["label_names"] == LABELS and cfg["multi_label"] is False and cfg["front_end"]["mean"] == -5.0
    loaded = audiossl.load_model(out)
    x = torch.randn(3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        # front end travels with the model: waveform -> the same input
        wave = torch.randn(2, 16000) * 0.1
        assert torch.equal(loaded.front_end(wave), model.front_end(wave))
    # softmax for single-label models
    probs = dict(loaded.predict(wave[0], top_k=5))
    assert abs(sum(probs.values()) - 1.0) < 1e-5
    # the same model straight from the checkpoint, and load_model on the .ckpt itself
    with torch.no_grad():
        assert torch.equal(classifier_from_checkpoint(ckpt)(x), model(x))
        assert torch.equal(load_model(ckpt)(x), model(x))


def test_pretrain_checkpoint_exports_an_encoder_only_model(tmp_path, capsys):
    enc = _perturb(AudioClassifier(encoder=TINY, head=None, front_end=FRONT).encoder).eval()
    ckpt = pretrain_checkpoint(tmp_path, enc)
    out = tmp_path / "enc"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head"] is None and cfg["label_names"] == [] and cfg["pool"] == "cls"
    model = load_model(out)
    assert not model.has_head
    wave = torch.randn(16000) * 0.1
    emb, frames = model.embed(wave, 16000)
    with torch.no_grad():  # the 1 s clip is padded to the window: padding is masked, its patches are left out
        x, n = model.front_end(wave[None], return_frames=True)
        tokens = enc(x, num_frames=n)
        valid = enc.patch_valid(n, enc.grid_shape(x.shape[1]))[0]
    assert 0 < frames.shape[0] == int(valid.sum()) < valid.numel()
    assert torch.allclose(emb, tokens[0, 0], atol=1e-6) and torch.allclose(frames, tokens[0, 1:][valid], atol=1e-6)
    with pytest.raises(MissingHeadError, match="no classifier head"):
        model.predict(wave)
    with pytest.raises(MissingHeadError, match="no classifier head"):
        model(torch.randn(1, 128, 128))
    capsys.readouterr()
    assert main(["predict", "nothing.wav", "--model", str(out)]) == 1
    assert "no classifier head" in capsys.readouterr().err
    # encoder_from_checkpoint picks the student by default, another copy by prefix
    student, fe = encoder_from_checkpoint(ckpt)
    teacher, _ = encoder_from_checkpoint(ckpt, prefix="teacher")
    assert fe.target_length == 128
    assert torch.equal(student.patch_embed.weight, enc.patch_embed.weight)
    assert torch.equal(teacher.patch_embed.weight, enc.patch_embed.weight + 1)
    # an export directory also serves as an encoder source (fine-tuning from exported / converted weights)
    from_dir, fe_dir = encoder_from_checkpoint(out)
    assert torch.equal(from_dir.blocks[1].mlp.fc2.weight, enc.blocks[1].mlp.fc2.weight) and fe_dir == fe
    # MAE-style objectives pool the patch mean instead of an untrained CLS
    assert load_model(pretrain_checkpoint(tmp_path, enc, objective={"name": "mae"})).pool == "mean"


def test_onnx_export_matches_pytorch_at_two_batch_sizes_and_lengths(tmp_path, capsys):
    import onnxruntime as ort

    model = tiny_classifier()
    ckpt = classifier_checkpoint(tmp_path, model)
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--out", str(out), "--onnx"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "embedding", "frame_embeddings"]
    assert [i.name for i in sess.get_inputs()] == ["fbank", "num_frames"]
    for B, T in ((2, 128), (5, 77)):  # 77 frames: not a whole number of patches, padded inside the graph
        x = torch.randn(B, T, 128)
        n = torch.tensor([T, T // 3, 17, 1, T - 5][:B])  # real frames per row: padding masked in the graph too
        logits, emb, frames = sess.run(None, {"fbank": x.numpy(), "num_frames": n.numpy()})
        with torch.no_grad():
            ref_emb, ref_frames = model.forward_features(x, n)
            ref_logits = model(x, n)
            assert (ref_logits[1:] - model(x)[1:]).abs().max() > 1e-3  # the mask matters for the padded rows
        assert logits.shape == (B, 5) and frames.shape == tuple(ref_frames.shape)
        assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4
        assert np.abs(emb - ref_emb.numpy()).max() <= 1e-4
        assert np.abs(frames - ref_frames.numpy()).max() <= 1e-4
    # exporting leaves eager mode as it was (positions cached by integer grid only)
    assert all(isinstance(k[0], int) for k in model.encoder._sincos_cache)


def test_encoder_only_onnx_has_no_logits(tmp_path):
    from audiossl.hub.export import export_onnx

    model = AudioClassifier(encoder=TINY, head=None, front_end=FRONT).eval()
    report = export_onnx(model, tmp_path / "enc.onnx")
    assert report["outputs"] == ["embedding", "frame_embeddings"] and report["max_abs_diff"] <= 1e-4


def test_checkpoint_errors_are_specific(tmp_path):
    model = tiny_classifier()
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not an audiossl checkpoint.*audiossl convert"):
        read_checkpoint(plain)

    ckpt = torch.load(classifier_checkpoint(tmp_path, model), weights_only=True)
    del ckpt["state_dict"]["model.encoder.blocks.1.mlp.fc2.bias"]
    ckpt["state_dict"]["model.head.extra.weight"] = torch.zeros(1)
    ckpt["state_dict"]["model.head.linear.weight"] = torch.zeros(7, 64)
    with pytest.raises(CheckpointError) as err:
        classifier_from_checkpoint(ckpt)
    msg = str(err.value)
    assert "missing keys (1): encoder.blocks.1.mlp.fc2.bias" in msg
    assert "unexpected keys (1): head.extra.weight" in msg
    assert "head.linear.weight: checkpoint (7, 64) vs model (5, 64)" in msg

    with pytest.raises(CheckpointError, match=r"no weights under 'student\.'.*model\.encoder\."):
        encoder_from_checkpoint(ckpt, prefix="student")
    ckpt["audiossl"]["format"] = 2
    with pytest.raises(CheckpointError, match="format 2"):
        classifier_from_checkpoint(ckpt)

    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "audiossl": {}, "hyper_parameters": NotAWeight()}, pickled)
    with pytest.raises(CheckpointError, match=r"NotAWeight\) that audiossl will not unpickle"):
        read_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    enc_ckpt = pretrain_checkpoint(tmp_path, model.encoder)
    with pytest.raises(CheckpointError, match="pretrain checkpoint .*encoder_from_checkpoint"):
        classifier_from_checkpoint(enc_ckpt)


def test_load_model_errors(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load_model(tmp_path / "nope")
    save_model(tiny_classifier(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ExportError, match="format_version 99"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "head": {**cfg["head"], "num_classes": 6},
                                                            "label_names": LABELS + ["x"]}))
    with pytest.raises(CheckpointError, match=r"head\.linear\.weight: checkpoint \(5, 64\) vs model \(6, 64\)"):
        load_model(tmp_path / "m")
