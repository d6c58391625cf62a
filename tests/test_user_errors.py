"""Mistakes a user makes on the command line: one ``audiossl VERB: error: ...`` line and status 1, never a traceback,
and nothing already on disk lost (a finished run's checkpoints, a model's ONNX twin, an input file)."""

from __future__ import annotations

import functools
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import config, pretrained, synth_root  # noqa: F401  (fixtures)

from audiossl.hub.reader import CheckpointError, safe_torch_load
from audiossl.cli.main import main
from audiossl.errors import UserError


@pytest.fixture()
def files(tmp_path):
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), np.zeros(16000, dtype="float32"), 16000)
    rand = tmp_path / "random.ckpt"
    rand.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    return {"wav": str(wav), "rand": str(rand), "empty": str(empty), "text": str(text), "tmp": tmp_path}


def one_error_line(capsys, verb: str, argv: list[str]) -> str:
    """Run ``audiossl VERB argv``; it must fail with status 1 and one clean error line. Returns the message."""
    assert main([verb, *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [m for line in err.splitlines() if (m := re.match(rf"audiossl {verb}( \w+)?: error: (.*)", line))]
    assert len(lines) == 1, err
    return lines[0].group(2)


def test_files_that_are_no_torch_checkpoint_are_named_as_such(files):
    for key in ("rand", "wav", "text"):
        with pytest.raises(CheckpointError, match="is not a torch checkpoint"):
            safe_torch_load(files[key])
    with pytest.raises(CheckpointError, match="is an empty file"):
        safe_torch_load(files["empty"])
    (files["tmp"] / "model.safetensors").write_bytes(b"12345678")
    with pytest.raises(CheckpointError, match="safetensors file, not a torch checkpoint"):
        safe_torch_load(files["tmp"] / "model.safetensors")
    good = files["tmp"] / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(safe_torch_load(good, mmap=True)["w"], torch.ones(2))


def test_verbs_report_user_errors_in_one_line(files, synth_root, pretrained, capsys):
    out = str(files["tmp"] / "out")
    ev = ["--data.root", synth_root, "--out", out]
    assert "not a torch checkpoint" in one_error_line(capsys, "evaluate", ["--ckpt_path", files["rand"], *ev])
    assert "fine-tune it first" in one_error_line(capsys, "evaluate", ["--ckpt_path", pretrained, *ev])
    msg = one_error_line(capsys, "evaluate", ["--ckpt_path", pretrained, "--data.root", synth_root, "--out", files["wav"]])
    assert "is a file" in msg
    assert not os.path.exists(out)  # nothing half-made by the failed runs
    assert "not a torch checkpoint" in one_error_line(capsys, "export", [files["wav"], "--out", out])
    assert "input file" in one_error_line(capsys, "plot", ["mel", files["wav"], "--out", files["wav"]])
    assert sf.info(files["wav"]).frames == 16000  # the input was not overwritten
    assert "is a file" in one_error_line(capsys, "prep", ["synth", "--num-clips", "4", "--out", files["text"]])
    assert "does not exist" in one_error_line(
        capsys, "finetune", ["--config", config("finetune", "tiny.yaml"), "--data.root", str(files["tmp"] / "nope")])
    assert "batch_size must be >= 1" in one_error_line(
        capsys, "finetune", ["--config", config("finetune", "tiny.yaml"), "--data.root", synth_root,
                             "--data.batch_size", "0"])
    assert "not a torch checkpoint" in one_error_line(
        capsys, "finetune", ["--config", config("finetune", "tiny.yaml"), "--data.root", synth_root,
                             "--model.init_from", files["wav"]])
    msg = one_error_line(capsys, "finetune", ["--config", config("finetune", "tiny.yaml"), "--data.root", synth_root,
                                              "--data.seed", "1", "--trainer.default_root_dir", str(files["tmp"] / "s")])
    assert "the data's seed (1) and the model's seed (0) differ" in msg and "--model.seed" in msg
    if not torch.cuda.is_available():
        msg = one_error_line(capsys, "evaluate", ["--ckpt_path", pretrained, *ev, "--device", "cuda"])
        assert "no CUDA GPU" in msg


def test_a_fresh_run_refuses_a_run_directory_that_holds_checkpoints(pretrained, synth_root, capsys):
    run_dir = os.path.dirname(os.path.dirname(pretrained))
    before = open(pretrained, "rb").read()
    msg = one_error_line(capsys, "pretrain", ["--config", config("pretrain", "eat_tiny.yaml"), "--data.root", synth_root,
                                              "--trainer.max_steps", "1", "--trainer.default_root_dir", run_dir,
                                              "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"])
    assert "already holds the checkpoints of an earlier run" in msg and "--ckpt_path last" in msg
    assert open(pretrained, "rb").read() == before


def test_resuming_from_the_wrong_checkpoint_fails_before_training(pretrained, synth_root, tmp_path, capsys):
    common = ["--data.root", synth_root, "--trainer.max_steps", "3", "--data.num_workers", "0",
              "--trainer.enable_progress_bar", "false", "--ckpt_path", pretrained]
    cases = [  # (run dir, verb, config, extra arguments, what the message must say); the checkpoint is an EAT one
        ("a", "pretrain", ("pretrain", "mae_tiny.yaml"), [], ["written by the 'eat' objective", "'mae'"]),
        ("b", "pretrain", ("pretrain", "eat_tiny.yaml"), ["--model.init_args.encoder.depth", "2"],
         ["another encoder", "depth: checkpoint 4 vs this run 2"]),
        ("c", "finetune", ("finetune", "tiny.yaml"), [], ["is a pretrain checkpoint", "--model.init_from"]),
        ("d", "pretrain", ("pretrain", "eat_tiny.yaml"), ["--model.init_args.decoder_layers", "2"],
         ["does not fit this run's model", "decoder."]),
    ]
    for run, verb, cfg, extra, expected in cases:
        msg = one_error_line(capsys, verb, ["--config", config(*cfg), *common,
                                            "--trainer.default_root_dir", str(tmp_path / run), *extra])
        assert all(e in msg for e in expected), (run, msg)
    assert not any((tmp_path / d / "checkpoints").exists() for d in "abcd")


def _tone(i: int):
    return np.sin(np.arange(4000) * (0.05 + 0.01 * i)).astype("float32"), 16000


def test_eval_fold_outside_the_dataset_folds_is_an_error(tmp_path):
    from audiossl.data import AudioDataModule, LabelSpace
    from audiossl.data.writer import Clip, WriterOptions, write_dataset

    clips = [Clip(f"c{i}", "train", {"id": str(i), "labels": ["a"], "label_idx": [0], "fold": 1 + i % 2},
                  render=functools.partial(_tone, i)) for i in range(8)]
    write_dataset(tmp_path / "ds", clips, labels=LabelSpace.from_names(["a"]), multi_label=False,
                  options=WriterOptions(workers=0, progress=False))
    dm = AudioDataModule(str(tmp_path / "ds"), eval_fold=5, batch_size=2, num_workers=0)
    with pytest.raises(UserError, match=r"eval_fold 5 is not a fold .* has folds \[1, 2\]"):
        dm.setup("fit")
    dm = AudioDataModule(str(tmp_path / "ds"), eval_fold=2, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert dm.train_size == 4


def test_re_export_replaces_the_model_and_drops_its_stale_onnx(tmp_path, capsys):
    from audiossl.hub.export import ONNX_FILE, load_model, save_model
    from audiossl.models.classifier import AudioClassifier

    enc = {"name": "vit_tiny", "depth": 1, "embed_dim": 32, "num_heads": 2}
    a = AudioClassifier(encoder=enc, head={"num_classes": 3}, front_end={"target_length": 64}, label_names=list("abc"))
    b = AudioClassifier(encoder=enc, head=None, front_end={"target_length": 64})
    save_model(a, tmp_path / "m")
    (tmp_path / "m" / ONNX_FILE).write_bytes(b"the graph of model a")
    save_model(b, tmp_path / "m")
    err = capsys.readouterr().err
    assert "replacing the model" in err and "removed the old" in err
    assert not (tmp_path / "m" / ONNX_FILE).exists()
    assert not load_model(tmp_path / "m").has_head
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt safetensors"):
        load_model(tmp_path / "m")


def test_metrics_json_is_strict_json_when_a_metric_is_undefined(tmp_path):
    from audiossl.tasks.evaluate import write_outputs
    from audiossl.tasks.metrics import classification_metrics

    scores = torch.tensor([[0.9, 0.1], [0.8, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # class 0 has no negatives, class 1 no positives: no AUC at all
    m = classification_metrics(scores, targets)
    assert m["mAUC"] != m["mAUC"]  # NaN
    write_outputs(tmp_path, m, ["a", "b"], scores, targets, ["x", "y"])
    summary = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary["mAUC"] is None and summary["mAP"] == pytest.approx(1.0)


def test_dotted_overrides_of_dict_settings_get_the_field_types():
    """``--model.init_args.encoder.depth 2`` reaches the encoder spec as the text '2'."""
    from audiossl.frontend.features import FrontEndConfig
    from audiossl.models.encoder import build_encoder

    enc = build_encoder({"name": "vit_tiny", "depth": "2", "embed_dim": "64", "num_heads": "4", "qkv_bias": "false"})
    assert (enc.config.depth, enc.config.embed_dim, enc.config.qkv_bias) == (2, 64, False) and len(enc.blocks) == 2
    fe = FrontEndConfig.from_dict({"target_length": "512", "mean": "-4.5", "std": "3.5"})
    assert (fe.target_length, fe.mean, fe.std) == (512, -4.5, 3.5)
    with pytest.raises(ValueError, match="depth='two' must be int"):
        build_encoder({"name": "vit_tiny", "depth": "two"})


def test_bad_dotted_overrides_are_one_line(synth_root, tmp_path, capsys):
    base = ["--config", config("pretrain", "eat_tiny.yaml"), "--data.root", synth_root,
            "--trainer.default_root_dir", str(tmp_path)]
    assert "depth='two' must be int" in one_error_line(capsys, "pretrain", base + ["--model.init_args.encoder.depth", "two"])
    assert "unknown encoder settings ['dept']" in one_error_line(
        capsys, "pretrain", base + ["--model.init_args.encoder.dept", "2"])


def test_a_run_resumes_from_its_own_saved_config(pretrained, tmp_path):
    """``--config RUN/config.yaml`` lists the run's checkpoint callbacks already; they are not added twice."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(os.path.dirname(os.path.dirname(pretrained)), run)
    text = (run / "config.yaml").read_text().replace(os.path.dirname(os.path.dirname(pretrained)), str(run))
    (run / "config.yaml").write_text(text)
    assert main(["pretrain", "--config", str(run / "config.yaml"), "--trainer.max_steps", "3",
                 "--ckpt_path", "last"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3


def test_demo_replaces_only_its_own_runs(tmp_path, monkeypatch):
    """A re-run of the demo into a folder replaces the demo's run folders and leaves any other run alone."""
    from audiossl.cli import demo

    mine = tmp_path / "runs" / "my_run" / "checkpoints"
    mine.mkdir(parents=True)
    (mine / "last.ckpt").write_bytes(b"precious")
    old = tmp_path / "runs" / "pretrain" / "checkpoints"
    old.mkdir(parents=True)
    (old / "last.ckpt").write_bytes(b"old demo")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(demo.Stages, "run", stop)  # stop right after the clean-up
    with pytest.raises(Stop):
        demo.main(["--out", str(tmp_path)])
    assert (mine / "last.ckpt").read_bytes() == b"precious"
    assert not (tmp_path / "runs" / "pretrain").exists()


def test_fine_tuning_resume_checks_labels_and_encoder(synth_root, tmp_path, capsys):
    from audiossl.data import LabelSpace
    from audiossl.data.writer import Clip, WriterOptions, write_dataset

    run = str(tmp_path / "ft")
    common = ["--config", config("finetune", "tiny.yaml"), "--data.num_workers", "0",
              "--trainer.enable_progress_bar", "false"]
    assert main(["finetune", *common, "--data.root", synth_root, "--trainer.max_steps", "1",
                 "--trainer.default_root_dir", run]) == 0
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    other = tmp_path / "other"
    clips = [Clip(f"c{i}", "train", {"id": str(i), "labels": ["a"], "label_idx": [0]}, render=functools.partial(_tone, i))
             for i in range(4)]
    write_dataset(other, clips, labels=LabelSpace.from_names(["a"]), multi_label=False,
                  options=WriterOptions(workers=0, progress=False))
    resume = [*common, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "r"), "--ckpt_path", ckpt]
    msg = one_error_line(capsys, "finetune", [*resume, "--data.root", str(other)])
    assert "is a classifier of 16 labels, the dataset" in msg and "has 1" in msg
    msg = one_error_line(capsys, "finetune", [*resume, "--data.root", synth_root, "--model.encoder.depth", "2"])
    assert "another encoder" in msg and "depth: checkpoint 4 vs this run 2" in msg


def test_metrics_json_is_strict_json_when_the_ranking_is_perfect(tmp_path):
    """AUC 1 gives d' = inf; metrics.json (and the demo's results.json, through the same json_safe) writes null."""
    from audiossl.tasks.evaluate import json_safe, write_outputs
    from audiossl.tasks.metrics import classification_metrics

    scores = torch.tensor([[0.9, 0.1], [0.2, 0.7]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = classification_metrics(scores, targets)
    assert m["mAUC"] == 1.0 and m["d_prime"] == float("inf")
    write_outputs(tmp_path, m, ["a", "b"], scores, targets, ["x", "y"])
    summary = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary["d_prime"] is None and summary["mAUC"] == 1.0
    assert json_safe({"a": [float("nan"), 1.0, (float("-inf"),)]}) == {"a": [None, 1.0, [None]]}
