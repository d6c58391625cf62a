"""A spoken-word benchmark built from scratch with ``espeak-ng`` and ``sox`` (``audiossl prep speech``).

No generator of ours writes these sounds: a formant speech synthesiser says short English words (by default the
ten digits ``zero`` ... ``nine``) in many voices, and the model must recognise the word in voices it never heard.

* **Voices.** A voice is an English accent of espeak-ng (``en-us``, ``en-gb``, ``en-gb-scotland``, ...) with a voice
  variant (``+m1`` .. ``+m8``, ``+f1`` .. ``+f5`` and some fifty named variants that change formants, pitch range,
  breathiness, the Klatt synthesiser, ...), its own base speed (words per minute) and pitch and, with
  ``--channel-prob``, its own "microphone" (a high-pass, a low-pass and two peaking EQ bands, as sox effects). The
  variants are dealt out by the seed: the evaluation voices use variants that no training voice uses
  (**leave-voices-out**).
* **Takes.** Every voice says every word ``--takes`` times (``--eval-takes`` for evaluation voices), each take with
  its own speed and pitch jitter and level, and optionally additive noise (white, pink or brown, at a seeded SNR)
  and a sox reverb.
* **Audio.** 16 kHz mono 16-bit WAV, leading and trailing silence trimmed (10 ms frames more than 40 dB below the
  loudest frame), so durations are natural: about 0.15-0.9 s at the default speeds.

Output ``OUT/``::

    audio/<voice>/<word>_<take>.wav
    clips.csv       path,labels,split     -> audiossl prep folder --csv OUT/clips.csv --audio-root OUT --out DIR
    metadata.csv    path,label,split,voice,accent,variant,speed_wpm,pitch,gain_db,noise,snr_db,reverb,channel,
                    duration_s (one row per clip, the order of clips.csv; prep folder takes no extra columns)
    build.json      the settings, the espeak-ng and sox versions, the voices of each split

``clips.csv`` is written in a seeded shuffled order (``--csv-order class`` lists it word by word instead, as a
folder sorted by class would be). Every take is drawn from ``(seed, voice, word, take)`` alone, so the audio is the
same whatever ``--workers``; byte-identical across machines given the same espeak-ng and sox versions.

Defaults, sized like a small real corpus (a few speakers, many takes each, unseen speakers for evaluation): 10
training voices x 10 words x 20 takes = 2,000 training clips, 8 evaluation voices x 10 words x 5 takes = 400
evaluation clips; every voice with its own microphone; half the takes with noise at 10-30 dB SNR, a quarter with
reverb. On it a logistic regression of the mean log-mel reaches about 0.72 accuracy, one that also sees simple time
statistics about 0.94 (``benchmarks/speech_calibrate.py``). ``--shards DIR`` runs ``prep folder`` on the result.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audiossl.data.storage import output_dir
from audiossl.errors import UserError

SAMPLE_RATE = 16000
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's English voices that need no extra package (the mbrola voices do).
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
# Variants that sound like a person (robotic, demonic, croaking and speed-test variants are left out).
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Henrique", "Hugo", "Jacky", "Lee",
    "Mario", "Michael", "Mike", "Nguyen", "Storm", "Tweaky", "adam", "anika", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "ed", "edward", "grandma", "grandpa", "gustave", "iven", "john",
    "kaukovalta", "klatt", "klatt2", "klatt3", "linda", "marcelo", "max", "michel", "miguel", "norbert", "pablo",
    "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "travis", "victor", "whisperf", "zac",
)
SPLITS = ("train", "eval")
NOISES = ("white", "pink", "brown")
_TRIM_DB = 40.0  # a 10 ms frame this far below the loudest frame is silence
_FRAME = SAMPLE_RATE // 100
_INSTALL = "install them with: apt-get install espeak-ng sox (Debian/Ubuntu), brew install espeak-ng sox (macOS)"


class ToolMissingError(UserError, FileNotFoundError):
    """espeak-ng or sox is not installed."""


def require_tools() -> dict[str, str]:
    """``{"espeak-ng": version, "sox": version}``; a ``ToolMissingError`` saying how to install what is missing."""
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise ToolMissingError(f"the speech benchmark needs {' and '.join(missing)} on the PATH; {_INSTALL}")
    versions = {}
    for tool, flag in (("espeak-ng", "--version"), ("sox", "--version")):
        out = subprocess.run([tool, flag], capture_output=True, text=True).stdout.strip()
        versions[tool] = out.splitlines()[0] if out else "unknown"
    return versions


# --- the plan: voices and takes, all drawn from the seed ---------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Everything that decides the audio (saved in ``build.json``)."""

    words: tuple[str, ...] = DIGITS
    train_voices: int = 10
    eval_voices: int = 8
    takes: int = 20  # takes of every word per training voice
    eval_takes: int = 5  # ... per evaluation voice
    seed: int = 0
    speed_wpm: tuple[float, float] = (130.0, 230.0)  # range of a voice's base speed (log-uniform)
    pitch: tuple[float, float] = (25.0, 75.0)  # range of a voice's base pitch (espeak-ng 0-99)
    channel_prob: float = 1.0  # share of voices recorded through a coloured "microphone" (band limits + EQ)
    noise_prob: float = 0.5  # share of takes with additive noise
    snr_db: tuple[float, float] = (10.0, 30.0)
    reverb_prob: float = 0.25  # share of takes with sox reverb

    def check(self) -> None:
        w = self.words
        if not w or len(set(w)) != len(w) or any(not x.isalpha() for x in w):
            raise UserError(f"words must be distinct, alphabetic and at least one: {list(w)}")
        if self.train_voices < 1 or self.eval_voices < 0:
            raise UserError(f"need at least 1 training voice and 0 or more evaluation voices, got "
                            f"{self.train_voices}, {self.eval_voices}")
        if self.train_voices + self.eval_voices > len(VARIANTS):
            raise UserError(f"{self.train_voices + self.eval_voices} voices asked for, but there are only "
                            f"{len(VARIANTS)} distinct espeak-ng variants (each voice has its own, so evaluation "
                            "voices never share one with training voices)")
        if self.takes < 1 or self.eval_takes < 1:
            raise UserError(f"--takes and --eval-takes must be >= 1, got {self.takes}, {self.eval_takes}")
        for name in ("channel_prob", "noise_prob", "reverb_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"--{name.replace('_', '-')} is a probability in [0, 1], got {getattr(self, name)}")
        for name, lo_ok in (("snr_db", -30), ("speed_wpm", 80), ("pitch", 0)):
            lo, hi = getattr(self, name)
            if lo > hi or lo < lo_ok or (name == "speed_wpm" and hi > 450) or (name == "pitch" and hi > 99):
                raise UserError(f"--{name.replace('_', '-')} LOW HIGH: bad range {lo} {hi}")


@dataclass(frozen=True)
class Voice:
    name: str  # e.g. v07_en-gb-scotland_f2
    split: str
    accent: str
    variant: str
    speed_wpm: float  # base speed
    pitch: float  # base pitch (espeak-ng 0-99)
    channel: tuple[str, ...] = ()  # sox effects of this voice's "microphone" (empty: flat)


@dataclass(frozen=True)
class Take:
    path: str  # relative to OUT
    word: str
    split: str
    voice: Voice
    speed_wpm: int
    pitch: int
    gain_db: float  # peak level after trimming, dB below full scale (negative)
    noise: str  # "" or one of NOISES
    snr_db: float | None
    reverb: tuple[int, int, int] | None  # sox reverb (reverberance %, HF damping %, room scale %)
    seed: int  # seeds this take's noise


def _rng(*parts) -> np.random.Generator:
    """A generator seeded by a stable hash of ``parts`` (independent of process, order and Python's hash seed)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _channel(rng: np.random.Generator) -> tuple[str, ...]:
    """A coloured recording chain as sox effects: a high-pass, a low-pass and two peaking EQ bands."""
    hp = int(np.exp(rng.uniform(np.log(80), np.log(500))))
    lp = int(np.exp(rng.uniform(np.log(2500), np.log(7500))))
    fx = ["highpass", str(hp), "lowpass", str(lp)]
    for _ in range(2):
        f = int(np.exp(rng.uniform(np.log(300), np.log(5000))))
        fx += ["equalizer", str(f), "1.0o", f"{rng.uniform(-12, 12):.1f}"]
    return tuple(fx)


def plan_voices(s: Settings) -> list[Voice]:
    """Deal ``eval_voices + train_voices`` distinct variants (evaluation first), each with an accent, speed, pitch
    and (with ``channel_prob``) a microphone."""
    rng = _rng("voices", s.seed)
    n = s.train_voices + s.eval_voices
    variants = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))[:n]]
    voices = []
    for i, variant in enumerate(variants):
        r = _rng("voice", s.seed, i)
        accent = ACCENTS[int(r.integers(len(ACCENTS)))]
        speed = float(np.exp(r.uniform(np.log(s.speed_wpm[0]), np.log(s.speed_wpm[1]))))
        pitch = float(r.uniform(*s.pitch))
        channel = _channel(r) if r.uniform() < s.channel_prob else ()
        voices.append(Voice(f"v{i:02d}_{accent}_{variant}", "eval" if i < s.eval_voices else "train", accent,
                            variant, speed, pitch, channel))
    return voices


def plan_takes(voices: list[Voice], s: Settings) -> list[Take]:
    out = []
    for v in voices:
        for word in s.words:
            for k in range(s.eval_takes if v.split == "eval" else s.takes):
                r = _rng("take", s.seed, v.name, word, k)
                speed = int(round(np.clip(v.speed_wpm * r.uniform(0.85, 1.15), 80, 450)))
                pitch = int(round(np.clip(v.pitch + r.uniform(-8, 8), 0, 99)))
                gain = float(r.uniform(-20.0, -1.0))
                noisy = r.uniform() < s.noise_prob
                noise = NOISES[int(r.integers(len(NOISES)))] if noisy else ""
                snr = float(r.uniform(*s.snr_db)) if noisy else None
                reverb = ((int(r.integers(20, 80)), int(r.integers(20, 80)), int(r.integers(20, 100)))
                          if r.uniform() < s.reverb_prob else None)
                out.append(Take(f"audio/{v.name}/{word}_{k}.wav", word, v.split, v, speed, pitch, round(gain, 2),
                                noise, None if snr is None else round(snr, 2), reverb, int(r.integers(2**31))))
    return out


# --- rendering one take ------------------------------------------------------------------------------------------
def synthesise(word: str, accent: str, variant: str, speed_wpm: int, pitch: int,
               reverb: tuple[int, int, int] | None = None, channel: tuple[str, ...] = ()) -> np.ndarray:
    """espeak-ng -> sox (16 kHz mono float, optional channel effects and reverb) -> float32 ``[N]``, silence not
    yet trimmed."""
    esp = subprocess.run(["espeak-ng", "-v", f"{accent}+{variant}", "-s", str(speed_wpm), "-p", str(pitch),
                          "--stdout", word], capture_output=True)
    if esp.returncode != 0 or len(esp.stdout) <= 44:
        raise RuntimeError(f"espeak-ng -v {accent}+{variant} failed: {esp.stderr.decode(errors='replace').strip()}")
    # -R: repeatable; -D: no dither (float output anyway). Reverb: espeak-ng's own trailing silence is cut first and
    # 0.2 s of room appended, so the tail (cut where the padding ends) adds at most 0.2 s to the word.
    effects = ["rate", "-v", str(SAMPLE_RATE), *channel]
    if reverb is not None:
        cut = ["silence", "1", "0.01", "-45d"]
        effects += [*cut, "reverse", *cut, "reverse", "pad", "0", "0.2", "reverb", *(str(x) for x in reverb)]
    proc = subprocess.run(["sox", "-R", "-D", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32",
                           "-c", "1", "-", *effects], input=esp.stdout, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sox failed: {proc.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def trim_silence(wave: np.ndarray, floor_db: float = _TRIM_DB, margin_frames: int = 1) -> np.ndarray:
    """Cut leading/trailing 10 ms frames whose energy is ``floor_db`` below the loudest frame (keeping a margin)."""
    n = len(wave) // _FRAME
    if n == 0:
        return wave
    energy = (wave[: n * _FRAME].astype(np.float64).reshape(n, _FRAME) ** 2).mean(1)  # [n]
    db = 10 * np.log10(energy + 1e-20)
    loud = np.flatnonzero(db > db.max() - floor_db)
    first = max(0, loud[0] - margin_frames)
    last = min(n, loud[-1] + 1 + margin_frames)
    return wave[first * _FRAME : last * _FRAME if last < n else len(wave)]


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise ``[n]``, unit RMS."""
    white = rng.standard_normal(n)
    if colour != "white":
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        f[0] = f[1] if n > 1 else 1.0
        spec = spec / (f ** (0.5 if colour == "pink" else 1.0))
        white = np.fft.irfft(spec, n)
    return white / (np.sqrt(np.mean(white**2)) + 1e-12)


def render_take(take: Take) -> np.ndarray:
    """The take's final float32 waveform ``[N]`` at 16 kHz in [-1, 1]."""
    v = take.voice
    wave = trim_silence(synthesise(take.word, v.accent, v.variant, take.speed_wpm, take.pitch, take.reverb,
                                     v.channel))
    peak = float(np.abs(wave).max())
    if peak <= 0:
        raise RuntimeError(f"espeak-ng said nothing for {take.word!r} in voice {v.name}")
    wave = wave / peak * 10 ** (take.gain_db / 20)
    if take.noise:
        rms = np.sqrt(np.mean(wave.astype(np.float64) ** 2))
        noise = coloured_noise(np.random.default_rng(take.seed), len(wave), take.noise)
        wave = wave + noise * rms * 10 ** (-take.snr_db / 20)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _write_take(args: tuple[Take, str]) -> tuple[str, float]:
    import soundfile as sf

    take, out = args
    wave = render_take(take)
    path = Path(out) / take.path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
    return take.path, len(wave) / SAMPLE_RATE


# --- the whole benchmark -----------------------------------------------------------------------------------------
@dataclass
class BuildReport:
    out: Path
    csv: Path
    metadata: Path
    counts: dict[str, int]
    voices: dict[str, list[str]]
    durations: dict[str, float]  # min / median / max seconds
    seconds: float


def build(out: str | Path, settings: Settings | None = None, csv_order: str = "shuffled", workers: int = 2,
          progress: bool = True) -> BuildReport:
    """Synthesise the benchmark into ``out`` (see the module docstring); returns what was written."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    s = settings or Settings()
    s.check()
    versions = require_tools()
    if csv_order not in ("shuffled", "class"):
        raise UserError(f"--csv-order is 'shuffled' or 'class', got {csv_order!r}")
    root = output_dir(out)
    voices = plan_voices(s)
    plan = plan_takes(voices, s)
    if (root / "audio").is_dir():  # a re-run overwrites: no take of an earlier, larger build stays behind
        shutil.rmtree(root / "audio")
    jobs = [(t, str(root)) for t in plan]
    durations: dict[str, float] = {}
    bar = tqdm(total=len(jobs), unit="clip", desc=f"speaking {root.name}", disable=not progress, smoothing=0.05)
    try:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for path, dur in pool.imap_unordered(_write_take, jobs, chunksize=8):
                    durations[path] = dur
                    bar.update(1)
        else:
            for job in jobs:
                path, dur = _write_take(job)
                durations[path] = dur
                bar.update(1)
    finally:
        bar.close()

    order = list(range(len(plan)))
    if csv_order == "shuffled":
        order = [int(i) for i in _rng("csv-order", s.seed).permutation(len(plan))]
    else:  # word by word (as a folder sorted by class lists it), training clips first
        order.sort(key=lambda i: (s.words.index(plan[i].word), SPLITS.index(plan[i].split), i))
    csv_path, meta_path = root / "clips.csv", root / "metadata.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "split"])
        w.writerows([plan[i].path, plan[i].word, plan[i].split] for i in order)
    with open(meta_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "voice", "accent", "variant", "speed_wpm", "pitch", "gain_db", "noise",
                    "snr_db", "reverb", "channel", "duration_s"])
        for i in order:
            t = plan[i]
            w.writerow([t.path, t.word, t.split, t.voice.name, t.voice.accent, t.voice.variant, t.speed_wpm, t.pitch,
                        t.gain_db, t.noise, "" if t.snr_db is None else t.snr_db,
                        "" if t.reverb is None else " ".join(map(str, t.reverb)), " ".join(t.voice.channel),
                        f"{durations[t.path]:.4f}"])
    d = np.array(list(durations.values()))
    report = BuildReport(
        out=root, csv=csv_path, metadata=meta_path,
        counts={sp: sum(t.split == sp for t in plan) for sp in SPLITS},
        voices={sp: [v.name for v in voices if v.split == sp] for sp in SPLITS},
        durations={"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max())},
        seconds=time.perf_counter() - t0,
    )
    (root / "build.json").write_text(json.dumps({
        "settings": {**asdict(s), "csv_order": csv_order, "sample_rate": SAMPLE_RATE}, "tools": versions,
        "counts": report.counts, "durations_s": report.durations, "voices": [asdict(v) for v in voices],
        "build_seconds": round(report.seconds, 1),
    }, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(prog="audiossl prep speech", description=__doc__.split("\n\n")[0],
                                epilog="then: audiossl prep folder --csv OUT/clips.csv --audio-root OUT --out DIR "
                                       "(or pass --shards DIR)")
    p.add_argument("--out", required=True, help="folder for audio/, clips.csv, metadata.csv, build.json")
    p.add_argument("--words", default=",".join(d.words), help="comma-separated words, one class each (default digits)")
    p.add_argument("--train-voices", type=int, default=d.train_voices,
                   help=f"training voices (default {d.train_voices})")
    p.add_argument("--eval-voices", type=int, default=d.eval_voices,
                   help=f"held-out evaluation voices (default {d.eval_voices})")
    p.add_argument("--takes", type=int, default=d.takes, help=f"takes of each word per training voice ({d.takes})")
    p.add_argument("--eval-takes", type=int, default=d.eval_takes,
                   help=f"takes of each word per evaluation voice ({d.eval_takes})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--speed-wpm", type=float, nargs=2, default=d.speed_wpm, metavar=("LOW", "HIGH"),
                   help="range of the voices' base speeds in words per minute (default %(default)s)")
    p.add_argument("--pitch", type=float, nargs=2, default=d.pitch, metavar=("LOW", "HIGH"),
                   help="range of the voices' base pitch, espeak-ng 0-99 (default %(default)s)")
    p.add_argument("--channel-prob", type=float, default=d.channel_prob,
                   help="share of voices heard through a coloured microphone: band limits + EQ (default %(default)s)")
    p.add_argument("--noise-prob", type=float, default=d.noise_prob,
                   help="share of takes with additive noise (default %(default)s)")
    p.add_argument("--snr-db", type=float, nargs=2, default=d.snr_db, metavar=("LOW", "HIGH"),
                   help="SNR range of the noisy takes in dB (default %(default)s)")
    p.add_argument("--reverb-prob", type=float, default=d.reverb_prob,
                   help="share of takes with sox reverb (default %(default)s)")
    p.add_argument("--csv-order", choices=("shuffled", "class"), default="shuffled",
                   help="row order of clips.csv: seeded shuffle (default) or word by word")
    p.add_argument("--workers", type=int, default=2, help="synthesis processes (default 2)")
    p.add_argument("--shards", default=None, metavar="DIR", help="then convert to shards with prep folder into DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    settings = Settings(words=tuple(w.strip() for w in a.words.split(",") if w.strip()), train_voices=a.train_voices,
                        eval_voices=a.eval_voices, takes=a.takes, eval_takes=a.eval_takes, seed=a.seed,
                        speed_wpm=tuple(a.speed_wpm), pitch=tuple(a.pitch), channel_prob=a.channel_prob,
                        noise_prob=a.noise_prob, snr_db=tuple(a.snr_db), reverb_prob=a.reverb_prob)
    try:
        r = build(a.out, settings, a.csv_order, a.workers, not a.quiet)
    except UserError as e:
        print(f"audiossl prep speech: error: {e}", file=sys.stderr)
        return 1
    print(f"speech benchmark in {r.out}: {r.counts['train']} training clips ({len(r.voices['train'])} voices), "
          f"{r.counts['eval']} evaluation clips ({len(r.voices['eval'])} held-out voices); durations "
          f"{r.durations['min']:.2f}-{r.durations['max']:.2f} s (median {r.durations['median']:.2f}); "
          f"{r.seconds:.0f} s")
    if a.shards:
        from audiossl.data.writer import WriterOptions
        from data_prep import report_bad_input
        from data_prep.folder import convert

        return report_bad_input("speech", lambda: convert(str(r.csv), str(r.out), a.shards, options=WriterOptions(
            workers=max(0, a.workers), progress=not a.quiet)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
