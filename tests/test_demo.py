"""`audiossl demo` (make demo's command) end to end at toy size: every stage runs and writes its outputs, on the
synthetic corpus and on a user's own CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from audiossl.cli.demo import assign_splits, main
from audiossl.errors import UserError
from data_prep.folder import Row

MODELS = ("baseline", "pretrained", "scratch", "linear_probe")


def _check_results(out, eval_clips: int):
    res = json.loads((out / "results.json").read_text())
    for key in MODELS:
        r = res[key]
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["mAP"] <= 1.0 and 0.0 <= r["mAUC"] <= 1.0, key
    for key in MODELS[1:]:
        assert res[key]["num_clips"] == eval_clips
    assert res["baseline"]["num_eval"] == eval_clips
    assert res["pretraining_gain"]["mAP"] == pytest.approx(res["pretrained"]["mAP"] - res["scratch"]["mAP"])
    assert set(res["stage_seconds"]) >= {"baseline: logistic regression on mean log-mel", "evaluate", "export + plots"}
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    for png in ("pretrain_curves.png", "finetune_curves.png", "example_predictions.png"):
        with Image.open(out / "plots" / png) as im:
            assert im.size[0] > 500 and im.size[1] > 200
    md = (out / "results.md").read_text()
    assert md.startswith("# audiossl demo") and "| model | accuracy | mAP | mAUC | minutes |" in md
    assert "| mean log-mel + logistic regression |" in md and "| total |" in md
    return res


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--unlabelled-clips", "48", "--labelled-clips", "32", "--eval-clips", "16",
                 "--pretrain-steps", "2", "--finetune-steps", "2", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "| fine-tuned (pretrained) |" in text and "| fine-tuned (scratch) |" in text and "| linear probe" in text
    res = _check_results(out, 16)
    assert res["data"]["corpus"] == "synthetic" and res["settings"]["pretrain_config"].endswith("eat_tiny.yaml")


def _tone_folder(root, n_per_class: int, classes=("low", "high", "noise")):
    """Class-sorted WAVs of 0.3-1.2 s (tones at two pitches, noise); a CSV listing them class by class."""
    rng = np.random.default_rng(3)
    rows = []
    for c in classes:
        for i in range(n_per_class):
            t = np.arange(int(rng.uniform(0.3, 1.2) * 16000)) / 16000
            x = (np.sin(2 * np.pi * (300 if c == "low" else 2000) * t) if c != "noise"
                 else rng.standard_normal(len(t)) * 0.3) + 0.05 * rng.standard_normal(len(t))
            (root / c).mkdir(parents=True, exist_ok=True)
            sf.write(root / c / f"{i}.wav", (0.3 * x).astype(np.float32), 16000, subtype="PCM_16")
            rows.append((f"{c}/{i}.wav", c))
    return rows


def test_demo_on_own_csv_with_seeded_stratified_split(tmp_path, capsys):
    audio = tmp_path / "my_audio"
    rows = _tone_folder(audio, 10)
    with open(tmp_path / "mine.csv", "w", newline="") as f:  # no split column: the demo holds out 20 % per label
        csv.writer(f).writerows([("path", "labels"), *rows])
    out = tmp_path / "out"
    assert main(["--csv", str(tmp_path / "mine.csv"), "--audio-root", str(audio), "--out", str(out),
                 "--pretrain-steps", "2", "--finetune-steps", "2", "--workers", "1", "--objective", "mae"]) == 0
    res = _check_results(out, 6)  # 2 of each class's 10
    assert res["data"]["train_clips"] == 24 and res["data"]["classes"] == 3 and not res["data"]["multi_label"]
    assert "stratified" in res["data"]["splits_from"] and res["settings"]["pretrain_config"].endswith("mae_small.yaml")
    assert res["settings"]["recipe"] == "small" and res["settings"]["finetune_config"].endswith("finetune/small.yaml")
    written = list(csv.DictReader(open(out / "data" / "clips.csv")))
    assert sorted(r["path"] for r in written) == sorted(p for p, _ in rows)
    labels = [r["labels"] for r in written]
    assert sum(a != b for a, b in zip(labels, labels[1:])) > 10  # written shuffled, not class by class
    evals = [r for r in written if r["split"] == "eval"]
    assert sorted(r["labels"] for r in evals) == ["high"] * 2 + ["low"] * 2 + ["noise"] * 2
    manifest = json.loads((out / "data" / "labelled" / "manifest.json").read_text())
    assert manifest["stats"]["mean"] < 0  # with --csv: the training clips' own fbank statistics, used by training
    assert manifest["stats"]["front_end"]["num_mel_bins"] == 64  # ... measured with the recipe's front end
    import torch

    meta = {k: torch.load(out / "runs" / run / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)["audiossl"]["encoder"] for k, run in
            (("pre", "pretrain"), ("scratch", "finetune/scratch"), ("ft", "finetune/pretrained"))}
    for v in meta.values():
        v.pop("drop_path")  # a fine-tuning setting (0.1; pretraining 0)
    assert meta["scratch"] == meta["pre"] == meta["ft"] and meta["pre"]["block_style"] == "pre"  # MAE's, not the
    # fine-tuning config's post-LN: scratch differs from the pretrained run in its initial weights only
    assert "mine.csv" in (out / "results.md").read_text()


def test_recipe_options_and_their_errors(tmp_path):
    from audiossl.cli.demo import REPO, config_steps

    assert config_steps(REPO / "configs" / "finetune" / "small.yaml") == 400
    (tmp_path / "nosteps.yaml").write_text("model: {}\n")
    with pytest.raises(UserError, match="max_steps"):
        config_steps(tmp_path / "nosteps.yaml")
    for extra in (["--stats"], ["--no-stats"]):  # statistics go with --csv (the synthetic corpus keeps AudioSet's)
        with pytest.raises(UserError, match="go with --csv"):
            main(["--out", str(tmp_path / "x"), *extra])
    with pytest.raises(UserError, match="does not exist"):
        main(["--out", str(tmp_path / "x"), "--recipe", "small", "--objective", "eat", "--finetune-config", "nope.yaml"])


def _row(i, labels, split="train"):
    return Row(i + 1, f"{i}.wav", labels, split, None)


def test_assign_splits_keeps_the_csv_split_or_stratifies():
    rows = [_row(i, ["a" if i < 10 else "b"], "eval" if i in (3, 14) else "train") for i in range(15)]
    splits, how = assign_splits(rows, 0.2, 0)
    assert splits == [r.split for r in rows] and "split column" in how
    rows = [_row(i, ["a"] if i < 10 else ["b"] if i < 15 else ["a", "b"]) for i in range(17)]
    splits, how = assign_splits(rows, 0.2, 0)
    held = [i for i, s in enumerate(splits) if s == "eval"]
    assert len([i for i in held if i < 10]) == 2 and len([i for i in held if 10 <= i < 15]) == 1
    assert len([i for i in held if i >= 15]) == 1  # the {a, b} group of 2 keeps one for training
    assert assign_splits(rows, 0.2, 0)[0] == splits and assign_splits(rows, 0.2, 1)[0] != splits
    with pytest.raises(UserError, match="no 'eval' split"):
        assign_splits([_row(0, ["a"], "test"), _row(1, ["a"])], 0.2, 0)
    with pytest.raises(UserError, match="nothing can be held out"):
        assign_splits([_row(0, ["a"]), _row(1, ["b"])], 0.2, 0)
