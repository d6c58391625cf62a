"""Plots: PNGs of the requested pixel size with real content; TensorBoard scalars read back exactly."""

import numpy as np
import pytest
import soundfile as sf
from matplotlib.image import imread

from audiossl.cli.main import main
from audiossl.hub.export import save_model
from audiossl.models.classifier import AudioClassifier
from audiossl.cli.plot import plot_training_curves, read_scalars


def _png(path, width, height):
    img = imread(str(path))
    assert img.shape[:2] == (height, width)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05  # not a blank canvas
    assert len(np.unique(np.round(rgb, 2), axis=0)) > 50  # a spectrogram has many colours
    return img


@pytest.fixture
def clip(tmp_path):
    t = np.arange(int(2.5 * 22050)) / 22050
    x = 0.3 * np.sin(2 * np.pi * (400 + 600 * t) * t) + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    path = tmp_path / "chirp.flac"
    sf.write(path, np.stack([x, x], 1).astype(np.float32), 22050)
    return path


def test_mel_plot_has_the_requested_size(tmp_path, clip, capsys):
    out = tmp_path / "mel.png"
    assert main(["plot", "mel", str(clip), "--out", str(out), "--width", "640", "--height", "300"]) == 0
    _png(out, 640, 300)
    assert main(["plot", "mel", str(tmp_path / "missing.wav"), "--out", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_predictions_plot(tmp_path, clip):
    model = AudioClassifier(encoder={"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4},
                            head={"num_classes": 4}, front_end={"target_length": 128},
                            label_names=["a", "b", "c", "d"])
    save_model(model, tmp_path / "m")
    out = tmp_path / "pred.png"
    assert main(["plot", "predictions", str(clip), "--model", str(tmp_path / "m"), "--out", str(out),
                 "--width", "700", "--height", "500", "--top-k", "3"]) == 0
    _png(out, 700, 500)


def test_training_curves_from_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "lightning_logs"
    for version, scale in ((0, 1.0), (1, 0.5)):
        w = SummaryWriter(str(logs / f"version_{version}"))
        for step in range(0, 50, 5):
            w.add_scalar("train/loss", scale * 2.0 / (1 + step), step)
            if step % 10 == 0:
                w.add_scalar("val/mAP", scale * step / 100, step)
        w.close()
    runs = read_scalars(logs)
    assert sorted(runs) == ["version_0", "version_1"]
    steps, values = runs["version_1"]["train/loss"]
    assert steps == list(range(0, 50, 5)) and np.allclose(values, [1.0 / (1 + s) for s in steps])
    out = tmp_path / "curves.png"
    assert plot_training_curves(logs, out, tags=["train/*"], width=800, height=400) == ["train/loss"]
    img = imread(str(out))
    assert img.shape[:2] == (400, 800) and img[..., :3].std() > 0.01
    assert plot_training_curves(logs, out) == ["train/loss", "val/mAP"]
    assert imread(str(out)).shape[:2] == (300, 1200)
    with pytest.raises(ValueError, match="available: train/loss, val/mAP"):
        plot_training_curves(logs, out, tags=["lr"])
    assert main(["plot", "curves", str(logs), "--out", str(tmp_path / "c.png"), "--width", "600", "--height", "300"]) == 0
    assert imread(str(tmp_path / "c.png")).shape[:2] == (300, 600)
