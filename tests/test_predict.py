"""`audiossl predict` and the inference API on real files: rates, stereo, formats, long files, a corrupt file."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from audiossl.cli.main import main
from audiossl.hub.export import export_onnx, load_model, save_model
from audiossl.models.inference import OnnxRunner, TorchRunner, predict_files
from audiossl.models.classifier import AudioClassifier

LABELS = ["dog", "rain", "siren", "speech", "engine", "bird"]
WINDOW = 128  # frames: a 1.28 s model window keeps the 35 s file cheap


def _signal(seconds, rate, channels=1, seed=0):
    """Tones that change every second plus noise, so windows of a long file differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freq = 300 + 200 * np.floor(t) % 3000
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.13 * t)) + 0.05 * rng.standard_normal(t.size)
    if channels == 2:
        x = np.stack([x, 0.5 * np.roll(x, 37) + 0.02 * rng.standard_normal(t.size)], axis=1)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(3)
    model = AudioClassifier(encoder={"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4},
                            head={"num_classes": len(LABELS)}, front_end={"target_length": WINDOW},
                            label_names=LABELS).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_model(model, d / "model")
    export_onnx(model, d / "model" / "model.onnx")
    files = {
        "wav8k": (d / "mono_8k.wav", 1.0, 8000, 1, {}),
        "flac44": (d / "stereo_44k.flac", 1.5, 44100, 2, {}),
        "ogg": (d / "mono_22k.ogg", 1.2, 22050, 1, {"format": "OGG", "subtype": "VORBIS"}),
        "long": (d / "long_35s.wav", 35.0, 16000, 1, {}),
    }
    for i, (name, (path, secs, rate, ch, kw)) in enumerate(files.items()):
        sf.write(path, _signal(secs, rate, ch, seed=i), rate, **kw)
    bad = d / "broken.wav"
    bad.write_text("this is not audio\n" * 20)
    return d, model, {k: v[0] for k, v in files.items()}, bad


def _probs(model, waves):
    """Waveforms [B, N] -> probabilities, through the front end with its padding mask (as training computes them)."""
    with torch.no_grad():
        return torch.sigmoid(model.logits_from_audio(waves))


def _reference(model, path, hop_frames=None, aggregate="max"):
    """Probabilities written without the inference module: read the file with soundfile, average the channels,
    resample with torchaudio, and run the front end on each window's stretch of samples."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.mean(axis=1))
    if rate != 16000:
        wave = AF.resample(wave, rate, 16000)
    n_frames = 1 + (wave.numel() - 400) // 160
    if n_frames <= WINDOW:
        return _probs(model, wave[None])[0]
    starts = list(range(0, n_frames - WINDOW, hop_frames)) + [n_frames - WINDOW]
    chunks = [wave[s * 160 : s * 160 + 400 + (WINDOW - 1) * 160] for s in starts]  # exactly WINDOW frames each
    probs = _probs(model, torch.stack(chunks))
    assert probs.shape[0] == len(starts)
    return probs.max(0).values if aggregate == "max" else probs.mean(0)


def test_predict_cli_json_formats_rates_long_file_and_a_corrupt_one(setup, capsys):
    d, model, files, bad = setup
    order = [files["wav8k"], bad, files["flac44"], files["ogg"], files["long"]]
    rc = main(["predict", *map(str, order), "--model", str(d / "model"), "--top-k", "3", "--json",
               "--batch-size", "4", "--hop", "1.0"])
    out, err = capsys.readouterr()
    assert rc == 1  # one file failed
    assert "broken.wav" in err and "1 of 5 file(s) failed" in err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["file"] for r in lines] == [str(p) for p in order if p != bad]  # the others ran, in order
    for r in lines:
        ref = _reference(model, r["file"], hop_frames=100)
        top = ref.topk(3)
        assert [p["label"] for p in r["predictions"]] == [LABELS[i] for i in top.indices]
        assert np.allclose([p["probability"] for p in r["predictions"]], top.values.numpy(), atol=2e-6)
    long = lines[-1]
    assert long["windows"] == len(range(0, (1 + (35 * 16000 - 400) // 160) - WINDOW, 100)) + 1
    assert abs(long["duration"] - 35.0) < 1e-3
    # aggregation matters: the first window alone does not give the file's maximum
    first = _probs(model, torch.from_numpy(sf.read(str(files["long"]), dtype="float32")[0][None]))[0]
    assert (ref - first).max() > 1e-3  # ref: the long file's, from the loop above


def test_predict_cli_text_output(setup, capsys):
    d, model, files, _ = setup
    assert main(["predict", str(files["wav8k"]), "--model", str(d / "model"), "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(files["wav8k"])) and "1 window" in out[0]
    ref = _reference(model, files["wav8k"])
    label, prob = LABELS[int(ref.argmax())], float(ref.max())
    assert out[1].split() == [f"{prob:.4f}", label] and len(out) == 3


def test_batching_across_files_mean_aggregation_and_onnx(setup):
    d, model, files, bad = setup
    model = load_model(d / "model")
    paths = [files["long"], files["wav8k"], bad, files["ogg"]]
    one = list(predict_files(model, paths, top_k=6, batch_size=1, hop=1.0))
    sizes = []

    class Recorder(TorchRunner):
        def run(self, fbank, want_frames=False, num_frames=None):
            sizes.append(fbank.shape[0])
            return super().run(fbank, want_frames, num_frames)

    many = list(predict_files(model, paths, top_k=6, batch_size=16, hop=1.0, runner=Recorder(model)))
    # windows are packed across files: every batch but the last is full
    assert sum(sizes) == sum(r.windows for r in one) and set(sizes[:-1]) == {16} and sizes[-1] <= 16
    onnx = list(predict_files(model, paths, top_k=6, batch_size=5, hop=1.0, runner=OnnxRunner(d / "model" / "model.onnx")))
    assert one[2].error and "broken.wav" in one[2].error and one[2].windows == 0
    for a, b, c in zip(one, many, onnx):
        if a.error:
            continue
        assert torch.allclose(a.window_probabilities, b.window_probabilities, atol=1e-6)
        assert torch.allclose(a.window_probabilities, c.window_probabilities, atol=1e-4)
    mean = next(predict_files(model, [files["long"]], hop=1.0, aggregate="mean"))
    assert torch.allclose(mean.probabilities, _reference(model, files["long"], 100, aggregate="mean"), atol=1e-5)
    assert (mean.probabilities <= one[0].probabilities + 1e-7).all()


def test_python_api_predict_and_embed(setup):
    d, model, files, _ = setup
    loaded = load_model(d / "model")
    preds = loaded.predict(str(files["flac44"]), top_k=2)
    ref = _reference(model, files["flac44"], hop_frames=WINDOW // 2)  # 1.5 s: two windows at the default hop
    assert [p[0] for p in preds] == [LABELS[i] for i in ref.topk(2).indices]
    # a stereo waveform [2, N] at its own rate gives the same as the file
    data, rate = sf.read(str(files["flac44"]), dtype="float32")
    again = loaded.predict(torch.from_numpy(data.T.copy()), top_k=2, sample_rate=rate)
    assert [p[0] for p in again] == [p[0] for p in preds] and np.allclose([p[1] for p in again], [p[1] for p in preds], atol=1e-6)
    with pytest.raises(Exception, match="broken.wav"):
        loaded.predict(str(setup[3]))
    # embed: one window -> forward_features of the front end (padding masked, its patches left out);
    # 35 s -> back-to-back windows (the padding patches of the last one left out)
    wave = torch.from_numpy(_signal(1.0, 16000))
    emb, frames = loaded.embed(wave, 16000)
    with torch.no_grad():
        x, n = model.front_end(wave[None], return_frames=True)
        ref_emb, ref_frames = model.forward_features(x, n)
        valid = model.encoder.patch_valid(n, model.encoder.grid_shape(WINDOW))[0]
    assert frames.shape[0] == int(valid.sum()) == 7 * 8  # 98 real frames of 128: 7 of 8 time patches
    assert torch.allclose(emb, ref_emb[0], atol=1e-5) and torch.allclose(frames, ref_frames[0][valid], atol=1e-5)
    long_emb, long_frames = loaded.embed(str(files["long"]))
    n_frames = 1 + (35 * 16000 - 400) // 160
    assert long_emb.shape == (64,) and long_frames.shape == (-(-n_frames // 16) * 8, 64)


def test_too_short_and_bad_arguments(setup, capsys):
    d, _, files, _ = setup
    short = d / "short.wav"
    sf.write(short, np.zeros(100, dtype=np.float32), 16000)
    assert main(["predict", str(short), "--model", str(d / "model")]) == 1
    assert "too short" in capsys.readouterr().err
    assert main(["predict", str(files["wav8k"]), "--model", str(d / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
