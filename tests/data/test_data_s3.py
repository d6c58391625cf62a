"""Datasets in S3, against a real S3-compatible server on 127.0.0.1 (moto's standalone server, a subprocess; the
endpoint is set the standard way, ``AWS_ENDPOINT_URL``): ``prep --out s3://``, ``stats``, the streams, faults
injected by a proxy in front of the server, and pretraining, kill + resume, fine-tuning and evaluation from the
bucket through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from datahelpers import build, make_clips, shard_keys, write_audio
from objstore import S3_ENV, Faults, make_bucket, moto_server, proxy, require_s3, reset_fsspec
from torch.utils.data import DataLoader

from audiossl.cli.main import main as cli_main
from audiossl.data import AudioDataModule, storage
from audiossl.data.manifest import read_manifest
from audiossl.data.stats import compute_stats

BUCKET = "audiossl-test"


@pytest.fixture(scope="module")
def s3():
    """The endpoint of a fresh S3 server with one bucket; the standard variables point boto at it."""
    require_s3()
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        reset_fsspec()
        make_bucket(endpoint, BUCKET)
        yield endpoint
    reset_fsspec()


def _sorted_csv(tmp_path, classes=4, per=10, seconds=0.2):
    audio_dir = tmp_path / "audio"
    rows = ["path,labels,split"]
    for c in range(classes):
        for j in range(per):
            write_audio(audio_dir / f"c{c}" / f"{j}.wav", seconds, 16000, 250.0 + 60 * c + 7 * j)
            rows.append(f"c{c}/{j}.wav,c{c},{'eval' if j % 5 == 4 else 'train'}")
    rows.append("c0/missing.wav,c0,train")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    return ["--csv", str(tmp_path / "list.csv"), "--audio-root", str(audio_dir), "--shard-size", "4",
            "--workers", "0", "--quiet"]


def objects(prefix: str) -> dict[str, bytes]:
    fs = storage.filesystem(prefix)
    fs.invalidate_cache()
    base = prefix.split("://", 1)[1].rstrip("/") + "/"
    return {p[len(base):]: fs.cat_file(p) for p in fs.find(prefix)}


def test_prep_to_s3_writes_what_a_local_prep_writes_and_no_local_folder(s3, tmp_path, monkeypatch):
    args = _sorted_csv(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    url = f"s3://{BUCKET}/speech"
    assert cli_main(["prep", "folder", *args, "--out", url]) == 0
    assert os.listdir(work) == []  # nothing named "s3:" here
    assert cli_main(["prep", "folder", *args, "--out", str(tmp_path / "local")]) == 0
    remote = objects(url)
    local = {str(p.relative_to(tmp_path / "local")): p.read_bytes() for p in (tmp_path / "local").rglob("*")
             if p.is_file()}
    assert sorted(remote) == sorted(local)
    assert "manifest.json" in remote and "rejected.tsv" in remote and any(k.startswith("eval/") for k in remote)
    for name in local:  # byte for byte, shards, rejected.tsv and manifest
        if name != "manifest.json":
            assert remote[name] == local[name], name
    assert read_manifest(url).to_dict() == read_manifest(tmp_path / "local").to_dict()
    # a re-run with fewer clips overwrites: the old shards go, the manifest lists the new ones
    (tmp_path / "list.csv").write_text("\n".join((tmp_path / "list.csv").read_text().splitlines()[:9]) + "\n")
    assert cli_main(["prep", "folder", *args, "--out", url]) == 0
    m = read_manifest(url)
    assert sorted(objects(url)) == sorted(["manifest.json", "rejected.tsv"] + [s.path for sp in m.splits.values()
                                                                               for s in sp.shards])


def test_a_crashed_prep_to_s3_lists_nothing(s3, tmp_path, monkeypatch):
    from audiossl.data import writer

    url = f"s3://{BUCKET}/crash"
    build(url, make_clips(12), shard_size=4)
    assert read_manifest(url).split("train").samples == 12
    real = writer._SplitWriter._finish
    calls = {"n": 0}

    def crash(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        real(self)

    monkeypatch.setattr(writer._SplitWriter, "_finish", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(url, make_clips(12), shard_size=4)
    with pytest.raises(FileNotFoundError, match="manifest.json is not there"):
        read_manifest(url)  # the old manifest went first; the new one was never written
    monkeypatch.setattr(writer._SplitWriter, "_finish", real)
    build(url, make_clips(12), shard_size=4)
    assert sorted(objects(url)) == ["manifest.json", "rejected.tsv"] + [f"train/train-00000{i}.tar" for i in range(3)]


@pytest.fixture(scope="module")
def s3_set(s3, tmp_path_factory):
    """The same small dataset locally and in the bucket: 40 training clips in 8 shards, 8 evaluation clips."""
    local = tmp_path_factory.mktemp("s3set") / "ds"
    clips = make_clips(40, seconds=0.2) + make_clips(8, "eval", seconds=0.2)
    build(local, clips, shard_size=5)
    url = f"s3://{BUCKET}/set"
    build(url, clips, shard_size=5)
    return local, url


def _batches(ds, workers=0):
    return list(DataLoader(ds, batch_size=None, num_workers=workers))


def _same(a, b):
    assert [x["key"] for x in a] == [y["key"] for y in b]
    assert all(torch.equal(x["audio"], y["audio"]) and torch.equal(x["target"], y["target"]) for x, y in zip(a, b))


def test_streams_and_stats_from_s3_equal_the_local_ones(s3_set, capsys):
    local, url = s3_set
    kw = {"batch_size": 4, "num_workers": 2, "seed": 1, "clip_seconds": 0.2, "retry_wait": 0.01}
    a, b = AudioDataModule(url, **kw), AudioDataModule(str(local), **kw)
    _same(_batches(a.train_dataset(0, 1), 2), _batches(b.train_dataset(0, 1), 2))
    keys = [k for r in range(2) for x in _batches(a.eval_dataset(r, 2), 2) for k in x["key"]]
    assert sorted(keys) == sorted(shard_keys(local, "eval")) and len(keys) == 8
    assert cli_main(["stats", url, "--quiet"]) == 0
    assert "written to manifest.json" in capsys.readouterr().out
    assert read_manifest(url).stats == compute_stats(local, progress=False)


def test_s3_faults_are_retried_and_counted_and_a_dead_shard_is_skipped(s3, s3_set, monkeypatch):
    local, url = s3_set
    faults = Faults(every=4)
    with proxy(s3, faults) as px:
        monkeypatch.setenv("AWS_ENDPOINT_URL", px.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: every retry is ours, and counted
        reset_fsspec()
        try:
            # writing through the faults: every upload lands, byte for byte
            build(f"s3://{BUCKET}/faulty", make_clips(40, seconds=0.2) + make_clips(8, "eval", seconds=0.2),
                  shard_size=5)
            assert faults.injected >= 3
            faults.every = 0  # the checks themselves read without faults
            written, ref = objects(f"s3://{BUCKET}/faulty"), objects(url)
            assert sorted(written) == sorted(ref)
            assert all(written[k] == ref[k] for k in ref if k != "manifest.json")  # (stats may be in ref's)
            assert read_manifest(f"s3://{BUCKET}/faulty").splits == read_manifest(url).splits
            # reading through them: the same batches, one retry per injected fault
            kw = {"batch_size": 4, "num_workers": 0, "seed": 2, "clip_seconds": 0.2, "retry_wait": 0.01}
            remote = AudioDataModule(url, **kw)
            remote.train_refs()
            faults.every = 4
            before = faults.injected
            ds = remote.train_dataset(0, 1)
            _same(_batches(ds), _batches(AudioDataModule(str(local), **kw).train_dataset(0, 1)))
            assert faults.injected - before >= 2 and ds.samples.io["retries"] == faults.injected - before
            # a shard that always fails: skipped after the retries, counted; the epoch keeps its batch count
            dead = "/set/" + read_manifest(url).split("train").shards[5].path
            tried = faults.requests("GET", dead)
            faults.every, faults.always = 0, (dead,)
            ds = AudioDataModule(url, **{**kw, "retries": 2}).train_dataset(0, 1)
            got = _batches(ds)
            assert len(got) == len(ds) == 10 and all(len(x["key"]) == 4 for x in got)
            assert ds.samples.bad["unreadable shard"] == 1 and faults.requests("GET", dead) - tried == 3
            assert not set(shard_keys(local, "train")[25:30]) & {k for x in got for k in x["key"]}
        finally:
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
            reset_fsspec()


# --- training from the bucket through the CLI -------------------------------------------------------------------------
def test_pretrain_kill_resume_finetune_and_evaluate_from_s3(s3, tmp_path):
    from test_ddp import PRETRAIN, TINY_ENCODER, finish, probes, run_losses, start

    from helpers import config

    url = f"s3://{BUCKET}/synth"
    assert cli_main(["prep", "synth", "--num-clips", "32", "--eval-clips", "8", "--shard-size", "8", "--seed", "5",
                     "--workers", "0", "--quiet", "--out", url]) == 0
    single = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.log_every_n_steps", "1", "--trainer.callbacks+=ddp_probe.KeyProbe"]
    args = [*PRETRAIN, "--data.root", url, "--data.retry_wait", "0.05", "--trainer.max_steps", "6", *single]
    # 32 clips, batches of 8, 2 workers: 4 batches an epoch, so 6 steps cross an epoch boundary
    ref = str(tmp_path / "ref")
    os.makedirs(ref)
    finish(start("pretrain", args, ref, os.path.join(ref, "log.txt")), os.path.join(ref, "log.txt"))

    run = str(tmp_path / "killed")
    os.makedirs(run)
    killed = [*args, "--checkpoint_every_n_steps", "2"]
    proc = start("pretrain", killed, run, os.path.join(run, "log1.txt"), AUDIOSSL_PROBE_SLEEP="0.7")
    last = os.path.join(run, "checkpoints", "last.ckpt")
    deadline = time.time() + 300
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, open(os.path.join(run, "log1.txt")).read()[-3000:]
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= step < 6
    finish(start("pretrain", [*killed, "--ckpt_path", "last"], run, os.path.join(run, "log2.txt")),
           os.path.join(run, "log2.txt"))
    ref_keys = {b["global_step"]: b["keys"] for b in probes(ref)[0]["train"]}
    res_keys = {b["global_step"]: b["keys"] for b in probes(run)[0]["train"]}
    assert sorted(res_keys) == list(range(step + 1, 7))
    assert all(res_keys[s] == ref_keys[s] for s in res_keys)  # the stream continued where it stopped
    ref_loss, res_loss = run_losses(ref)[-1], run_losses(run)[-1]
    assert all(abs(res_loss[s] - ref_loss[s]) <= 1e-4 * abs(ref_loss[s]) for s in res_loss)

    ft = str(tmp_path / "ft")
    os.makedirs(ft)
    ft_args = ["--config", config("finetune", "tiny.yaml"), "--data.root", url, "--model.encoder", TINY_ENCODER,
               "--model.init_from", os.path.join(ref, "checkpoints", "last.ckpt"), "--data.batch_size", "8",
               "--data.num_workers", "2", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
               "--trainer.num_sanity_val_steps", "0", *single]
    finish(start("finetune", ft_args, ft, os.path.join(ft, "log.txt")), os.path.join(ft, "log.txt"))
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--ckpt_path", os.path.join(ft, "checkpoints", "last.ckpt"), "--out", str(out),
                     "--data.root", url, "--data.num_workers", "2", "--data.batch_size", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    keys = list(np.load(out / "predictions.npz")["keys"])
    eval_keys = [f"eval_{i:06d}" for i in range(8)]
    assert metrics["num_clips"] == 8 and sorted(keys) == eval_keys  # every evaluation clip exactly once
    assert sorted(k for b in probes(ft)[0]["val"] for k in b) == eval_keys
