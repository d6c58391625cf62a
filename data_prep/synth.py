"""The synthetic demo corpus: procedural sound events, offline, deterministic by seed (``audiossl prep synth``).

16 classes in 4 groups (the ontology stored in the manifest)::

    tonal      tone_low (180-500 Hz), tone_high (1.5-4 kHz), harmonic_stack, vowel (formant-filtered pulse train)
    modulated  chirp_up, chirp_down (exponential sweeps over the same range), am_tone (10-16 Hz tremolo),
               fm_tone (4-8 Hz vibrato)
    noise      white_noise, pink_noise, brown_noise, noise_bursts (white or pink, 30-60 ms bursts)
    rhythmic   clicks_slow (3-6 Hz), clicks_fast (14-25 Hz), knocks (damped two-mode resonances), tone_pips

Several pairs differ only in temporal structure — sweep direction, click rate, tremolo or pips against a steady tone
of the same carrier range, bursts against steady noise of the same colour — so a classifier of each clip's *mean*
log-mel spectrum (:func:`logreg_baseline`) is clearly weaker than a model that sees time.

A clip: a low background (pink or brown noise, or 50/60 Hz hum) plus 1-3 events of distinct classes, at most one of
them broadband (the noise group and the click trains, which would otherwise mask each other), each 30-80 % of the
clip long at a random position, overlapping freely, 12-20 dB above the background per active frame (noise 8-16 dB),
and a random overall level. Targets are the multi-hot set of the event classes. Every event is audible in its
log-mel frames, so labels are exact.

Defaults: 2,000 training + 400 evaluation clips of 2 s at 16 kHz (``--num-clips`` training clips, ``--eval-clips``
default ``num_clips // 5``); each clip is drawn from ``(seed, split, index)``, so the corpus is the same whatever the
number of workers.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass

import numpy as np

from audiossl.data.labels import LabelSpace
from audiossl.data.writer import Clip, WriterOptions, add_writer_args, options_from_args, write_dataset
from data_prep import report_bad_input

SAMPLE_RATE = 16000
GROUPS: dict[str, list[str]] = {
    "tonal": ["tone_low", "tone_high", "harmonic_stack", "vowel"],
    "modulated": ["chirp_up", "chirp_down", "am_tone", "fm_tone"],
    "noise": ["white_noise", "pink_noise", "brown_noise", "noise_bursts"],
    "rhythmic": ["clicks_slow", "clicks_fast", "knocks", "tone_pips"],
}
CLASSES: list[str] = [c for names in GROUPS.values() for c in names]
BROADBAND = {"white_noise", "pink_noise", "brown_noise", "noise_bursts", "clicks_slow", "clicks_fast"}
SPLITS = {"train": 0, "eval": 1}
_FRAME = int(0.025 * SAMPLE_RATE)  # one fbank window: the unit an event's level is measured over


# --- event generators: (rng, n samples) -> (wave [n], active mask [n]) ------------------------------------------
def _t(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _log_uniform(rng, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _carrier(rng) -> float:
    """A carrier drawn from the steady-tone ranges (low or high), so modulated tones share their spectra."""
    return _log_uniform(rng, 180, 500) if rng.random() < 0.5 else _log_uniform(rng, 1500, 4000)


def _coloured_noise(rng, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), nothing below 20 Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    gain = np.zeros_like(f)
    gain[f >= 20] = f[f >= 20] ** (-exponent / 2)
    x = np.fft.irfft(spec * gain, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _gate(n: int, starts, length: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for s in starts:
        mask[int(s) : int(s) + length] = True
    return mask


def _pulse_starts(rng, n: int, period: float, jitter: float = 0.05) -> list[int]:
    starts, t = [], 0.0
    while t < n:
        starts.append(int(t))
        t += period * SAMPLE_RATE * (1 + rng.uniform(-jitter, jitter))
    return starts


def _steady(x: np.ndarray):
    return x, np.ones(len(x), dtype=bool)


def _tone_low(rng, n):
    return _steady(np.sin(2 * np.pi * _log_uniform(rng, 180, 500) * _t(n) + rng.uniform(0, 2 * np.pi)))


def _tone_high(rng, n):
    return _steady(np.sin(2 * np.pi * _log_uniform(rng, 1500, 4000) * _t(n) + rng.uniform(0, 2 * np.pi)))


def _harmonics(rng, n, f0_track: np.ndarray, amps) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(f0_track) / SAMPLE_RATE
    x = np.zeros(n)
    for k, a in enumerate(amps, start=1):
        offset = rng.uniform(0, 2 * np.pi)  # drawn for every harmonic, so skipping silent ones keeps the stream
        if a:
            x += a * np.sin(k * phase + offset)
    return x


def _harmonic_stack(rng, n):
    f0 = _log_uniform(rng, 120, 300)
    count = int(min(rng.integers(8, 16), 7000 // f0))
    return _steady(_harmonics(rng, n, np.full(n, f0), [k**-0.8 for k in range(1, count + 1)]))


_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]


def _vowel(rng, n):
    f0 = _log_uniform(rng, 100, 220)
    formants = _VOWELS[rng.integers(len(_VOWELS))]
    track = f0 * (1 + 0.015 * np.sin(2 * np.pi * rng.uniform(4, 6) * _t(n)))
    count = int(5000 // (f0 * 1.02))
    amps = []
    for k in range(1, count + 1):
        f = k * f0
        resonance = sum(1.0 / (1 + ((f - F) / bw) ** 2) for F, bw in zip(formants, (90, 110, 140)))
        amps.append(resonance / k**0.5)
    amps = [a if a > 0.02 * max(amps) else 0.0 for a in amps]  # harmonics between the formants add nothing audible
    return _steady(_harmonics(rng, n, track, amps))


def _sweep(rng, n, up: bool):
    lo = _log_uniform(rng, 250, 1000)
    hi = lo * rng.uniform(3, 6)
    frac = np.arange(n) / n
    f = lo * (hi / lo) ** (frac if up else 1 - frac)
    return _steady(np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)))


def _chirp_up(rng, n):
    return _sweep(rng, n, True)


def _chirp_down(rng, n):
    return _sweep(rng, n, False)


def _am_tone(rng, n):
    fc, rate, depth = _carrier(rng), rng.uniform(10, 16), rng.uniform(0.85, 1.0)
    env = 1 - depth / 2 * (1 - np.cos(2 * np.pi * rate * _t(n) + rng.uniform(0, 2 * np.pi)))
    return _steady(env * np.sin(2 * np.pi * fc * _t(n)))


def _fm_tone(rng, n):
    fc = _log_uniform(rng, 500, 2500)
    f = fc * (1 + rng.uniform(0.04, 0.08) * np.sin(2 * np.pi * rng.uniform(4, 8) * _t(n)))
    return _steady(np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE))


def _white_noise(rng, n):
    return _steady(_coloured_noise(rng, n, 0.0))


def _pink_noise(rng, n):
    return _steady(_coloured_noise(rng, n, 1.0))


def _brown_noise(rng, n):
    return _steady(_coloured_noise(rng, n, 2.0))


def _noise_bursts(rng, n):
    noise = _coloured_noise(rng, n, 0.0 if rng.random() < 0.5 else 1.0)
    length = int(rng.uniform(0.03, 0.06) * SAMPLE_RATE)
    mask = _gate(n, _pulse_starts(rng, n, rng.uniform(0.12, 0.22), 0.15), length)
    return noise * mask, mask


def _clicks(rng, n, rate_lo: float, rate_hi: float):
    x = np.zeros(n)
    click = rng.standard_normal(int(0.0015 * SAMPLE_RATE)) * np.exp(-np.arange(int(0.0015 * SAMPLE_RATE)) / 8.0)
    starts = _pulse_starts(rng, n, 1 / rng.uniform(rate_lo, rate_hi))
    for s in starts:
        seg = x[s : s + len(click)]
        seg += click[: len(seg)]
    return x, _gate(n, [max(0, s - _FRAME // 2) for s in starts], _FRAME)  # level measured per 25 ms frame


def _clicks_slow(rng, n):
    return _clicks(rng, n, 3, 6)


def _clicks_fast(rng, n):
    return _clicks(rng, n, 14, 25)


def _knocks(rng, n):
    x = np.zeros(n)
    f1 = _log_uniform(rng, 150, 700)
    f2 = f1 * rng.uniform(1.8, 2.7)
    tau = rng.uniform(0.015, 0.04)
    ring = np.arange(int(5 * tau * SAMPLE_RATE)) / SAMPLE_RATE
    knock = np.exp(-ring / tau) * (np.sin(2 * np.pi * f1 * ring) + 0.6 * np.sin(2 * np.pi * f2 * ring))
    knock[:16] += rng.standard_normal(16) * 0.5  # the strike
    starts, t = [], 0
    while t < n:
        starts.append(t)
        t += int(rng.uniform(0.12, 0.35) * SAMPLE_RATE)
    for s in starts:
        seg = x[s : s + len(knock)]
        seg += knock[: len(seg)]
    return x, _gate(n, starts, int(min(0.04, 2 * tau) * SAMPLE_RATE))


def _tone_pips(rng, n):
    fc = _carrier(rng)
    length = int(rng.uniform(0.04, 0.08) * SAMPLE_RATE)
    ramp = np.minimum(1, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.005 * SAMPLE_RATE))
    x = np.zeros(n)
    starts = _pulse_starts(rng, n, rng.uniform(0.18, 0.3))
    tone = np.sin(2 * np.pi * fc * _t(n))
    for s in starts:
        seg = slice(s, min(n, s + length))
        x[seg] = tone[seg] * ramp[: seg.stop - seg.start]
    return x, _gate(n, starts, length)


GENERATORS = {
    "tone_low": _tone_low, "tone_high": _tone_high, "harmonic_stack": _harmonic_stack, "vowel": _vowel,
    "chirp_up": _chirp_up, "chirp_down": _chirp_down, "am_tone": _am_tone, "fm_tone": _fm_tone,
    "white_noise": _white_noise, "pink_noise": _pink_noise, "brown_noise": _brown_noise,
    "noise_bursts": _noise_bursts, "clicks_slow": _clicks_slow, "clicks_fast": _clicks_fast, "knocks": _knocks,
    "tone_pips": _tone_pips,
}  # fmt: skip
assert list(GENERATORS) == CLASSES


# --- clips -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    label: str
    start: int  # samples
    length: int  # samples
    snr_db: float  # active level above the background
    seed: int  # the event's own generator seed


def plan_clip(seed: int, split: str, index: int, clip_seconds: float = 2.0) -> tuple[list[Event], dict]:
    """The events and background of clip ``index`` of ``split`` (pure, cheap: no audio)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    n = int(round(clip_seconds * SAMPLE_RATE))
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    labels: list[str] = []
    while len(labels) < count:
        c = CLASSES[rng.integers(len(CLASSES))]
        if c in labels or (c in BROADBAND and any(x in BROADBAND for x in labels)):
            continue
        labels.append(c)
    events = []
    for label in labels:
        length = int(rng.uniform(0.3, 0.8) * n)
        start = int(rng.integers(0, n - length + 1))
        snr = rng.uniform(8, 16) if label in GROUPS["noise"] else rng.uniform(12, 20)
        events.append(Event(label, start, length, float(snr), int(rng.integers(2**31))))
    background = {
        "kind": ["pink", "brown", "hum"][rng.integers(3)],
        "mains": 50 if rng.random() < 0.5 else 60,
        "peak_db": float(rng.uniform(-20, -1)),
        "seed": int(rng.integers(2**31)),
    }
    return events, background


def _fade(x: np.ndarray, ms: float = 10.0) -> np.ndarray:
    k = min(len(x) // 2, int(ms * SAMPLE_RATE / 1000))
    if k > 0:
        ramp = np.linspace(0, 1, k)
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


def render_clip(seed: int, split: str, index: int, clip_seconds: float = 2.0) -> tuple[np.ndarray, int]:
    """Clip ``index`` of ``split``: ``(float32 wave [clip_seconds * 16000], 16000)``."""
    events, bg = plan_clip(seed, split, index, clip_seconds)
    n = int(round(clip_seconds * SAMPLE_RATE))
    rng = np.random.default_rng(bg["seed"])
    if bg["kind"] == "hum":
        t = _t(n)
        back = sum(a * np.sin(2 * np.pi * k * bg["mains"] * t + rng.uniform(0, 6.3)) for k, a in
                   ((1, 1.0), (2, 0.5), (3, 0.3)))
        back = back / np.sqrt(np.mean(back**2)) + 0.1 * _coloured_noise(rng, n, 1.0)
    else:
        back = _coloured_noise(rng, n, 1.0 if bg["kind"] == "pink" else 2.0)
    back = back / np.sqrt(np.mean(back**2))  # background RMS 1: event levels are relative to it
    mix = back.copy()
    for ev in events:
        x, active = GENERATORS[ev.label](np.random.default_rng(ev.seed), ev.length)
        x = _fade(x / (np.sqrt(np.mean(x[active] ** 2)) + 1e-12))
        mix[ev.start : ev.start + ev.length] += 10 ** (ev.snr_db / 20) * x
    mix *= 10 ** (bg["peak_db"] / 20) / np.max(np.abs(mix))
    return mix.astype(np.float32), SAMPLE_RATE


def clips(seed: int, num_train: int, num_eval: int, clip_seconds: float) -> list[Clip]:
    out = []
    for split, count in (("train", num_train), ("eval", num_eval)):
        for i in range(count):
            events, _ = plan_clip(seed, split, i, clip_seconds)
            idx = sorted(CLASSES.index(e.label) for e in events)
            meta = {
                "id": f"{split}/{i:06d}",
                "labels": [CLASSES[j] for j in idx],
                "label_idx": idx,
                "source": "synth",
                "events": [{"label": e.label, "start": round(e.start / SAMPLE_RATE, 3),
                            "end": round((e.start + e.length) / SAMPLE_RATE, 3), "snr_db": round(e.snr_db, 1)}
                           for e in events],
            }
            render = functools.partial(render_clip, seed, split, i, clip_seconds)
            out.append(Clip(key=f"{split}_{i:06d}", split=split, meta=meta, render=render))
    return out


def convert(out: str, num_clips: int = 2000, eval_clips: int | None = None, seed: int = 0, clip_seconds: float = 2.0,
            options: WriterOptions | None = None):
    """Write the corpus to ``out`` (``num_clips`` training clips, ``eval_clips`` evaluation clips)."""
    if num_clips < 1:
        raise ValueError(f"--num-clips must be >= 1, got {num_clips}")
    if clip_seconds < 0.5:
        raise ValueError(f"--clip-seconds must be >= 0.5, got {clip_seconds}")
    eval_clips = max(1, num_clips // 5) if eval_clips is None else eval_clips
    options = options or WriterOptions()
    if not options.keep_rate and options.sample_rate != SAMPLE_RATE:
        raise ValueError(f"the synthetic corpus is made at {SAMPLE_RATE} Hz; drop --sample-rate")
    return write_dataset(
        out,
        clips(seed, num_clips, eval_clips, clip_seconds),
        labels=LabelSpace.from_names(CLASSES),
        multi_label=True,
        options=options,
        params={"converter": "synth", "seed": seed, "num_clips": num_clips, "eval_clips": eval_clips,
                "clip_seconds": clip_seconds},
        evaluation={"split": "eval", "metric": "mAP"},
        ontology=GROUPS,
    )


# --- how hard is it: a linear model on clip statistics -----------------------------------------------------------
def logreg_baseline(root: str, temporal: bool = False) -> dict:
    """mAP on ``eval`` of logistic regressions on each clip's mean log-mel (``temporal``: plus time statistics),
    trained on ``train``: :func:`audiossl.tasks.logreg_baseline.logreg_baseline`, with its ``mAP`` also as ``map``."""
    from audiossl.tasks.logreg_baseline import logreg_baseline as run

    r = run(root, "train", "eval", temporal)
    return {**r, "map": r["mAP"], "per_class": r["per_class_ap"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl prep synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--num-clips", type=int, default=2000, help="training clips (default 2000)")
    p.add_argument("--eval-clips", type=int, default=None, help="evaluation clips (default num_clips // 5)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed, also of the shuffled sample order (default 0)")
    p.add_argument("--clip-seconds", type=float, default=2.0, help="clip length (default 2.0)")
    p.add_argument("--baseline", action="store_true", help="then print the mean-log-mel logistic-regression mAP")
    p.add_argument("--temporal-baseline", action="store_true",
                   help="then print the mAP with time statistics added to the features (slower; "
                   "with --baseline both are printed)")
    add_writer_args(p, seed=False)  # --seed above seeds the corpus and the order
    args = p.parse_args(argv)
    status = report_bad_input("synth", lambda: convert(args.out, args.num_clips, args.eval_clips, args.seed,
                                                       args.clip_seconds, options_from_args(args)))
    if status:
        return status
    for temporal in [False] * args.baseline + [True] * args.temporal_baseline:
        r = logreg_baseline(args.out, temporal)
        print(f"logistic regression on {r['features']}: eval mAP {r['map']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
