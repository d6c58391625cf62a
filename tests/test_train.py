"""The training verbs end to end: every shipped YAML instantiates; each tiny objective trains with real Trainers on
real shards and writes self-describing checkpoints; a resumed run continues exactly."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from helpers import config, synth_root, tb_scalars  # noqa: F401  (fixture)

from audiossl.cli.train import build_cli, latest_checkpoint, pretrain

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
    from audiossl.objectives import OBJECTIVES

    base = os.path.basename(path)  # <objective>_<variant>.yaml (beats_tokenizer_tiny.yaml: beats_tokenizer)
    assert cli.model.objective == max((k for k in OBJECTIVES if base.startswith(k + "_")), key=len)


@pytest.mark.parametrize("path", FINETUNE_YAMLS, ids=os.path.basename)
def test_finetune_config_instantiates_and_builds(path, synth_root, tmp_path):
    from audiossl.tasks.finetune import FinetuneModule

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
    # and the decoder from EAT's decoder (fairseq continue_once loads the whole model), not from a fresh init
    d0, d1 = eat["decoder.convs.0.weight"], ss["state_dict"]["decoder.convs.0.weight"]
    assert (d0 - d1).abs().max() < 1e-2 and (d1 - d0).abs().max() < 0.1 * d0.abs().max()


def test_init_from_continues_student_decoder_and_teacher_exactly(eat_run):
    """SSLAM stage 2 = fairseq ``continue_once`` of EAT: a strict load of the student, the CNN decoder and ``_ema``."""
    from audiossl.objectives import SSLAM

    init = os.path.join(eat_run, "checkpoints", "last.ckpt")
    eat = torch.load(init, map_location="cpu", weights_only=True)["state_dict"]
    m = SSLAM(encoder={"name": "vit_tiny", "depth": 4, "embed_dim": 128, "num_heads": 4, "block_style": "post"},
              front_end={"target_length": 192}, clone_batch=4, mask_block=3, decoder_layers=3, unmixed_frames=32,
              init_from=init)
    fresh = {k: v.clone() for k, v in m.state_dict().items()}
    m.load_init(init)
    got = m.state_dict()
    assert set(got) == set(eat)
    for k, v in eat.items():
        assert torch.equal(got[k], v), k
    assert not torch.equal(fresh["decoder.convs.0.weight"], got["decoder.convs.0.weight"])
    # an SSLAM with another decoder shape keeps its own decoder, and says so
    m = SSLAM(encoder={"name": "vit_tiny", "depth": 4, "embed_dim": 128, "num_heads": 4, "block_style": "post"},
              front_end={"target_length": 192}, clone_batch=4, mask_block=3, decoder_layers=3, decoder_kernel=5,
              unmixed_frames=32)
    with pytest.warns(UserWarning, match=r"entries besides the encoder start fresh.*decoder\.convs\.0\.weight"):
        m.load_init(init)
    # another normalisation than the one the EAT encoder was trained with is named, with the checkpoint's
    fe = torch.load(init, map_location="cpu", weights_only=True)["audiossl"]["front_end"]
    m = SSLAM(encoder={"name": "vit_tiny", "depth": 4, "embed_dim": 128, "num_heads": 4, "block_style": "post"},
              front_end={"target_length": 192, "mean": -5.0, "std": 4.0}, clone_batch=4, mask_block=3,
              decoder_layers=3, unmixed_frames=32)
    with pytest.warns(UserWarning, match=rf"mean -5\.0000, std 4\.0000 from the config's front_end.*trained with mean "
                                         rf"{fe['mean']:.4f}"):
        m.load_init(init)


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


AS_PRETRAIN = {"eat_base_as2m.yaml": -4.268, "sslam_base_as2m.yaml": -4.268, "mae_base_as2m.yaml": -4.2677393,
               "jepa_base_as2m.yaml": -4.268}
AS_FINETUNE = {"as20k.yaml": -4.268, "as2m.yaml": -4.268, "as2m_sslam.yaml": -4.268, "as20k_audiomae.yaml": -4.2677393,
               "as2m_audiomae.yaml": -4.2677393, "as2m_ast.yaml": -4.2677393, "as20k_ast.yaml": -4.2677393}


def test_audioset_recipes_pin_the_reference_normalisation(synth_root, tmp_path):
    """Dataset statistics (``audiossl stats``) must not replace the reference constants the AudioSet recipes follow;
    the MAE recipe decays by AudioMAE's 1e-4 and decodes with its local windows."""
    from audiossl.tasks.finetune import FinetuneModule
    from audiossl.models.swin_decoder import SwinDecoder
    from audiossl.objectives import PretrainModule
    from audiossl.objectives.base import resolve_front_end

    other = {"mean": -1.0, "std": 1.0}  # what a user's copy could measure
    for name, mean in AS_PRETRAIN.items():
        cli = build_cli(PretrainModule, ["--config", config("pretrain", name), "--data.root", synth_root,
                                         "--trainer.default_root_dir", str(tmp_path), *CPU], "runs/pretrain", True)
        fe = resolve_front_end(cli.model._front_end_spec, other)
        assert (fe.mean, fe.std) == (mean, 4.569 if mean == -4.268 else 4.5689974), name
        if name.startswith("mae"):
            assert cli.model.hparams.weight_decay == 1e-4 and isinstance(cli.model.decoder, SwinDecoder)
            assert len(cli.model.decoder.blocks) == 16 and cli.model.decoder.dim == 512
    for name, mean in AS_FINETUNE.items():
        cli = build_cli(FinetuneModule, ["--config", config("finetune", name), "--data.root", synth_root,
                                         "--trainer.default_root_dir", str(tmp_path), *CPU], "runs/finetune", False)
        cli.model.build(16, [str(i) for i in range(16)], True, other)
        assert cli.model.model.front_end.config.mean == mean, name


def test_window_follows_the_data_when_the_config_leaves_it_open(synth_root, tmp_path):
    """No clip_seconds and no target_length: the data's clip length (2 s here) sets the window, whole patches, and
    the checkpoint records it; the fine-tuning side does the same."""
    root = str(tmp_path / "pre")
    _run_pretrain("eat_tiny.yaml", root, synth_root, 1, "--data.clip_seconds", "null",
                  "--model.init_args.front_end", "{}")
    ckpt = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["audiossl"]["front_end"]["target_length"] == 208  # 2 s = 198 frames -> 13 patches of 16
    assert ckpt["datamodule_hyper_parameters"]["clip_seconds"] == 2.0
    from audiossl.tasks.finetune import FinetuneModule

    cli = build_cli(FinetuneModule, ["--config", config("finetune", "tiny.yaml"), "--data.root", synth_root,
                                     "--data.clip_seconds", "null", "--model.front_end", "{}",
                                     "--trainer.default_root_dir", str(tmp_path / "ft"), *CPU], "runs/ft", False)
    dm = cli.datamodule
    cli.model.build(dm.num_classes, dm.label_names, dm.multi_label, dm.stats, dm.sample_rate, dm)
    assert cli.model.model.front_end.config.target_length == 208


def test_stats_follow_the_config_front_end_and_other_stats_warn(synth_root, tmp_path, capsys):
    """``audiossl stats --config`` measures with the run's front end (the small recipe: 64 bins, 2.5 ms hop) and
    records it; stats measured with another front end still normalise, with a warning naming the difference."""
    import math
    import shutil
    import warnings

    from audiossl.data.manifest import read_manifest
    from audiossl.data.stats import compute_stats, config_front_end, main, stats_mismatch
    from audiossl.errors import ConfigError
    from audiossl.frontend.features import FrontEndConfig
    from audiossl.objectives.base import resolve_front_end

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    small = config("pretrain", "mae_small.yaml")
    assert main([str(root), "--config", small, "--max-clips", "8", "--quiet"]) == 0
    assert "64 mel bins at a 2.5 ms hop" in capsys.readouterr().out
    stats = read_manifest(root).stats
    assert stats["front_end"]["num_mel_bins"] == 64 and stats["front_end"]["frame_shift"] == 2.5
    default = compute_stats(root, max_clips=8, progress=False)  # 128 bins at 10 ms: another mean
    assert abs(default["mean"] - stats["mean"]) > 0.05
    fe = config_front_end(small)
    assert stats_mismatch(stats, fe) == [] and stats_mismatch(default, fe) == [
        "num_mel_bins 128/64", "frame_shift 10/2.5"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_front_end({"num_mel_bins": 64, "frame_shift": 2.5}, stats).mean == stats["mean"]
        assert not [w for w in caught if "another front end" in str(w.message)]
        assert resolve_front_end({"num_mel_bins": 64, "frame_shift": 2.5}, default).mean == default["mean"]
        assert [w for w in caught if "another front end (num_mel_bins 128/64" in str(w.message)]
        resolve_front_end({"num_mel_bins": 64, "frame_shift": 2.5, "mean": -4.0, "std": 4.0}, default)  # pinned
        assert len([w for w in caught if "another front end" in str(w.message)]) == 1
    # window type and waveform scale count too (BEATs' povey window and int16 scale); stats recorded before they were
    # stored were measured with the Hann window at scale 1
    povey = FrontEndConfig(num_mel_bins=64, frame_shift=2.5, window_type="povey", waveform_scale=32768.0)
    scaled = compute_stats(root, max_clips=8, front_end=povey, progress=False)
    assert scaled["front_end"]["window_type"] == "povey"
    assert abs(scaled["mean"] - stats["mean"] - 2 * math.log(32768)) < 0.2  # power x 32768^2
    assert stats_mismatch(stats, povey) == ["window_type hanning/povey", "waveform_scale 1/32768"]
    old = {**stats, "front_end": {k: v for k, v in stats["front_end"].items()
                                  if k not in ("window_type", "waveform_scale")}}
    assert stats_mismatch(old, fe) == [] and stats_mismatch(old, povey) == stats_mismatch(stats, povey)
    assert stats_mismatch(default, FrontEndConfig(spectrogram="mel_db_minmax", num_mel_bins=64)) == []  # BAT: none used
    with pytest.raises(ConfigError, match="uses no dataset statistics"):
        config_front_end(config("pretrain", "bat_small.yaml"))
    assert main([str(root), "--config", config("pretrain", "bat_small.yaml"), "--quiet"]) == 1
    assert "uses no dataset statistics" in capsys.readouterr().err
    assert main([str(root), "--num-mel-bins", "32", "--print-only", "--quiet"]) == 0
    assert "32 mel bins at a 10 ms hop" in capsys.readouterr().out
    assert read_manifest(root).stats["front_end"]["num_mel_bins"] == 64  # --print-only wrote nothing
