"""The training verbs end to end: every shipped YAML instantiates; each tiny objective trains with real Trainers on
real shards and writes self-describing checkpoints; a resumed run continues exactly."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from helpers import config, synth_root, tb_scalars  # noqa: F401  (fixture)

from audiossl.train_cli import build_cli, latest_checkpoint, pretrain

CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"]
PRETRAIN_YAMLS = sorted(glob.glob(config("pretrain", "*.yaml")))
FINETUNE_YAMLS = sorted(glob.glob(config("finetune", "*.yaml")))


@pytest.mark.parametrize("path", PRETRAIN_YAMLS, ids=os.path.basename)
def test_pretrain_config_instantiates(path, synth_root, tmp_path):
    from audiossl.objectives import PretrainModule

    cli = build_cli(PretrainModule, ["--config", path, "--data.root", synth_root,
                                     "--trainer.default_root_dir", str(tmp_path), *CPU], "runs/pretrain", True)
    assert isinstance(cli.model, PretrainModule)
    assert cli.trainer.max_steps > 0 and cli.datamodule.num_classes == 16
    name = os.path.basename(path).split("_")[0]
    assert cli.model.objective == name


@pytest.mark.parametrize("path", FINETUNE_YAMLS, ids=os.path.basename)
def test_finetune_config_instantiates_and_builds(path, synth_root, tmp_path):
    from audiossl.finetune import FinetuneModule

    cli = build_cli(FinetuneModule, ["--config", path, "--data.root", synth_root,
                                     "--trainer.default_root_dir", str(tmp_path), *CPU], "runs/finetune", False)
    dm = cli.datamodule
    cli.model.build(dm.num_classes, dm.label_names, dm.multi_label, dm.stats)
    assert cli.model.model.head.linear.out_features == 16
    assert cli.model.model.front_end.config.target_length in (192, 512, 1024)


def _run_pretrain(cfg: str, root: str, data: str, steps: int, *extra: str) -> None:
    assert pretrain(["--config", config("pretrain", cfg), "--data.root", data, "--trainer.max_steps", str(steps),
                     "--trainer.default_root_dir", root, "--data.num_workers", "0", "--trainer.log_every_n_steps", "1",
                     "--trainer.enable_progress_bar", "false", *extra]) == 0


@pytest.fixture(scope="module")
def eat_run(synth_root, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("eat_run"))
    _run_pretrain("eat_tiny.yaml", root, synth_root, 3)
    return root


def test_eat_run_layout_and_checkpoint_metadata(eat_run):
    assert os.path.isfile(os.path.join(eat_run, "checkpoints", "last.ckpt"))
    assert os.path.isfile(os.path.join(eat_run, "config.yaml"))
    assert glob.glob(os.path.join(eat_run, "events.out.tfevents.*"))
    ck = torch.load(os.path.join(eat_run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    meta = ck["audiossl"]
    assert meta["kind"] == "pretrain" and meta["objective"] == "eat" and meta["encoder"]["block_style"] == "post"
    assert meta["front_end"]["target_length"] == 192
    assert ck["global_step"] == 3
    assert any(k.startswith("teacher.model.") for k in ck["state_dict"])
    losses = tb_scalars(eat_run, "train/loss")
    assert sorted(losses) == [0, 1, 2] and all(v == v and v > 0 for v in losses.values())
    for tag in ("train/frame_loss", "train/cls_loss", "train/pred_std", "train/target_std", "train/ema_decay"):
        assert tb_scalars(eat_run, tag), tag


@pytest.mark.parametrize("cfg", ["mae_tiny.yaml", "jepa_tiny.yaml"])
def test_other_objectives_train(cfg, synth_root, tmp_path):
    _run_pretrain(cfg, str(tmp_path), synth_root, 2)
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["audiossl"]["objective"] == cfg.split("_")[0] and ck["global_step"] == 2


def test_sslam_starts_from_eat_checkpoint(eat_run, synth_root, tmp_path):
    init = os.path.join(eat_run, "checkpoints", "last.ckpt")
    _run_pretrain("sslam_tiny.yaml", str(tmp_path), synth_root, 1, "--model.init_args.init_from", init,
                  "--trainer.limit_train_batches", "1")
    eat = torch.load(init, map_location="cpu", weights_only=True)["state_dict"]
    ss = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ss["audiossl"]["objective"] == "sslam"
    # after one small step the student is close to (but not equal to) the EAT student it started from
    a, b = eat["encoder.blocks.0.mlp.fc1.weight"], ss["state_dict"]["encoder.blocks.0.mlp.fc1.weight"]
    assert not torch.equal(a, b) and (a - b).abs().max() < 1e-2
    # the teacher started from EAT's teacher
    t0 = eat["teacher.model.blocks.0.mlp.fc1.weight"]
    t1 = ss["state_dict"]["teacher.model.blocks.0.mlp.fc1.weight"]
    assert (t0 - t1).abs().max() < 1e-3


STOPS = {
    "step checkpoint": ["--trainer.max_steps", "3", "--checkpoint_every_n_steps", "3"],
    # last.ckpt written when max_steps ends the run mid-epoch (no step checkpoint at step 3)
    "max_steps": ["--trainer.max_steps", "3"],
    # a stop request mid-epoch, as the requeue signal makes (stock Lightning marked the epoch complete here)
    "stop request": ["--trainer.max_steps", "6", "--trainer.callbacks+={\"class_path\": \"ddp_probe.StopAtStep\", "
                     "\"init_args\": {\"step\": 3}}"],
}


@pytest.fixture(scope="module")
def unbroken_run(synth_root, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("unbroken"))
    _run_pretrain("eat_tiny.yaml", root, synth_root, 6)
    return root


@pytest.mark.parametrize("stop", list(STOPS))
def test_resume_continues_the_same_run(stop, unbroken_run, synth_root, tmp_path):
    """Stopped after step 3 (mid-epoch) and resumed with --ckpt_path last: steps 4-6 log the same losses and end
    with the same weights as an unbroken run, and the epoch counter stays where it was."""
    broken = str(tmp_path / "broken")
    assert pretrain(["--config", config("pretrain", "eat_tiny.yaml"), "--data.root", synth_root,
                     "--trainer.default_root_dir", broken, "--data.num_workers", "0", "--trainer.log_every_n_steps",
                     "1", "--trainer.enable_progress_bar", "false", *STOPS[stop]]) == 0
    assert latest_checkpoint(broken).endswith("last.ckpt")
    stopped = torch.load(latest_checkpoint(broken), map_location="cpu", weights_only=True)
    assert stopped["global_step"] == 3 and stopped["epoch"] == 0
    _run_pretrain("eat_tiny.yaml", broken, synth_root, 6, "--ckpt_path", "last")
    a, b = tb_scalars(unbroken_run, "train/loss"), tb_scalars(broken, "train/loss")
    assert sorted(b) == [0, 1, 2, 3, 4, 5]
    for step in (3, 4, 5):
        assert abs(a[step] - b[step]) <= 1e-4 * abs(a[step]), (step, a[step], b[step])
    assert tb_scalars(broken, "epoch") == tb_scalars(unbroken_run, "epoch")
    ck_a = torch.load(os.path.join(unbroken_run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    ck_b = torch.load(os.path.join(broken, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ck_a["global_step"] == ck_b["global_step"] == 6
    for k in ("encoder.blocks.3.mlp.fc2.weight", "teacher.model.blocks.3.mlp.fc2.weight"):
        assert torch.allclose(ck_a["state_dict"][k], ck_b["state_dict"][k], atol=1e-6), k


def test_config_typos_are_errors_that_list_valid_keys(synth_root, capsys):
    base = ["--config", config("pretrain", "eat_tiny.yaml"), "--data.root", synth_root]
    with pytest.raises(SystemExit) as e:
        pretrain(base + ["--model.init_args.clone_bach", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'clone_bach'" in err and "did you mean 'clone_batch'" in err and "mask_ratio" in err
    with pytest.raises(SystemExit):
        pretrain(base + ["--data.batch_sise", "3"])
    err = capsys.readouterr().err
    assert "did you mean 'batch_size'" in err and "valid data keys" in err and "num_workers" in err


def test_window_follows_the_data_when_the_config_leaves_it_open(synth_root, tmp_path):
    """No clip_seconds and no target_length: the data's clip length (2 s here) sets the window, whole patches, and
    the checkpoint records it; the fine-tuning side does the same."""
    root = str(tmp_path / "pre")
    _run_pretrain("eat_tiny.yaml", root, synth_root, 1, "--data.clip_seconds", "null",
                  "--model.init_args.front_end", "{}")
    ckpt = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["audiossl"]["front_end"]["target_length"] == 208  # 2 s = 198 frames -> 13 patches of 16
    assert ckpt["datamodule_hyper_parameters"]["clip_seconds"] == 2.0
    from audiossl.finetune import FinetuneModule

    cli = build_cli(FinetuneModule, ["--config", config("finetune", "tiny.yaml"), "--data.root", synth_root,
                                     "--data.clip_seconds", "null", "--model.front_end", "{}",
                                     "--trainer.default_root_dir", str(tmp_path / "ft"), *CPU], "runs/ft", False)
    dm = cli.datamodule
    cli.model.build(dm.num_classes, dm.label_names, dm.multi_label, dm.stats, dm.sample_rate, dm)
    assert cli.model.model.front_end.config.target_length == 208
