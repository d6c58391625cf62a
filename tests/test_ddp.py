"""Distributed and interrupted training on CPU: two DDP ranks (gloo) through the real ``audiossl`` CLI in subprocesses.

* data under DDP: within an epoch the (rank, worker) readers get disjoint shards, every rank the same number of
  batches; an evaluation pass sees every sample exactly once and gathers scores for exactly the evaluation keys;
* the EMA teacher under DDP without ``find_unused_parameters``;
* SIGKILL mid-training, then ``--ckpt_path last``: same step counter, the same batches and the loss curve of the
  uninterrupted run (relative tolerance 1e-4 per logged loss);
* a SIGKILL in the middle of a checkpoint write leaves the previous ``last.ckpt`` intact;
* gradient accumulation: the teacher moves once per optimizer step, and step checkpoints hold that update.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch
from helpers import ROOT, config, synth_root  # noqa: F401  (fixture)

TESTS = os.path.dirname(os.path.abspath(__file__))
TINY_ENCODER = "{name: vit_tiny, depth: 2, embed_dim: 64, num_heads: 4, block_style: post}"
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
       "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
       "--trainer.callbacks+=ddp_probe.KeyProbe"]
# 64 training clips in 4 shards of 16; 2 ranks x 2 workers = 4 reading slots; batches of 8 -> 4 batches per rank and
# epoch, 2 per worker: each slot reads exactly one whole shard per epoch.
PRETRAIN = ["--config", config("pretrain", "eat_tiny.yaml"), "--model.init_args.encoder", TINY_ENCODER,
            "--model.init_args.clone_batch", "2", "--model.init_args.decoder_layers", "2",
            "--data.batch_size", "8", "--data.num_workers", "2", "--trainer.max_steps", "8"]
LOSS_RTOL = 1e-4


def subprocess_env(probe_dir: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not a SLURM job, even inside one
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["AUDIOSSL_PROBE_DIR"] = probe_dir
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a small machine
    env.update(extra)
    return env


def start(verb: str, args: list[str], run_dir: str, log: str, **env: str) -> subprocess.Popen:
    """``python -m audiossl VERB ...`` in its own session (so the whole process group can be killed)."""
    cmd = [sys.executable, "-m", "audiossl", verb, *args, "--trainer.default_root_dir", run_dir]
    return subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(os.path.join(run_dir, "probe"), **env),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: str, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = "timeout"
    if rc != 0:
        raise AssertionError(f"{proc.args} exited with {rc}:\n{open(log, errors='replace').read()[-6000:]}")


def probes(run_dir: str) -> dict[int, dict]:
    """``{rank: probe record}`` of the newest fit in ``run_dir``."""
    out: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "probe", "*.json")), key=os.path.getmtime):
        rec = json.load(open(path))
        out[rec["rank"]] = rec
    return out


def shard_keys(root: str, split: str) -> dict[str, str]:
    """``{sample key: shard file}`` read from the tar shards themselves."""
    out = {}
    for shard in sorted(glob.glob(os.path.join(root, split, "*.tar"))):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                out[name.split(".", 1)[0]] = os.path.basename(shard)
    return out


def event_scalars(path: str, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(path, size_guidance={"scalars": 0})
    ea.Reload()
    return {e.step: e.value for e in ea.Scalars(tag)} if tag in ea.Tags()["scalars"] else {}


def run_losses(run_dir: str) -> list[dict[int, float]]:
    """Rank 0's ``train/loss`` per event file (one file per fit), oldest first."""
    files = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")), key=os.path.getmtime)
    return [event_scalars(f, "train/loss") for f in files]


# --- an uninterrupted 2-rank EAT run: the reference ------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory) -> str:
    run = str(tmp_path_factory.mktemp("ddp_reference"))
    log = os.path.join(run, "log.txt")
    finish(start("pretrain", [*PRETRAIN, "--data.root", synth_root, *DDP], run, log), log)
    return run


def test_ddp_training_shards_are_disjoint_and_ranks_get_equal_batches(reference, synth_root):
    p = probes(reference)
    assert sorted(p) == [0, 1], "one probe record per rank"
    where = shard_keys(synth_root, "train")
    assert len(where) == 64 and len(set(where.values())) == 4
    for rank, rec in p.items():
        assert rec["world_size"] == 2 and rec["strategy"] == "DDPStrategy" and rec["num_workers"] == 2
        # the EMA teacher (requires_grad False) trains under DDP without unused-parameter detection
        assert rec["find_unused_parameters"] is False
        assert rec["global_step"] == 8 and len(rec["train"]) == 8
    for epoch in (0, 1):
        slots: dict[tuple[int, int], list[str]] = {}
        for rank, rec in p.items():
            batches = [b for b in rec["train"] if b["epoch"] == epoch]
            assert len(batches) == 4, (rank, epoch)  # the same number of batches on every rank
            for b in batches:
                assert len(b["keys"]) == 8
                # the DataLoader takes batch j of a rank from worker j % num_workers
                slots.setdefault((rank, b["batch_idx"] % 2), []).extend(b["keys"])
        shards_of = {slot: {where[k] for k in keys} for slot, keys in slots.items()}
        assert sorted(slots) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert all(len(s) == 1 for s in shards_of.values()), shards_of  # each slot reads its own shard ...
        assert len({next(iter(s)) for s in shards_of.values()}) == 4, shards_of  # ... and no two slots the same one
        seen = [k for keys in slots.values() for k in keys]
        assert len(seen) == len(set(seen)) == 64  # so the epoch is every training sample exactly once


def test_ddp_kill_and_resume_matches_the_uninterrupted_run(reference, synth_root, tmp_path):
    """SIGKILL (every process of the run) after a checkpoint, resume with --ckpt_path last: same steps, same batches,
    the same losses as the reference within LOSS_RTOL, and the same final weights."""
    run = str(tmp_path / "killed")
    os.makedirs(run)
    args = [*PRETRAIN, "--data.root", synth_root, "--checkpoint_every_n_steps", "2", *DDP]
    log = os.path.join(run, "log1.txt")
    proc = start("pretrain", args, run, log, AUDIOSSL_PROBE_SLEEP="0.5")  # slowed, so the kill lands mid-run
    last = os.path.join(run, "checkpoints", "last.ckpt")
    deadline = time.time() + 240
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    rc = proc.wait()
    assert rc == -signal.SIGKILL, f"the run ended before it was killed (rc {rc}):\n{open(log).read()[-4000:]}"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= step < 8

    log2 = os.path.join(run, "log2.txt")
    finish(start("pretrain", [*args, "--ckpt_path", "last"], run, log2), log2)
    assert "resuming from" in open(log2).read()

    ref_losses = run_losses(reference)[-1]
    resumed = run_losses(run)[-1]
    assert sorted(resumed) == list(range(step, 8)), "the resumed run continues the step counter"
    for s in resumed:
        assert abs(resumed[s] - ref_losses[s]) <= LOSS_RTOL * abs(ref_losses[s]), (s, resumed[s], ref_losses[s])
    # the same batches on each rank at each step after the resume: the data stream continued, not restarted
    ref_p, res_p = probes(reference), probes(run)
    for rank in (0, 1):
        ref_keys = {b["global_step"]: b["keys"] for b in ref_p[rank]["train"]}
        res_keys = {b["global_step"]: b["keys"] for b in res_p[rank]["train"]}
        assert sorted(res_keys) == list(range(step + 1, 9))
        assert all(res_keys[s] == ref_keys[s] for s in res_keys), rank
    a = torch.load(os.path.join(reference, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for k in ("encoder.blocks.1.mlp.fc2.weight", "teacher.model.blocks.1.mlp.fc2.weight", "decoder.proj.weight"):
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-4, atol=1e-6, msg=k)
    ea, eb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(int(ea[i]["step"]) == int(eb[i]["step"]) == 8 for i in ea)  # AdamW's own step counts
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 8


def test_ddp_evaluation_sees_every_sample_once_and_gathers_exactly_the_eval_keys(synth_root, tmp_path):
    run = str(tmp_path / "finetune")
    os.makedirs(run)
    args = ["--config", config("finetune", "tiny.yaml"), "--data.root", synth_root, "--model.encoder", TINY_ENCODER,
            "--data.batch_size", "8", "--data.eval_batch_size", "3", "--data.num_workers", "2",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0",
            *DDP]
    log = os.path.join(run, "log.txt")
    finish(start("finetune", args, run, log), log)
    eval_keys = set(shard_keys(synth_root, "eval"))
    assert len(eval_keys) == 16
    p = probes(run)
    assert sorted(p) == [0, 1]
    per_rank = {r: [k for batch in rec["val"] for k in batch] for r, rec in p.items()}
    assert all(per_rank.values()), "both ranks evaluate"
    union = per_rank[0] + per_rank[1]
    assert len(union) == len(set(union)) and set(union) == eval_keys  # every sample exactly once over the ranks
    for rec in p.values():
        assert len(rec["gathered"]) == 1  # one validation pass
        gathered = rec["gathered"][0]
        assert sorted(gathered) == sorted(eval_keys)  # the score rows are exactly the evaluation keys ...
        assert gathered == per_rank[0] + per_rank[1]  # ... in rank order, the same on every rank
        assert len(rec["train"]) == 2


# --- atomic checkpoint writes --------------------------------------------------------------------------------------
_SLOW_SAVE = r"""
import io, sys, time, torch
from audiossl.hub.checkpoint_writer import AtomicCheckpointIO
path = sys.argv[1]
ckio = AtomicCheckpointIO()
ckio.save_checkpoint({"global_step": 1, "w": torch.full((4096,), 1.0)}, path)
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):  # write half of the real bytes, then stall: the kill lands mid-write
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    print("HALF-WRITTEN", flush=True)
    time.sleep(120)
torch.save = slow_save
ckio.save_checkpoint({"global_step": 2, "w": torch.full((4096,), 2.0)}, path)
"""


def test_kill_during_checkpoint_write_keeps_the_previous_last_ckpt(tmp_path):
    path = str(tmp_path / "checkpoints" / "last.ckpt")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, path], cwd=ROOT, stdout=subprocess.PIPE,
                            env=subprocess_env(str(tmp_path)))
    line = proc.stdout.readline().decode()
    assert line.strip() == "HALF-WRITTEN", line
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert ck["global_step"] == 1 and torch.equal(ck["w"], torch.full((4096,), 1.0))
    # the interrupted write exists only as a temporary file, and it is indeed unreadable
    partial = glob.glob(str(tmp_path / "checkpoints" / ".last.ckpt.tmp-*"))
    assert len(partial) == 1 and os.path.getsize(partial[0]) > 0
    with pytest.raises(Exception):
        torch.load(partial[0], map_location="cpu", weights_only=True)


# --- gradient accumulation and the EMA teacher ---------------------------------------------------------------------
def test_teacher_moves_once_per_optimizer_step_and_step_checkpoints_hold_it(synth_root, tmp_path, monkeypatch):
    from audiossl.objectives import PretrainModule
    from audiossl.objectives.ema import EMATeacher
    from audiossl.cli.train import build_cli

    steps: list[int] = []
    real_update = EMATeacher.update

    def recording_update(self, student, step):
        steps.append(int(step))
        return real_update(self, student, step)

    monkeypatch.setattr(EMATeacher, "update", recording_update)
    cli = build_cli(PretrainModule, [
        "--config", config("pretrain", "eat_tiny.yaml"), "--data.root", synth_root, "--model.init_args.encoder",
        TINY_ENCODER, "--model.init_args.clone_batch", "2", "--model.init_args.decoder_layers", "2",
        "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "2", "--checkpoint_every_n_steps", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)], "runs/pretrain", True)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2
    assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4  # 4 micro-batches, 2 optimizer steps
    assert steps == [1, 2]  # one EMA update per optimizer step, numbered by the update count
    # the step-2 checkpoint is written in on_train_batch_end: it must already hold the step-2 teacher update
    ck = torch.load(tmp_path / "checkpoints" / "step00000002.ckpt", map_location="cpu", weights_only=True)
    live = cli.model.teacher.model.state_dict()
    for name, value in live.items():
        assert torch.equal(ck["state_dict"][f"teacher.model.{name}"], value), name


# --- FSDP ------------------------------------------------------------------------------------------------------------
def test_fsdp_with_an_ema_teacher_is_refused_with_a_clear_message():
    """FSDP cannot run on CPU (Lightning and torch both require CUDA for it), so this checks the guard only: an
    objective with an EMA teacher refuses FSDP at set-up instead of pairing unrelated shards in the EMA."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from audiossl.objectives import EAT

    m = EAT(encoder={"name": "vit_tiny", "depth": 1, "embed_dim": 64, "num_heads": 4, "block_style": "post"},
            clone_batch=2, decoder_layers=1)
    m._trainer = SimpleNamespace(strategy=FSDPStrategy.__new__(FSDPStrategy), datamodule=None)
    with pytest.raises(ValueError, match="strategy ddp"):
        m.setup("fit")
    m._trainer = SimpleNamespace(strategy=DDPStrategy.__new__(DDPStrategy), datamodule=None)
    m.setup("fit")  # DDP is fine


# --- a rank without evaluation samples -------------------------------------------------------------------------------
def _eval_epoch_end_worker(rank: int, init: str, out: str) -> None:
    """Rank 0 scores 4 clips, rank 1 none (an evaluation set smaller than the reading slots); both end the epoch."""
    from datetime import timedelta
    from types import SimpleNamespace

    import torch.distributed as dist

    from audiossl.tasks.finetune import FinetuneModule

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        m = FinetuneModule(encoder={"name": "vit_tiny", "depth": 1, "embed_dim": 32, "num_heads": 2,
                                    "block_style": "post"}, front_end={"target_length": 32})
        m.build(3, ["a", "b", "c"], True, None)
        m.eval()

        def all_gather(t: torch.Tensor) -> torch.Tensor:
            parts = [torch.zeros_like(t) for _ in range(2)]
            dist.all_gather(parts, t.contiguous())
            return torch.stack(parts)

        m.all_gather = all_gather
        m._trainer = SimpleNamespace(world_size=2)
        logged: dict = {}
        m.log_dict = lambda d, **kw: logged.update(d)
        m.on_validation_epoch_start()
        if rank == 0:
            g = torch.Generator().manual_seed(0)
            for i in range(2):
                target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
                m.validation_step({"audio": torch.randn(2, 6000, generator=g), "target": target,
                                   "key": [f"clip{i}a", f"clip{i}b"]}, i)
        m.on_validation_epoch_end()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"keys": m.eval_keys, "logged": sorted(logged)}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_evaluation_epoch_end_with_a_rank_that_saw_no_sample(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_eval_epoch_end_worker, args=(f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish the evaluation epoch together (a rank skipped a collective)")
    for rank in (0, 1):
        rec = json.load(open(tmp_path / f"rank{rank}.json"))
        assert rec["keys"] == ["clip0a", "clip0b", "clip1a", "clip1b"]  # gathered on both ranks
        assert "val/mAP" in rec["logged"]
