"""The converters on small inputs in the official layouts, with the usual kinds of broken input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from datahelpers import read_json, write_audio

from audiossl.cli.main import main as cli_main
from audiossl.data.labels import audioset_labels, esc50_labels
from audiossl.data.manifest import read_manifest
from audiossl.data.writer import WriterOptions
from data_prep import audioset, esc50, folder, synth

OPTS = WriterOptions(workers=0, progress=False)


def rejected(root) -> dict[str, str]:
    lines = (root / "rejected.tsv").read_text().splitlines()
    assert lines[0] == "source\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


# --- folder --------------------------------------------------------------------------------------------------------
def _user_folder(tmp_path):
    a = tmp_path / "audio"
    write_audio(a / "dogs" / "rex.01.wav", 0.3, 22050, 300)
    write_audio(a / "dogs" / "fido.flac", 0.3, 16000, 350, fmt="FLAC")
    write_audio(a / "street" / "car.wav", 0.3, 48000, 500, channels=2)
    write_audio(a / "street" / "horn.ogg", 0.3, 16000, 900, fmt="OGG")
    write_audio(a / "chiens" / ("Médor, le chien " * 8 + ".wav"), 0.3, 16000, 320)  # non-ASCII, > 100 characters
    (a / "bad").mkdir()
    (a / "bad" / "empty.wav").write_bytes(b"")
    full = (a / "dogs" / "rex.01.wav").read_bytes()
    (a / "bad" / "truncated.wav").write_bytes(full[: len(full) // 2])
    (a / "bad" / "notaudio.wav").write_text("this is a text file, not a RIFF header")
    (a / "bad" / "clip.txt").write_bytes(full)  # audio content, but not an audio extension
    rows = [
        "path,labels,split,fold",
        "dogs/rex.01.wav,dog,train,1",
        "dogs/fido.flac,dog;animal,train,2",
        f"\"chiens/{'Médor, le chien ' * 8}.wav\",dog,train,3",
        "street/car.wav,car,eval,1",
        "street/horn.ogg,car;horn,eval,2",
        "bad/empty.wav,dog,train,1",
        "bad/truncated.wav,dog,train,1",
        "bad/notaudio.wav,car,train,1",
        "bad/clip.txt,car,train,1",
        "dogs/missing.wav,dog,train,1",
    ]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    return a


def test_folder_converter_writes_good_rejects_bad(tmp_path):
    a = _user_folder(tmp_path)
    out = tmp_path / "ds"
    report = folder.convert(str(tmp_path / "list.csv"), str(a), str(out), options=OPTS)
    assert report.written == {"train": 3, "eval": 2}
    assert (report.num_rejected, report.num_missing) == (4, 1)
    bad = {k[len(str(a)) + 1:]: v for k, v in rejected(out).items()}
    assert bad["bad/empty.wav"] == "the file is empty (0 bytes)"
    assert "truncated" in bad["bad/truncated.wav"]
    assert "not a readable audio file" in bad["bad/notaudio.wav"]
    assert "extension '.txt'" in bad["bad/clip.txt"]
    assert bad["dogs/missing.wav"] == "missing"
    m = read_manifest(out)
    assert m.labels.names == ("animal", "car", "dog", "horn")  # sorted union
    assert m.multi_label is True and m.sample_rate == 16000
    assert m.evaluation == {"split": "eval"}
    meta = read_json(out, "train")  # in shard order
    assert m.split("train").shards[0].folds == [v["fold"] for v in meta.values()]
    assert sorted(m.split("train").shards[0].folds) == [1, 2, 3]
    long_key = "chiens_" + "Médor,_le_chien_" * 8
    assert set(meta) == {"dogs_rex_01", "dogs_fido", long_key}  # dots, slashes, spaces -> "_"; the id is kept
    assert meta[long_key]["id"] == f"chiens/{'Médor, le chien ' * 8}.wav"
    assert meta["dogs_rex_01"]["id"] == "dogs/rex.01.wav"
    assert meta["dogs_fido"]["labels"] == ["animal", "dog"] and meta["dogs_fido"]["label_idx"] == [0, 2]
    assert read_json(out, "eval")["street_car"]["duration"] == pytest.approx(0.3)


def test_folder_fixed_label_space_unknown_labels(tmp_path, capsys):
    a = _user_folder(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\ncar\nanimal\n")
    with pytest.raises(ValueError) as e:
        folder.convert(str(tmp_path / "list.csv"), str(a), str(tmp_path / "x"), labels_file=str(labels), options=OPTS)
    assert "'horn' (1 rows)" in str(e.value) and "--drop-unknown" in str(e.value)
    # the same through the CLI: exit status 1 and the message
    status = cli_main(["prep", "folder", "--csv", str(tmp_path / "list.csv"), "--audio-root", str(a),
                       "--labels", str(labels), "--out", str(tmp_path / "x"), "--workers", "0", "--quiet"])
    err = capsys.readouterr().err
    assert status == 1 and "audiossl prep folder: error:" in err and "'horn'" in err
    report = folder.convert(str(tmp_path / "list.csv"), str(a), str(tmp_path / "y"), labels_file=str(labels),
                            drop_unknown=True, options=OPTS)
    assert report.written == {"train": 3, "eval": 1}
    assert "unknown label(s) ['horn']" in rejected(tmp_path / "y")[str(a / "street/horn.ogg")]
    m = read_manifest(tmp_path / "y")
    assert m.labels.names == ("dog", "car", "animal")  # the file's order
    assert read_json(tmp_path / "y", "train")["dogs_fido"]["label_idx"] == [0, 2]


def test_folder_single_label_inferred_and_headerless(tmp_path):
    a = tmp_path / "audio"
    write_audio(a / "x.wav", 0.2)
    write_audio(a / "y.wav", 0.2, freq=800)
    (tmp_path / "l.csv").write_text("x.wav,low\ny.wav,high\n")
    report = folder.convert(str(tmp_path / "l.csv"), str(a), str(tmp_path / "ds"), options=OPTS)
    assert report.manifest.multi_label is False and report.written == {"train": 2}
    assert report.manifest.labels.names == ("high", "low")


@pytest.mark.parametrize("header", ["filename,labels", "file,label", "labels,path,comment"])
def test_folder_header_with_other_column_names_is_an_error_not_a_clip(tmp_path, header):
    write_audio(tmp_path / "a" / "x.wav", 0.2)
    (tmp_path / "l.csv").write_text(f"{header}\nx.wav,dog\n")
    with pytest.raises(ValueError, match="the header names columns .*Name the columns path, labels"):
        folder.read_rows(tmp_path / "l.csv")
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        folder.read_rows(tmp_path / "a")


def test_folder_unlabelled_audio_makes_a_pretraining_set(tmp_path):
    a = tmp_path / "audio"
    for i in range(3):
        write_audio(a / f"u{i}.wav", 0.2, freq=300 + 100 * i)
    (tmp_path / "u.csv").write_text("path,labels\nu0.wav,\nu1.wav,\nu2.wav,bird\n")
    report = folder.convert(str(tmp_path / "u.csv"), str(a), str(tmp_path / "ds"), options=OPTS)
    assert report.written == {"train": 3} and report.manifest.multi_label is True
    meta = read_json(tmp_path / "ds", "train")
    assert sorted(len(m["label_idx"]) for m in meta.values()) == [0, 0, 1]


# --- ESC-50 ----------------------------------------------------------------------------------------------------------
def _mini_esc50(tmp_path, missing: str = "3-100038-A-14.wav"):
    root = tmp_path / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    names = esc50_labels().names
    entries = [(1, 100032, "A", 0), (1, 100038, "B", 14), (2, 104089, "A", 1), (2, 104089, "B", 41),
               (3, 100038, "A", 14), (4, 110389, "A", 0), (5, 115545, "C", 41), (5, 118206, "A", 10)]
    esc10 = {0, 1, 10, 41}  # dog, rooster, rain, chainsaw are ESC-10 classes
    for i, (fold, fid, take, target) in enumerate(entries):
        fname = f"{fold}-{fid}-{take}-{target}.wav"
        rows.append(f"{fname},{fold},{target},{names[target]},{target in esc10},{fid},{take}")
        if fname != missing:
            write_audio(root / "audio" / fname, 0.5, 44100, 200 + 50 * i)  # the official 44.1 kHz (shortened)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_esc50_converter(tmp_path):
    root = _mini_esc50(tmp_path)
    out = tmp_path / "esc"
    assert cli_main(["prep", "esc50", "--root", str(root), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    m = read_manifest(out)
    assert list(m.splits) == ["train"] and m.split("train").samples == 7
    assert m.labels.names == esc50_labels().names and m.multi_label is False and m.sample_rate == 16000
    assert m.evaluation["fold_field"] == "fold" and m.evaluation["folds"] == [1, 2, 3, 4, 5]
    assert rejected(out) == {str(root / "audio" / "3-100038-A-14.wav"): "missing"}
    meta = read_json(out, "train")  # in shard order: shuffled
    csv_order = ["1-100032-A-0", "1-100038-B-14", "2-104089-A-1", "2-104089-B-41", "4-110389-A-0", "5-115545-C-41",
                 "5-118206-A-10"]
    assert sorted(meta) == csv_order and list(meta) != csv_order
    assert meta["2-104089-B-41"] == {"id": "2-104089-B-41", "labels": ["chainsaw"], "label_idx": [41],
                                     "source": "esc50", "fold": 2, "duration": 0.5, "sample_rate": 16000}
    assert m.split("train").shards[0].folds == [v["fold"] for v in meta.values()]  # the folds follow the shuffle
    assert m.params["shuffled"] is True and m.params["order_seed"] == 0
    # --keep-order: the CSV order
    kept = tmp_path / "kept"
    assert cli_main(["prep", "esc50", "--root", str(root), "--out", str(kept), "--workers", "0", "--quiet",
                     "--keep-order"]) == 0
    assert list(read_json(kept, "train")) == csv_order
    assert read_manifest(kept).split("train").shards[0].folds == [1, 1, 2, 2, 4, 5, 5]
    assert read_manifest(kept).params["shuffled"] is False


def test_esc10_subset_reindexes(tmp_path):
    root = _mini_esc50(tmp_path, missing="")
    report = esc50.convert(str(root), str(tmp_path / "e10"), esc10=True, options=OPTS)
    assert report.manifest.labels.names == ("dog", "rooster", "rain", "chainsaw")
    meta = read_json(tmp_path / "e10", "train")
    assert {k: v["label_idx"] for k, v in meta.items()} == {
        "1-100032-A-0": [0], "2-104089-A-1": [1], "2-104089-B-41": [3], "4-110389-A-0": [0], "5-115545-C-41": [3],
        "5-118206-A-10": [2]}


# --- AudioSet --------------------------------------------------------------------------------------------------------
HEADER = ["# Segments csv created Sun Mar  5 10:54:25 2017",
          "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5",
          "# YTID, start_seconds, end_seconds, positive_labels"]


def test_audioset_converter(tmp_path):
    space = audioset_labels()
    d = tmp_path / "downloads"
    # several naming schemes, rates and channel counts, nested folders
    write_audio(d / "bal" / "Y--PJHxphWEs.wav", 0.4, 44100, 300, channels=2)
    write_audio(d / "bal" / "nested" / "-0RWZT-miFs_420.000.flac", 0.4, 48000, 400, fmt="FLAC")
    write_audio(d / "eval" / "-1nilez17Dg_30000_40000.flac", 0.4, 32000, 500, fmt="FLAC")
    write_audio(d / "eval" / "0O1VpYr-zB8.wav", 0.4, 16000, 600)
    write_audio(d / "unrelated" / "notes.txt.wav", 0.1)
    bal = tmp_path / "balanced_train_segments.csv"
    bal.write_text("\n".join(HEADER + [
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"',
        '-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw,/m/0k4j"',
        '-5xOcMJWEgc, 10.000, 20.000, "/m/09x0r"',  # not downloaded
    ]) + "\n")
    ev = tmp_path / "eval_segments.csv"
    ev.write_text("\n".join(HEADER + [
        '-1nilez17Dg, 30.000, 40.000, "/m/09x0r"',
        '0O1VpYr-zB8, 0.000, 10.000, "/m/0k4j,/m/03v3yw"',
        'zzzzzzzzzzz, 0.000, 10.000, "/m/09x0r"',  # not downloaded
    ]) + "\n")
    out = tmp_path / "as"
    report = audioset.convert([str(bal), str(ev)], str(d), str(out), options=WriterOptions(workers=2, progress=False))
    assert report.written == {"balanced_train": 2, "eval": 2}
    assert report.num_missing == 2 and report.num_rejected == 0
    assert rejected(out) == {"balanced_train/-5xOcMJWEgc": "missing", "eval/zzzzzzzzzzz": "missing"}
    m = read_manifest(out)
    assert m.labels.mids == space.mids and m.multi_label and m.evaluation["split"] == "eval"
    train = read_json(out, "balanced_train")  # shard order
    assert sorted(train) == ["--PJHxphWEs_30000", "-0RWZT-miFs_420000"]
    first = train["--PJHxphWEs_30000"]
    assert first["labels"] == ["/m/09x0r", "/t/dd00088"] and first["start"] == 30.0
    assert first["label_idx"] == [space.index("/m/09x0r"), space.index("/t/dd00088")] and first["label_idx"][0] == 0
    # AudioMAE weights over the found training clips: each of the four labels occurs once
    w = 1000 / (1 + 0.01)
    assert first["weight"] == pytest.approx(2 * w, rel=1e-6)
    assert train["-0RWZT-miFs_420000"]["weight"] == pytest.approx(2 * w, rel=1e-6)
    assert "weight" not in read_json(out, "eval")["-1nilez17Dg_30000"]
    rows = (out / "balanced_train_weights.csv").read_text().splitlines()
    assert rows[0] == "key,weight" and [r.split(",")[0] for r in rows[1:]] == list(train)
    assert [float(r.split(",")[1]) for r in rows[1:]] == pytest.approx([v["weight"] for v in train.values()], rel=1e-5)
    assert all(v["sample_rate"] == 16000 and v["duration"] == pytest.approx(0.4) for v in train.values())


def test_audioset_label_weights_recipe():
    weights = audioset.label_weights([[0, 1], [0], [0, 2]])
    assert weights == pytest.approx({0: 1000 / 3.01, 1: 1000 / 1.01, 2: 1000 / 1.01})
    assert audioset.split_name("/x/unbalanced_train_segments.csv") == "unbalanced_train"
    assert audioset.candidate_stems("abc", 30.0, 40.0)[:2] == ["Yabc_30000_40000", "Yabc_30.000_40.000"]


# --- synth -----------------------------------------------------------------------------------------------------------
def test_synth_is_deterministic_by_seed(tmp_path):
    a = synth.convert(str(tmp_path / "a"), num_clips=12, eval_clips=4, seed=3,
                      options=WriterOptions(workers=0, shard_size=8, progress=False))
    assert a.written == {"train": 12, "eval": 4}
    synth.convert(str(tmp_path / "b"), num_clips=12, eval_clips=4, seed=3,
                  options=WriterOptions(workers=2, shard_size=8, progress=False))
    synth.convert(str(tmp_path / "c"), num_clips=12, eval_clips=4, seed=4,
                  options=WriterOptions(workers=0, shard_size=8, progress=False))
    first = "train/train-000000.tar"
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()
    m = a.manifest
    assert m.num_classes >= 12 and m.multi_label and m.sample_rate == 16000
    assert sorted(c for g in m.ontology.values() for c in g) == sorted(m.labels.names)
    meta = read_json(tmp_path / "a", "train")
    for v in meta.values():
        assert 1 <= len(v["labels"]) <= 3 and v["duration"] == 2.0
        assert [m.labels.names[i] for i in v["label_idx"]] == v["labels"]
        assert sorted(e["label"] for e in v["events"]) == sorted(v["labels"])


def test_synth_events_are_where_the_labels_say():
    """Each event raises the energy of its frames well above the background (no silent label)."""
    for i in range(12):
        events, _ = synth.plan_clip(0, "train", i)
        wave, rate = synth.render_clip(0, "train", i)
        assert wave.shape == (32000,) and rate == 16000 and np.abs(wave).max() <= 1.0
        frame = lambda a, b: float(np.mean(wave[a:b].astype(np.float64) ** 2))  # noqa: E731
        quiet = [(0, 32000)]
        for e in events:
            quiet = [(a, b) for a, b in quiet if b <= e.start or a >= e.start + e.length] + [
                seg for a, b in quiet if a < e.start < b or a < e.start + e.length < b
                for seg in ((a, e.start), (e.start + e.length, b)) if seg[1] - seg[0] > 800]
        inside = min(frame(e.start, e.start + e.length) for e in events)
        outside = [frame(a, b) for a, b in quiet if b - a > 1600]
        if outside:  # the background alone is at least 6 dB below every event
            assert 10 * np.log10(inside / max(outside)) > 6


def test_prep_help_and_module_entry_point():
    assert cli_main(["prep", "--help"]) == 0
    assert cli_main(["prep", "nonsense"]) == 2
    out = subprocess.run([sys.executable, "-m", "data_prep.esc50", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--esc10" in out.stdout
