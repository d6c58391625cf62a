"""``data_prep.speech`` (``audiossl prep speech``): the espeak-ng spoken-digit benchmark, built as a small slice."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep import speech
from data_prep.speech import Settings, ToolMissingError, build, trim_silence

HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="needs the Debian packages espeak-ng and sox "
                                 "(apt-get install espeak-ng sox)")

WORDS = ("zero", "one", "seven")
SLICE = Settings(words=WORDS, train_voices=3, eval_voices=2, takes=2, eval_takes=3, seed=5)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "build.json"}


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory) -> Path:
    if not HAVE_TOOLS:
        pytest.skip("needs the Debian packages espeak-ng and sox (apt-get install espeak-ng sox)")
    out = tmp_path_factory.mktemp("speech") / "bench"
    build(out, SLICE, workers=2, progress=False)
    return out


@needs_tools
def test_slice_durations_format_and_trimmed_silence(slice_dir):
    meta = _rows(slice_dir / "metadata.csv")
    assert len(meta) == 3 * 3 * 2 + 2 * 3 * 3  # train voices x words x takes + eval voices x words x eval takes
    for r in meta:
        wave, rate = sf.read(slice_dir / r["path"], dtype="float32", always_2d=True)
        info = sf.info(slice_dir / r["path"])
        assert rate == 16000 and wave.shape[1] == 1 and info.subtype == "PCM_16"
        dur = len(wave) / rate
        assert 0.1 <= dur <= 1.0, (r["path"], dur)
        assert abs(dur - float(r["duration_s"])) < 1e-3
        assert 0 < np.abs(wave).max() <= 1.0
        if not r["noise"] and not r["reverb"]:  # clean takes: speech within 20 ms of both ends
            x = wave[:, 0].astype(np.float64)
            frames = x[: len(x) // 160 * 160].reshape(-1, 160)
            db = 10 * np.log10((frames**2).mean(1) + 1e-20)
            loud = db > db.max() - 40
            assert loud[:3].any() and loud[-3:].any(), r["path"]


@needs_tools
def test_slice_leave_voices_out_and_balance(slice_dir):
    meta = _rows(slice_dir / "metadata.csv")
    voices = {s: {r["voice"] for r in meta if r["split"] == s} for s in ("train", "eval")}
    variants = {s: {r["variant"] for r in meta if r["split"] == s} for s in ("train", "eval")}
    assert len(voices["train"]) == 3 and len(voices["eval"]) == 2
    assert not voices["train"] & voices["eval"] and not variants["train"] & variants["eval"]
    for r in meta:  # the clip's folder is its voice
        assert Path(r["path"]).parent.name == r["voice"]
    counts = Counter((r["split"], r["voice"], r["label"]) for r in meta)
    assert set(counts.values()) == {2, 3}
    assert all(n == (2 if split == "train" else 3) for (split, _, _), n in counts.items())
    assert len(counts) == (3 + 2) * len(WORDS)
    # clips.csv: the prep folder format, the same clips as the metadata
    rows = _rows(slice_dir / "clips.csv")
    assert list(rows[0]) == ["path", "labels", "split"]
    assert [(r["path"], r["labels"], r["split"]) for r in rows] == [(r["path"], r["label"], r["split"]) for r in meta]
    build_info = json.loads((slice_dir / "build.json").read_text())
    assert build_info["counts"] == {"train": 18, "eval": 18}
    assert "espeak-ng" in build_info["tools"] and build_info["settings"]["words"] == list(WORDS)


@needs_tools
def test_slice_shuffled_csv_order_is_not_class_sorted(slice_dir):
    labels = [r["labels"] for r in _rows(slice_dir / "clips.csv")]
    runs = sum(a != b for a, b in zip(labels, labels[1:]))  # label changes along the file
    assert runs > len(labels) // 3  # a class-sorted file would change label len(WORDS) - 1 times


@needs_tools
def test_deterministic_whatever_the_workers_and_class_order(slice_dir, tmp_path):
    again = tmp_path / "again"
    build(again, SLICE, csv_order="class", workers=1, progress=False)
    ours, theirs = _digest(slice_dir), _digest(again)
    audio = {k: v for k, v in ours.items() if k.startswith("audio/")}
    assert len(audio) == 36 and audio == {k: v for k, v in theirs.items() if k.startswith("audio/")}
    # the class-ordered CSV lists the same clips word by word
    rows = _rows(again / "clips.csv")
    assert sorted(map(tuple, (r.values() for r in rows))) == sorted(map(tuple, (r.values() for r in
                                                                               _rows(slice_dir / "clips.csv"))))
    assert [r["labels"] for r in rows] == sorted((r["labels"] for r in rows), key=WORDS.index)
    # another seed: other voices, other audio
    other = tmp_path / "other"
    build(other, Settings(**{**SLICE.__dict__, "seed": 6}), workers=1, progress=False)
    assert not set(_digest(other).values()) & set(audio.values())


@needs_tools
def test_cli_builds_and_converts_with_prep_folder(tmp_path, capsys):
    from audiossl.cli.main import main
    from audiossl.data.manifest import read_manifest

    out, shards = tmp_path / "bench", tmp_path / "shards"
    assert main(["prep", "speech", "--out", str(out), "--words", "two,three", "--train-voices", "2",
                 "--eval-voices", "1", "--takes", "1", "--eval-takes", "2", "--channel-prob", "1", "--quiet",
                 "--workers", "1", "--shards", str(shards)]) == 0
    assert "4 training clips (2 voices), 4 evaluation clips (1 held-out voices)" in capsys.readouterr().out
    m = read_manifest(shards)
    assert list(m.labels.names) == ["three", "two"] and not m.multi_label
    assert m.split("train").samples == 4 and m.split("eval").samples == 4
    meta = _rows(out / "metadata.csv")
    assert all(r["channel"].startswith("highpass") for r in meta)  # every voice through a microphone


def test_trim_silence_cuts_both_ends_and_keeps_a_margin():
    rate = 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(0.2 * rate)) / rate)
    wave = np.concatenate([np.zeros(int(0.3 * rate)), tone, 1e-4 * np.ones(int(0.25 * rate))]).astype(np.float32)
    out = trim_silence(wave)
    assert len(out) == len(tone) + 2 * 160  # one 10 ms frame of margin each side
    assert np.allclose(out[160:-160], tone.astype(np.float32))


def test_missing_tools_name_the_packages(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None if name == "espeak-ng" else "/usr/bin/" + name)
    with pytest.raises(ToolMissingError, match="apt-get install espeak-ng sox"):
        build(tmp_path / "x", SLICE, progress=False)
    assert speech.main(["--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "needs espeak-ng on the PATH" in err and "apt-get install espeak-ng sox" in err
    assert not (tmp_path / "y").exists()


def test_bad_settings_are_clear_errors(tmp_path):
    from audiossl.errors import UserError

    for bad, msg in ((Settings(train_voices=60, eval_voices=30), "distinct espeak-ng variants"),
                     (Settings(words=("one", "one")), "distinct"),
                     (Settings(noise_prob=1.5), "probability"),
                     (Settings(snr_db=(20.0, 10.0)), "bad range")):
        with pytest.raises(UserError, match=msg):
            build(tmp_path / "bad", bad, progress=False)
    assert not (tmp_path / "bad").exists()
