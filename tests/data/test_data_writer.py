"""The shard writer: round trip, shard sizes, determinism, atomicity under a crash, re-runs."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
from datahelpers import build, make_clips, shard_keys, tone, write_audio

from audiossl import audio
from audiossl.data import writer as writer_mod
from audiossl.data.manifest import read_manifest
from audiossl.data.pipeline import read_shard
from audiossl.data.writer import Clip, safe_key
from audiossl.errors import DatasetError


def test_safe_key_is_tar_safe_and_deterministic():
    assert safe_key("dir/sub.dir/clip.name v2") == "dir_sub_dir_clip_name_v2"
    assert safe_key("--PJHxphWEs_30000") == "--PJHxphWEs_30000"
    with pytest.raises(ValueError):
        safe_key("")


def test_round_trip_audio_labels_and_json(tmp_path):
    src = tmp_path / "src"
    files = {
        "a": write_audio(src / "a.wav", 0.4, 16000, 300.0),
        "b": write_audio(src / "b.wav", 0.3, 44100, 500.0, channels=2),  # resampled and downmixed
    }
    clips = [
        Clip("a", "train", {"id": "a.wav", "labels": ["c1", "c3"], "label_idx": [1, 3], "source": "t", "fold": 2,
                            "start": 1.5, "weight": 0.25}, path=str(files["a"])),
        Clip("b", "train", {"id": "b.wav", "labels": ["c0"], "label_idx": [0], "source": "t"}, path=str(files["b"])),
    ]
    report = build(tmp_path / "ds", clips, multi_label=True)
    assert report.written == {"train": 2} and report.rejected == []
    samples = {key: mem for _, key, mem in read_shard(str(tmp_path / "ds" / "train" / "train-000000.tar"))}
    assert set(samples) == {"a", "b"} and set(samples["a"]) == {"flac", "json"}
    meta = json.loads(samples["a"]["json"])
    assert meta == {"id": "a.wav", "labels": ["c1", "c3"], "label_idx": [1, 3], "source": "t", "fold": 2,
                    "start": 1.5, "weight": 0.25, "duration": 0.4, "sample_rate": 16000}
    info = sf.info(__import__("io").BytesIO(samples["a"]["flac"]))
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("FLAC", "PCM_16", 1, 16000)
    # same audio within 16-bit precision
    original, _ = sf.read(str(files["a"]), dtype="float32")
    decoded = audio.load(samples["a"]["flac"], 16000).numpy()
    assert decoded.shape == original.shape
    assert np.abs(decoded - original).max() <= 1.0 / 32768 + 1e-7
    # the 44.1 kHz stereo file: mono at 16 kHz, the length scaled by the rate ratio
    b = audio.load(samples["b"]["flac"], None)
    assert b.shape[0] == round(0.3 * 16000)
    assert json.loads(samples["b"]["json"])["duration"] == pytest.approx(0.3)
    ref = audio.load(files["b"], 16000).numpy()
    assert np.abs(b.numpy() - ref).max() <= 1.0 / 32768 + 1e-6


def test_keep_rate_keeps_source_rates(tmp_path):
    f1 = write_audio(tmp_path / "x.wav", 0.2, 22050)
    f2 = write_audio(tmp_path / "y.wav", 0.2, 16000)
    clips = [Clip(k, "train", {"id": k, "labels": [], "label_idx": [], "source": "t"}, path=str(p))
             for k, p in (("x", f1), ("y", f2))]
    report = writer_mod.write_dataset(
        tmp_path / "ds", clips, labels=writer_mod.LabelSpace.from_names(["c0"]), multi_label=True,
        options=writer_mod.WriterOptions(workers=0, keep_rate=True, progress=False))
    assert report.manifest.sample_rate is None  # mixed rates
    rates = {k: json.loads(m["json"])["sample_rate"] for _, k, m in
             read_shard(str(tmp_path / "ds" / "train" / "train-000000.tar"))}
    assert rates == {"x": 22050, "y": 16000}


def test_shard_size_and_byte_cap(tmp_path):
    report = build(tmp_path / "a", make_clips(13), shard_size=5)
    assert [s.samples for s in report.manifest.split("train").shards] == [5, 5, 3]
    m = read_manifest(tmp_path / "a")
    assert m.split("train").samples == 13 and m.split("train").duration == pytest.approx(13 * 0.25)
    assert [s.path for s in m.split("train").shards] == [f"train/train-00000{i}.tar" for i in range(3)]
    # a 0.25 s clip is ~6 kB of FLAC: a 20 kB cap allows at most 3 per shard
    cap = 20_000
    capped = writer_mod.write_dataset(
        tmp_path / "b", make_clips(13), labels=writer_mod.LabelSpace.from_names([f"c{i}" for i in range(4)]),
        multi_label=False, options=writer_mod.WriterOptions(shard_size=100, max_shard_bytes=cap, workers=0,
                                                            progress=False))
    shards = capped.manifest.split("train").shards
    assert sum(s.samples for s in shards) == 13 and len(shards) > 1
    for s in shards:
        assert (tmp_path / "b" / s.path).stat().st_size == s.bytes <= cap
    assert shard_keys(tmp_path / "b", "train") == [f"train_{i:04d}" for i in range(13)]


def test_output_is_identical_whatever_the_workers(tmp_path):
    build(tmp_path / "w0", make_clips(12), workers=0)
    build(tmp_path / "w2", make_clips(12), workers=2)
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar"):
        assert (tmp_path / "w0" / "train" / name).read_bytes() == (tmp_path / "w2" / "train" / name).read_bytes()
    assert shard_keys(tmp_path / "w2", "train") == [f"train_{i:04d}" for i in range(12)]


def test_bad_render_and_duplicate_keys_are_rejected_not_fatal(tmp_path):
    clips = make_clips(4)
    clips.append(Clip("train_0001", "train", {"id": "dup", "labels": [], "label_idx": []},
                      render=clips[1].render))  # same key again
    clips.append(Clip("silent", "train", {"id": "nan", "labels": [], "label_idx": []},
                      render=lambda: (np.full(100, np.nan), 16000)))
    report = build(tmp_path / "ds", clips)
    assert report.written == {"train": 4}
    reasons = dict(report.rejected)
    assert "duplicate key 'train_0001'" in reasons["dup"]
    assert "NaN" in reasons["nan"]
    lines = (tmp_path / "ds" / "rejected.tsv").read_text().splitlines()
    assert lines[0] == "source\treason" and len(lines) == 3


def test_a_run_that_writes_no_clip_is_an_error_and_keeps_the_previous_dataset(tmp_path):
    root = tmp_path / "ds"
    build(root, make_clips(6))
    before = {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    bad = [Clip("x", "train", {"id": "x", "labels": [], "label_idx": []}, render=lambda: (np.full(10, np.nan), 16000))]
    with pytest.raises(DatasetError, match="no clip was written .* 1 inputs rejected, 0 missing .*NaN.*left as it was"):
        build(root, bad)
    assert {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert read_manifest(root).split("train").samples == 6
    # into a new folder: the same error, and the rejected inputs are listed there
    with pytest.raises(DatasetError, match=r"listed in .*rejected\.tsv"):
        build(tmp_path / "new", bad, rejected=[("gone.wav", "missing")])
    assert "gone.wav\tmissing" in (tmp_path / "new" / "rejected.tsv").read_text()
    assert not (tmp_path / "new" / "manifest.json").exists()
    with pytest.raises(DatasetError, match="the input lists no clips"):
        build(tmp_path / "none", [])


class _Crash(RuntimeError):
    pass


def test_crash_mid_write_lists_no_half_shard_and_rerun_completes(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    build(tmp_path / "clean", make_clips(23), shard_size=4)  # the reference: 6 shards
    build(root, make_clips(40), shard_size=4)  # an earlier, bigger run in the same folder: 10 shards
    assert len(read_manifest(root).split("train").shards) == 10

    real_finish = writer_mod._SplitWriter._finish
    calls = {"n": 0}

    def crashing_finish(self):
        calls["n"] += 1
        if calls["n"] == 3:  # two shards are complete, the third is half written
            raise _Crash("simulated crash while closing shard 3")
        real_finish(self)

    monkeypatch.setattr(writer_mod._SplitWriter, "_finish", crashing_finish)
    with pytest.raises(_Crash):
        build(root, make_clips(23), shard_size=4)
    # nothing is listed: the old manifest went first, the new one is written last
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_manifest(root)
    assert not list((root / "train").glob("*.tmp"))  # the half shard was removed
    # the shards finished before the crash are complete tars; the stale ones of the old run are gone
    assert sorted(p.name for p in (root / "train").iterdir()) == ["train-000000.tar", "train-000001.tar"]
    with tarfile.open(root / "train" / "train-000001.tar") as t:
        assert len(t.getnames()) == 8

    # a hard crash (no cleanup) leaves a .tmp behind: simulate one, then re-run
    (root / "train" / "train-000002.tar.tmp").write_bytes(b"half a tar")
    monkeypatch.setattr(writer_mod._SplitWriter, "_finish", real_finish)
    report = build(root, make_clips(23), shard_size=4)
    assert report.written == {"train": 23}
    names = sorted(p.name for p in (root / "train").iterdir())
    assert names == [f"train-{i:06d}.tar" for i in range(6)]
    for name in names:  # identical to a run that never crashed
        assert (root / "train" / name).read_bytes() == (tmp_path / "clean" / "train" / name).read_bytes()
    assert [s.samples for s in read_manifest(root).split("train").shards] == [4, 4, 4, 4, 4, 3]


def test_weights_csv_matches_json(tmp_path):
    report = build(tmp_path / "ds", make_clips(7, weight_of=lambda i: 0.5 * i))
    assert report.manifest.split("train").weights == "train_weights.csv"
    rows = (tmp_path / "ds" / "train_weights.csv").read_text().splitlines()
    assert rows[0] == "key,weight"
    assert [r.split(",") for r in rows[1:]] == [[f"train_{i:04d}", f"{0.5 * i:g}"] for i in range(7)]


def test_tone_helper_is_what_it_says():
    x = tone(0.5, 16000, 1000.0)
    assert x.shape == (8000,) and abs(float(np.abs(x).max()) - 0.5) < 1e-3
