import math

import pytest
import torch
from torchaudio.compliance import kaldi

from audiossl.frontend.features import FrontEnd, FrontEndConfig, kaldi_fbank, num_frames


def reference(w, sample_rate=16000, num_mel_bins=128, frame_length=25.0, frame_shift=10.0):
    return kaldi.fbank(
        w[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
        num_mel_bins=num_mel_bins, dither=0.0, frame_shift=frame_shift, frame_length=frame_length,
    )


def speech_like(n, sr=16000, seed=0):
    """Harmonic bursts with a moving pitch and formant-ish envelope, plus breath noise and pauses."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    f0 = 120 + 40 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sr
    voiced = sum((1.0 / k) * torch.sin(k * phase) for k in range(1, 12))
    env = (torch.sin(2 * math.pi * 3.1 * t).clamp(min=0)) ** 2
    return 0.3 * voiced * env + 0.01 * torch.randn(n, generator=g)


def signals(n):
    g = torch.Generator().manual_seed(n)
    t = torch.arange(n) / 16000
    return {
        "speech": speech_like(n),
        "noise": 0.5 * torch.randn(n, generator=g),
        "silence": torch.zeros(n),
        "clipped": (3.0 * torch.sin(2 * math.pi * 440 * t)).clamp(-1, 1),
        "dc_offset": 0.4 + 1e-3 * torch.randn(n, generator=g),
    }


@pytest.mark.parametrize("n", [400, 401, 720, 16000, 32037, 160000])
def test_fbank_matches_torchaudio(n):
    sig = signals(n)
    batch = torch.stack(list(sig.values()))
    ours = kaldi_fbank(batch)
    assert ours.shape == (len(sig), num_frames(n), 128)
    for i, (name, w) in enumerate(sig.items()):
        ref = reference(w)
        assert ref.shape == ours[i].shape
        err = (ours[i] - ref).abs().max().item()
        assert err <= 1e-3, f"{name} at {n} samples: max abs diff {err}"


@pytest.mark.parametrize("bins,n_fft,sr,high", [(128, 512, 16000.0, 8000.0), (64, 256, 8000.0, 4000.0),
                                                (80, 1024, 44100.0, 22050.0), (23, 512, 16000.0, 7000.0)])
def test_mel_banks_equal_torchaudio_bit_for_bit(bins, n_fft, sr, high):
    from audiossl.frontend.features import kaldi_mel_banks

    ref, _ = kaldi.get_mel_banks(bins, n_fft, sr, 20.0, 0.0 if high == sr / 2 else high, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks(bins, n_fft, sr, 20.0, high)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)


def test_silence_hits_log_floor():
    out = kaldi_fbank(torch.zeros(2, 4000))
    assert torch.allclose(out, torch.full_like(out, math.log(torch.finfo(torch.float32).eps)))


def test_batch_equals_single_clip_and_is_deterministic():
    x = torch.randn(5, 24000) * 0.2
    batch = kaldi_fbank(x)
    for i in range(5):
        assert torch.equal(batch[i], kaldi_fbank(x[i]))
    assert torch.equal(batch, kaldi_fbank(x))


@pytest.mark.parametrize("sr,bins,fl,fs", [(8000, 64, 25.0, 10.0), (44100, 128, 25.0, 10.0), (16000, 80, 32.0, 12.0)])
def test_other_settings_match(sr, bins, fl, fs):
    x = torch.randn(3, sr) * 0.1
    ours = kaldi_fbank(x, sample_rate=sr, num_mel_bins=bins, frame_length=fl, frame_shift=fs)
    for i in range(3):
        ref = reference(x[i], sr, bins, fl, fs)
        assert (ours[i] - ref).abs().max() <= 1e-3


def test_too_short_gives_no_frames_and_bad_input_errors():
    assert kaldi_fbank(torch.randn(3, 399)).shape == (3, 0, 128)
    with pytest.raises(TypeError):
        kaldi_fbank(torch.zeros(3, 1000, dtype=torch.int16))
    with pytest.raises(ValueError):
        kaldi_fbank(torch.zeros(2, 3, 1000))
    with pytest.raises(ValueError):
        kaldi_fbank(torch.zeros(1000), dither=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    x = torch.randn(4, 32000) * 0.1
    assert (kaldi_fbank(x.cuda()).cpu() - kaldi_fbank(x)).abs().max() <= 1e-3


def test_front_end_pads_at_end_before_normalising():
    fe = FrontEnd(target_length=64, mean=-4.0, std=2.0)
    w = torch.randn(2, 16000 // 4) * 0.1  # 23 frames
    raw = kaldi_fbank(w)
    out = fe(w)
    assert out.shape == (2, 64, 128)
    T = raw.shape[1]
    assert torch.allclose(out[:, :T], (raw + 4.0) / 4.0)
    # the padding is zero in the log-mel domain, normalised like everything else
    assert torch.allclose(out[:, T:], torch.full_like(out[:, T:], (0 + 4.0) / 4.0))


def test_front_end_crops_first_frames_or_randomly():
    fe = FrontEnd(target_length=50)
    w = torch.randn(3, 16000) * 0.1  # 98 frames
    full = fe.normalize(kaldi_fbank(w))
    assert torch.allclose(fe(w), full[:, :50])
    rc = fe(w, random_crop=True)
    assert rc.shape == (3, 50, 128)
    for i in range(3):  # every random crop is a contiguous window of the full features
        match = [s for s in range(0, 49) if torch.allclose(rc[i], full[i, s : s + 50])]
        assert match


def test_front_end_defaults_and_config_round_trip():
    fe = FrontEnd()
    c = fe.config
    assert (c.sample_rate, c.num_mel_bins, c.target_length, c.mean, c.std) == (16000, 128, 1024, -4.268, 4.569)
    assert FrontEndConfig.from_dict(c.to_dict()) == c
    assert fe(torch.zeros(16000 * 10)).shape == (1024, 128)
    with pytest.raises(ValueError, match="unknown front-end settings"):
        FrontEndConfig.from_dict({"sample_rat": 16000})


def test_zero_padded_batches_are_padded_in_the_log_mel_domain():
    """A short clip zero-padded inside a batch gives the same features as the clip alone through the front end."""
    fe = FrontEnd(target_length=200)
    short, full = torch.randn(7000) * 0.1, torch.randn(16000) * 0.1
    batch = torch.stack([torch.nn.functional.pad(short, (0, 16000 - 7000)), full])
    out = fe(batch, num_samples=torch.tensor([7000, 16000]))
    assert torch.allclose(out[0], fe(short), atol=1e-6)  # alone: padded with log-mel zeros, then normalised
    assert torch.allclose(out[1], fe(full), atol=1e-6)
    padded_value = (0.0 - fe.config.mean) / (2 * fe.config.std)
    assert torch.allclose(out[0, 60:], torch.full_like(out[0, 60:], padded_value))  # 7000 samples = 42 frames
    silence = fe(batch)[0, 60:98]  # without the lengths the padded samples are digital silence: the log floor
    assert silence.max() < -1.0


# --- the BEATs front end: povey window, waveform x 2**15 ------------------------------------------------------------
@pytest.mark.parametrize("n", [400, 16000, 32037, 160000])
def test_povey_window_and_int16_scale_match_torchaudio(n):
    """BEATs' call: ``kaldi.fbank(w * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25,
    frame_shift=10)``, every other setting a torchaudio default (povey window, htk_compat False)."""
    sig = signals(n)
    batch = torch.stack(list(sig.values())) * 2**15
    ours = kaldi_fbank(batch, window_type="povey")
    for i, (name, w) in enumerate(sig.items()):
        ref = kaldi.fbank((w * 2**15)[None], num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)
        err = (ours[i] - ref).abs().max().item()
        assert err <= 1e-3, f"{name} at {n} samples: max abs diff {err}"
    # the window is torchaudio's to the last bit, and it changes the numbers (povey is not hanning)
    assert torch.equal(torch.hann_window(400, periodic=False).pow(0.85),
                       kaldi._feature_window_function("povey", 400, 0.42, torch.device("cpu"), torch.float32))
    if n >= 16000:
        assert (ours - kaldi_fbank(batch)).abs().max() > 0.01


def test_beats_front_end_config_scales_and_windows():
    from audiossl.frontend.features import BEATS_MEAN, BEATS_STD

    fe = FrontEnd(window_type="povey", waveform_scale=32768.0, mean=BEATS_MEAN, std=BEATS_STD, target_length=1000)
    w = speech_like(160000)
    ref = kaldi.fbank((w * 2**15)[None], num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)
    ref = (ref - 15.41663) / (2 * 6.55582)  # BEATs.preprocess
    out = fe(w)
    assert ref.shape[0] == 998 and (out[:998] - ref).abs().max() < 1e-4
    assert FrontEndConfig.from_dict(fe.config.to_dict()) == fe.config
    with pytest.raises(ValueError, match="window_type must be one of"):
        FrontEnd(window_type="hamming")
    with pytest.raises(ValueError, match="window_type must be one of"):
        kaldi_fbank(w, window_type="blackman")
