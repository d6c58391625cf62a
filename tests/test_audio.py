import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from audiossl.frontend.audio import AudioDecodeError, encode_flac, load, load_with_rate


def tone(sr, seconds=1.0, freq=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * math.pi * freq * t).astype(np.float32)
    if channels == 2:
        return np.stack([x, 0.5 * x], axis=1)
    return x


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_load_formats_rates_channels(tmp_path, fmt, ext, sr, channels):
    data = tone(sr, channels=channels)
    path = tmp_path / f"x.{ext}"
    sf.write(path, data, sr, format=fmt)
    wave = load(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.shape[0] - 16000) <= 1
    # reference: what the file decodes to, averaged to mono, resampled by torchaudio
    ref, ref_sr = sf.read(path, dtype="float32", always_2d=True)
    ref = torch.from_numpy(ref.mean(axis=1))
    if ref_sr != 16000:
        ref = AF.resample(ref, ref_sr, 16000)
    assert torch.allclose(wave, ref, atol=1e-6)
    if fmt != "OGG":  # lossless: the tone itself survives (mono mix of 1.0 and 0.5 gains for stereo)
        gain = 0.75 if channels == 2 else 1.0
        expect = AF.resample(torch.from_numpy(tone(sr)), sr, 16000) * gain if sr != 16000 else torch.from_numpy(tone(sr)) * gain
        assert (wave[100:-100] - expect[100:-100]).abs().max() < 2e-3


def test_keep_source_rate_and_bytes(tmp_path):
    sf.write(tmp_path / "a.wav", tone(44100), 44100)
    w, sr = load_with_rate(tmp_path / "a.wav", sample_rate=None)
    assert sr == 44100 and w.shape[0] == 44100
    w2 = load((tmp_path / "a.wav").read_bytes(), sample_rate=22050)
    assert w2.shape[0] == 22050


def test_flac_round_trip_is_16bit_exact():
    x = torch.rand(16000) * 1.8 - 0.9
    y = load(encode_flac(x, 16000))
    assert (x - y).abs().max() <= 1.0 / 32768 + 1e-7
    # out-of-range values are clipped, not wrapped
    z = load(encode_flac(torch.tensor([2.0, -2.0] * 100), 16000))
    assert z.max() <= 1.0 and z.min() >= -1.0 and z[0] > 0.99


def _wav_bytes(n=16000):
    buf = io.BytesIO()
    sf.write(buf, tone(16000), 16000, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize(
    "case,content,reason",
    [
        ("empty.wav", b"", "empty"),
        ("text.wav", b"this is not audio " * 20, "not a readable audio file"),
        ("text.mp3", b"ID3 nothing " * 20, "not a readable audio file"),
        ("truncated.wav", _wav_bytes()[:9000], "truncated"),
        ("notes.txt", b"hello", "not an audio format"),
    ],
)
def test_bad_inputs_raise_with_name_and_reason(tmp_path, case, content, reason):
    path = tmp_path / case
    path.write_bytes(content)
    with pytest.raises(AudioDecodeError) as e:
        load(path)
    assert str(path) in str(e.value) and reason in str(e.value)


def test_truncated_flac_and_ogg_and_missing(tmp_path):
    for fmt, ext in (("FLAC", "flac"), ("OGG", "ogg")):
        buf = io.BytesIO()
        sf.write(buf, tone(16000), 16000, format=fmt)
        (tmp_path / f"t.{ext}").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        with pytest.raises(AudioDecodeError):
            load(tmp_path / f"t.{ext}")
    with pytest.raises(AudioDecodeError, match="no such file"):
        load(tmp_path / "missing.wav")
    with pytest.raises(AudioDecodeError, match="empty"):
        load(b"")


def test_wrong_extension_still_decodes_by_content(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(16000), 16000, format="FLAC")
    (tmp_path / "really_flac.wav").write_bytes(buf.getvalue())
    assert load(tmp_path / "really_flac.wav").shape[0] == 16000


@pytest.mark.parametrize("src,dst", [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 16000), (16000, 44100),
                                     (32000, 16000), (11025, 16000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resample_equals_torchaudio(src, dst, dtype):
    from audiossl.frontend.audio import resample

    g = torch.Generator().manual_seed(src)
    x = torch.randn(2, 3, src // 3 + 11, generator=g, dtype=dtype)  # batched, odd length
    ours, ref = resample(x, src, dst), AF.resample(x, src, dst)
    assert ours.shape == ref.shape and ours.dtype == dtype
    assert torch.equal(ours, ref), (ours - ref).abs().max()


def test_resample_bad_rates():
    from audiossl.frontend.audio import resample

    with pytest.raises(ValueError):
        resample(torch.zeros(100), 44100.5, 16000)
    with pytest.raises(ValueError):
        resample(torch.zeros(100), 0, 16000)
    with pytest.raises(TypeError):
        resample(torch.zeros(100, dtype=torch.int16), 8000, 16000)
    x = torch.randn(50)
    assert resample(x, 16000, 16000) is x


def test_runtime_does_not_import_torchaudio(tmp_path):
    """Decoding with resampling, the front end and a model forward never load torchaudio's compiled library."""
    import subprocess
    import sys

    sf.write(tmp_path / "a.wav", tone(44100), 44100)
    code = (
        "import sys, torch\n"
        "from audiossl.frontend.audio import load\n"
        "from audiossl.frontend.features import FrontEnd\n"
        "from audiossl.models.classifier import AudioClassifier\n"
        f"w = load({str(tmp_path / 'a.wav')!r})\n"
        "m = AudioClassifier({'name': 'vit_tiny', 'depth': 1}, {'num_classes': 3}, {'target_length': 128})\n"
        "m(m.front_end(w[None]))\n"
        "assert 'torchaudio' not in sys.modules, sorted(k for k in sys.modules if 'torchaudio' in k)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
