"""The shell recipes run for real, with tiny overrides: ESC-50 cross-validation and the AudioSet chain."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from helpers import ROOT, config, pretrained, synth_root  # noqa: F401  (fixtures)

from audiossl.data.labels import esc50_labels

BIN = os.path.dirname(sys.executable)


def _env(**extra) -> dict:
    env = dict(os.environ, AUDIOSSL=os.path.join(BIN, "audiossl"), PATH=BIN + os.pathsep + os.environ["PATH"])
    env.update(extra)
    return env


def _tone(path, seconds, rate, freq):
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32), rate)


def test_esc50_cross_validation_recipe(pretrained, tmp_path):
    names = esc50_labels().names
    esc = tmp_path / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for j, target in enumerate((0, 1, 2, 3)):
            fname = f"{fold}-{100000 + 10 * fold + j}-A-{target}.wav"
            rows.append(f"{fname},{fold},{target},{names[target]},False,{100000 + 10 * fold + j},A")
            _tone(esc / "audio" / fname, 1.0, 44100, 300 * (target + 1))
    (esc / "meta").mkdir()
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cv"
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "recipes", "esc50_5fold.sh"), str(esc), pretrained, str(out),
         "--trainer.max_steps", "2", "--data.batch_size", "4", "--data.num_workers", "0",
         "--trainer.enable_progress_bar", "false", "--data.clip_seconds", "1.0", "--trainer.val_check_interval", "1",
         "--model.front_end", "{target_length: 112, mean: -6.627, std: 5.359}"],
        env=_env(FOLDS="1 3"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fold 1: accuracy" in proc.stdout and "fold 3: accuracy" in proc.stdout
    assert "mean accuracy over 2 folds" in proc.stdout
    res = json.loads((out / "cv_results.json").read_text())
    per_fold = [json.loads((out / f"fold{k}" / "eval" / "metrics.json").read_text()) for k in (1, 3)]
    assert [m["num_clips"] for m in per_fold] == [4, 4]  # exactly the held-out fold
    assert res["mean_accuracy"] == pytest.approx(sum(m["accuracy"] for m in per_fold) / 2)
    # the test-selected numbers the papers report, labelled, beside the last-checkpoint mean
    assert "TEST-SELECTED, EAT/SSLAM style" in proc.stdout and "TEST-SELECTED, AST style" in proc.stdout
    best = res["best_test_selected"]
    assert best["mean_accuracy"] == pytest.approx(sum(m["best_test_selected"]["accuracy"] for m in per_fold) / 2)
    hist = {k: {json.loads(l)["step"]: json.loads(l)["accuracy"] for l in
                (out / f"fold{k}" / "val_history.jsonl").read_text().splitlines()} for k in (1, 3)}
    ast = res["ast_best_step_test_selected"]
    means = {s: (hist[1][s] + hist[3][s]) / 2 for s in hist[1]}
    assert ast["mean_accuracy"] == pytest.approx(max(means.values())) and ast["step"] in means


def test_audioset_recipe(synth_root, tmp_path):
    header = ["# Segments csv created Sun Mar  5 10:54:25 2017",
              "# num_ytids=4, num_segs=4, num_unique_labels=2, num_positive_labels=5",
              "# YTID, start_seconds, end_seconds, positive_labels"]
    segs, audio = tmp_path / "segments", tmp_path / "audio"
    segs.mkdir()
    bal = [f'vid{i:03d}aaaaa, 30.000, 40.000, "/m/09x0r{",/m/04rlf" if i % 2 else ""}"' for i in range(12)]
    ev = [f'evl{i:03d}bbbbb, 0.000, 10.000, "/m/04rlf"' for i in range(4)]
    (segs / "balanced_train_segments.csv").write_text("\n".join(header + bal) + "\n")
    (segs / "eval_segments.csv").write_text("\n".join(header + ev) + "\n")
    for i in range(12):
        _tone(audio / "bal" / f"Yvid{i:03d}aaaaa.wav", 1.0, 32000, 200 + 40 * i)
    for i in range(3):  # one eval clip is missing: counted, not fatal
        _tone(audio / "ev" / f"evl{i:03d}bbbbb_0.flac", 1.0, 16000, 500 + 40 * i)
    out = tmp_path / "as"
    tiny = "--trainer.max_steps 2 --data.batch_size 4 --data.num_workers 0 --trainer.enable_progress_bar false " \
           "--data.clip_seconds 1.0"
    tiny_ft = tiny + " --trainer.val_check_interval 2"
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "recipes", "audioset.sh"), str(segs), str(audio), str(out)],
        env=_env(WORKERS="1", PRETRAIN_CONFIG=config("pretrain", "eat_tiny.yaml"),
                 FINETUNE_CONFIG=config("finetune", "tiny.yaml"), PRETRAIN_ARGS=tiny, FINETUNE_ARGS=tiny_ft),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert m["num_clips"] == 3 and m["num_classes"] == 527
    assert m["checkpoint"]["step"] == 2 and m["best_test_selected"]["step"] == 2
    assert "last checkpoint (step 2): mAP" in proc.stdout and "TEST-SELECTED on this eval set" in proc.stdout
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest.get("stats") and manifest["stats"]["mean"] < 0
    assert (out / "pretrain" / "checkpoints" / "last.ckpt").is_file()


def test_beats_iterations_recipe(synth_root, tmp_path):
    """BEATs iteration 1 -> tokenizer distilled from it -> iteration 2 on its labels -> export, at toy size."""
    import torch
    from helpers import tb_scalars

    import audiossl

    out = tmp_path / "beats"
    tiny = "--trainer.max_steps 3 --data.batch_size 4 --data.num_workers 0 --trainer.enable_progress_bar false " \
           "--trainer.log_every_n_steps 1"
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "recipes", "beats_iterations.sh"), synth_root, str(out), "2"],
        env=_env(ITER1_CONFIG=config("pretrain", "beats_iter1_tiny.yaml"),
                 TOKENIZER_CONFIG=config("pretrain", "beats_tokenizer_tiny.yaml"),
                 ITER_CONFIG=config("pretrain", "beats_iter2_tiny.yaml"), PRETRAIN_ARGS=tiny, TOKENIZER_ARGS=tiny),
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = {name: torch.load(out / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
          for name in ("iter1", "tokenizer2", "iter2")}
    assert [ck[n]["audiossl"]["objective"] for n in ck] == ["beats", "beats_tokenizer", "beats"]
    assert all(c["global_step"] == 3 for c in ck.values())
    tok = ck["tokenizer2"]["state_dict"]
    assert bool(tok["quantizer.initted"]) and ck["tokenizer2"]["audiossl"]["tokenizer"] == {"codebook_size": 128,
                                                                                             "code_dim": 32}
    # the tokenizer's teacher is iteration 1's student; iteration 2's labels come from the tokenizer's codebook
    assert torch.equal(tok["teacher.blocks.1.mlp.fc2.weight"], ck["iter1"]["state_dict"]["encoder.blocks.1.mlp.fc2.weight"])
    assert torch.equal(ck["iter2"]["state_dict"]["tokenizer.quantizer.codebook"], tok["quantizer.codebook"])
    assert torch.equal(ck["iter2"]["state_dict"]["tokenizer.encoder.patch_embed.conv.weight"],
                       tok["encoder.patch_embed.conv.weight"])
    for run, tags in (("iter1", ("train/token_ce", "train/target_perplexity")),
                      ("tokenizer2", ("train/cosine_loss", "train/code_perplexity", "train/codes_used")),
                      ("iter2", ("train/token_ce", "train/target_codes_used"))):
        for tag in tags:
            values = tb_scalars(str(out / run), tag)
            assert len(values) == 3 and all(math.isfinite(v) for v in values.values()), (run, tag, values)
    assert min(tb_scalars(str(out / "tokenizer2"), "train/codes_used").values()) > 1  # the codebook is in use
    assert min(tb_scalars(str(out / "iter2"), "train/target_codes_used").values()) > 1
    model = audiossl.load_model(out / "export")
    assert not model.has_head and model.encoder.config.rel_pos_buckets == 320
    emb, frames = model.embed(torch.randn(32000) * 0.1)
    assert emb.shape == (64,) and torch.isfinite(frames).all()
