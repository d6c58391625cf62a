"""Datasets at URLs: the URL grammar and its errors, https:// and pipe: roots against a real HTTP server on
127.0.0.1 (with and without Range requests), injected faults (503s, cut connections, a shard that never answers),
read-ahead and the local shard cache. The S3 tests are in ``test_data_s3.py``."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import torch
from datahelpers import build, make_clips, shard_keys
from objstore import Faults, file_server
from torch.utils.data import DataLoader

from audiossl.cli.main import main as cli_main
from audiossl.data import AudioDataModule, storage
from audiossl.data.stats import compute_stats
from audiossl.errors import OutputPathError

FAST = {"retries": 3, "retry_wait": 0.01}


@pytest.fixture(scope="module")
def served_root(tmp_path_factory):
    """40 training clips in 8 shards of 5, 8 evaluation clips in 2 shards, 4 classes; served from ``www/ds``."""
    www = tmp_path_factory.mktemp("www")
    build(www / "ds", make_clips(40, seconds=0.2) + make_clips(8, "eval", seconds=0.2), shard_size=5)
    return www


def batches(ds, workers=0):
    return list(DataLoader(ds, batch_size=None, num_workers=workers))


def same_batches(a, b):
    assert [x["key"] for x in a] == [y["key"] for y in b]
    for x, y in zip(a, b):
        assert torch.equal(x["audio"], y["audio"]) and torch.equal(x["target"], y["target"])


def dm(root, **kw):
    kw = {"batch_size": 4, "num_workers": 0, "seed": 3, "clip_seconds": 0.2, **FAST, **kw}
    return AudioDataModule(str(root), **kw)


# --- names and errors ------------------------------------------------------------------------------------------------
def test_url_grammar():
    assert [storage.scheme(x) for x in ("s3://b/p", "S3://b", "gs://b", "https://h/p", "pipe:cat x", "file:///x",
                                        "data/x", "/abs/x", "take:2.wav", "s3:/b/p")] == \
        ["s3", "s3", "gs", "https", "pipe", "file", None, None, None, "s3"]
    assert storage.is_url("s3:/b/p") and not storage.is_url("file:///x") and not storage.is_url("a:b")
    assert storage.join("s3://b/p/", "train/t-0.tar") == "s3://b/p/train/t-0.tar"
    assert storage.join("file:///d/x", "manifest.json") == "/d/x/manifest.json"
    assert storage.join("pipe:curl -sf http://h/ds", "manifest.json") == "pipe:curl -sf http://h/ds/manifest.json"
    assert storage.join("pipe:aws s3 cp s3://b/{} -", "train/a.tar") == "pipe:aws s3 cp s3://b/train/a.tar -"


@pytest.mark.parametrize("url,message", [
    ("ftp://host/ds", "ftp:// URLs are not supported"),
    ("az://container/ds", "az:// URLs are not supported"),
    ("s3:/bucket/ds", "is not a complete URL: write s3://"),
    ("pipe:", "needs a command"),
])
def test_unsupported_or_malformed_urls_are_errors_not_local_folders(url, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(storage.UnsupportedURLError, match=message):
        AudioDataModule(url)
    assert cli_main(["prep", "synth", "--num-clips", "2", "--quiet", "--workers", "0", "--out", url]) == 1
    assert message.split(":")[0] in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no folder named after the URL


def test_read_only_urls_refuse_writes_and_local_only_paths_refuse_urls(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["prep", "synth", "--num-clips", "2", "--quiet", "--out", "https://host/ds"]) == 1
    assert "https: URLs are read-only here" in capsys.readouterr().err
    assert cli_main(["stats", "https://host/ds", "--quiet"]) == 1
    assert "--print-only" in capsys.readouterr().err
    with pytest.raises(OutputPathError, match="is a URL; this needs a local path"):
        from audiossl.data.storage import output_dir

        output_dir("s3://bucket/run")
    assert os.listdir(tmp_path) == []


def test_a_missing_client_package_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed
    with pytest.raises(storage.UnsupportedURLError, match=r"need the s3fs package: pip install 'audiossl\[s3\]'"):
        AudioDataModule("s3://bucket/ds")


def test_no_manifest_at_a_url_is_a_dataset_not_found_error(served_root):
    with file_server(str(served_root)) as srv:
        with pytest.raises(FileNotFoundError, match="no dataset at .*manifest.json is not there"):
            AudioDataModule(srv.url + "/nothing-here").num_classes


# --- https:// and pipe: -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ranges", [True, False])
def test_an_http_root_streams_exactly_what_the_local_folder_gives(served_root, ranges):
    local = dm(served_root / "ds", num_workers=2)
    with file_server(str(served_root), ranges=ranges) as srv:
        remote = dm(srv.url + "/ds", num_workers=2)
        assert remote.num_classes == 4 and remote.train_size == 40 and remote.clip_seconds == 0.2
        same_batches(batches(remote.train_dataset(0, 1), 2), batches(local.train_dataset(0, 1), 2))
        ev = [k for b in batches(remote.eval_dataset(0, 1), 2) for k in b["key"]]
        assert sorted(ev) == sorted(shard_keys(served_root / "ds", "eval")) and len(ev) == 8  # exactly once
        # two ranks: disjoint, complete
        keys = [k for r in range(2) for b in batches(remote.eval_dataset(r, 2), 2) for k in b["key"]]
        assert sorted(keys) == sorted(ev)
        stats = compute_stats(srv.url + "/ds", progress=False)
    assert stats == compute_stats(served_root / "ds", progress=False)
    # GETs: Range requests of the shard files (or whole files from a server without ranges)
    log = srv.faults.log
    assert any(p.endswith(".tar") for _, p, _ in log) and all(s == 200 for _, _, s in log)


def test_stats_over_a_read_only_url_prints_only(served_root, capsys):
    with file_server(str(served_root)) as srv:
        assert cli_main(["stats", srv.url + "/ds", "--quiet", "--print-only"]) == 0
    out = capsys.readouterr().out
    ref = compute_stats(served_root / "ds", progress=False)
    assert f"fbank mean {ref['mean']:.4f} std {ref['std']:.4f} over 40 clips" in out and "written" not in out


def test_a_pipe_root_runs_the_command_per_file(served_root):
    local = dm(served_root / "ds")
    for root in (f"pipe:cat {served_root}/ds", f"pipe:cat {served_root}/ds/{{}}"):
        remote = dm(root)
        same_batches(batches(remote.train_dataset(0, 1)), batches(local.train_dataset(0, 1)))
    failing = dm(f"pipe:cat {served_root}/ds/{{}}", retries=1)
    failing.train_refs()  # the manifest is read; now the shards vanish behind the command
    bad = failing.train_dataset(0, 1)
    bad.shards = [type(s)(s.path.replace("/ds/", "/missing/"), s.samples) for s in bad.shards]
    with pytest.raises(RuntimeError, match="a whole pass over its shards gave no valid sample"):
        batches(bad)
    assert bad.samples.bad["unreadable shard"] == 8 and bad.samples.io["retries"] == 8  # 1 retry each


# --- faults -----------------------------------------------------------------------------------------------------------
def test_503s_and_cut_connections_are_retried_and_counted(served_root):
    local = dm(served_root / "ds", open_shards=2)
    ref = batches(local.train_dataset(0, 1))
    faults = Faults(every=3, cut_every=5)
    with file_server(str(served_root), faults) as srv:
        remote = dm(srv.url + "/ds", open_shards=2)
        remote.train_refs()
        before = faults.injected + faults.cut
        ds = remote.train_dataset(0, 1)
        got = batches(ds)
        ev = remote.eval_dataset(0, 1)
        ev_keys = [k for b in batches(ev) for k in b["key"]]
    same_batches(got, ref)  # the faults change nothing in the data
    injected = faults.injected + faults.cut - before
    assert injected >= 5, faults.log
    assert ds.samples.io["retries"] + ev.samples.io["retries"] == injected  # each fault: exactly one retry
    assert not ds.samples.bad and not ev.samples.bad
    assert sorted(ev_keys) == sorted(shard_keys(served_root / "ds", "eval"))


def test_a_shard_that_never_answers_is_skipped_counted_and_the_batch_counts_hold(served_root, caplog):
    m = AudioDataModule(str(served_root / "ds")).manifest
    dead = m.split("train").shards[2].path  # train/train-000002.tar
    dead_keys = set(shard_keys(served_root / "ds", "train")[10:15])
    faults = Faults(always=(dead,))
    with file_server(str(served_root), faults) as srv:
        remote = dm(srv.url + "/ds", retries=2, epoch_size=40)
        per_rank = []
        for rank in range(2):
            ds = remote.train_dataset(rank, 2)
            with caplog.at_level("WARNING", logger="audiossl.data"):
                got = batches(ds)
            assert len(got) == len(ds) == 5 and all(len(b["key"]) == 4 for b in got)  # equal on both ranks
            per_rank.append((ds, [k for b in got for k in b["key"]]))
        tried = faults.requests(contains=dead)
    owner = [ds for ds, _ in per_rank if ds.samples.dead]
    assert len(owner) == 1 and owner[0].samples.dead == {f"{srv.url}/ds/{dead}"}
    assert owner[0].samples.bad["unreadable shard"] == 1
    assert tried == 3  # the first try and 2 retries, once: a shard given up on is not tried again that epoch
    assert not dead_keys & {k for _, keys in per_rank for k in keys}
    assert "could not be read, skipping it" in caplog.text and "gave up after 3 attempts" in caplog.text
    assert "1 shards unreadable after retries" in caplog.text


def test_a_server_that_accepts_and_never_answers_times_out_and_is_retried(monkeypatch):
    """A stalled connection (accepted, no bytes back) is a time-out after AUDIOSSL_HTTP_TIMEOUT seconds, retried,
    then an error naming the file, instead of holding the reader for aiohttp's 5-minute default."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []

    def accept_forever():
        while True:
            try:
                held.append(listener.accept()[0])  # never read, never answered
            except OSError:
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    monkeypatch.setenv("AUDIOSSL_HTTP_TIMEOUT", "0.5")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/ds/manifest.json"
    t0 = time.perf_counter()
    try:
        with pytest.raises(storage.StorageError, match="manifest.json.*gave up after 2 attempts"):
            storage.read_bytes(url, storage.IOOptions(retries=1, retry_wait=0.0))
    finally:
        listener.close()
        for c in held:
            c.close()
    assert time.perf_counter() - t0 < 20 and len(held) >= 2  # two attempts, each given up after ~0.5 s


# --- read-ahead and cache ---------------------------------------------------------------------------------------------
def test_the_next_shard_is_fetched_while_the_current_one_is_read(served_root):
    from audiossl.data.pipeline import _interleave, _Samples, shard_refs

    with file_server(str(served_root)) as srv:
        m = AudioDataModule(srv.url + "/ds").manifest
        refs = shard_refs(srv.url + "/ds", m, ["train"])
        reader = storage.ShardReader(storage.IOOptions(**FAST))
        samples = _Samples(4, False, 16000, None, "test")
        it = _interleave([(r, None) for r in refs], samples, 1, np.random.default_rng(0), reader)
        first = next(it)  # one sample of shard 0
        assert first[0] == refs[0].path
        for _ in range(100):  # the second shard's GET arrives without the reader asking for it
            if srv.faults.requests("GET", refs[1].path.split("/ds/")[1]):
                break
            time.sleep(0.02)
        assert srv.faults.requests("GET", refs[1].path.split("/ds/")[1]) == 1
        assert srv.faults.requests("GET", refs[2].path.split("/ds/")[1]) == 0
        rest = list(it)
        reader.close()
    assert len(rest) == 39


def test_the_shard_cache_serves_later_epochs_and_stays_within_its_bound(served_root, tmp_path):
    m = AudioDataModule(str(served_root / "ds")).manifest
    sizes = [s.bytes for s in m.split("train").shards]
    local = dm(served_root / "ds")

    def epochs(cache, bound, n=3):
        """(hits, GETs of training shards) per epoch, checking the data and the bound."""
        out = []
        remote = dm(srv.url + "/ds", cache_dir=str(cache), cache_max_bytes=bound)
        for epoch in range(n):
            before = srv.faults.requests("GET", "/train/")
            ds, ref = remote.train_dataset(0, 1), local.train_dataset(0, 1)
            ds.set_epoch(epoch)
            ref.set_epoch(epoch)
            same_batches(batches(ds), batches(ref))
            entries = [f for f in os.listdir(cache) if not f.startswith(".")]
            assert sum(os.path.getsize(cache / f) for f in entries) <= bound
            out.append((ds.samples.io["cache_hits"], srv.faults.requests("GET", "/train/") - before))
        return out

    with file_server(str(served_root)) as srv:
        # room for everything: the first epoch fetches each shard once, later ones fetch nothing
        assert epochs(tmp_path / "big", sum(sizes)) == [(0, 8), (8, 0), (8, 0)]
        # room for five of eight: least recently used shards make room; a cached shard costs no request
        small = epochs(tmp_path / "small", sum(sorted(sizes)[:5]))
        assert small[0] == (0, 8) and all(hits + got == 8 for hits, got in small)
        assert sum(hits for hits, _ in small[1:]) >= 2
        # a damaged cache entry (wrong size) is fetched again, not read
        victim = next(p for p in sorted((tmp_path / "big").iterdir()) if not p.name.startswith("."))
        with open(victim, "r+b") as f:
            f.truncate(100)
        assert epochs(tmp_path / "big", sum(sizes), n=1) == [(7, 1)]


def test_a_local_cache_dir_with_a_local_root_is_ignored(served_root, tmp_path):
    d = dm(served_root / "ds", cache_dir=str(tmp_path / "c"))
    batches(d.train_dataset(0, 1))
    assert not (tmp_path / "c").exists()


def test_evict_keeps_the_newest_within_the_bound(tmp_path):
    for i in range(5):
        p = tmp_path / f"s{i}"
        p.write_bytes(b"x" * 100)
        os.utime(p, (1000 + i, 1000 + i))
    (tmp_path / ".s9.1.2.part").write_bytes(b"y" * 1000)  # an old interrupted download
    os.utime(tmp_path / ".s9.1.2.part", (1, 1))
    storage.evict(str(tmp_path), 250, keep=str(tmp_path / "s0"))
    assert sorted(os.listdir(tmp_path)) == ["s0", "s4"]


def test_a_missing_shard_is_not_retried_and_is_counted_as_unreadable(served_root, tmp_path):
    www = tmp_path / "www"
    shutil.copytree(served_root / "ds", www / "ds")
    gone = sorted((www / "ds" / "train").iterdir())[3]
    gone.unlink()  # listed in the manifest, missing on the server: 404
    with file_server(str(www)) as srv:
        ds = dm(srv.url + "/ds").train_dataset(0, 1)
        got = batches(ds)
        assert len(got) == len(ds) == 10  # the batch count holds
        assert ds.samples.bad["unreadable shard"] == 1 and ds.samples.io["retries"] == 0
        assert srv.faults.requests("GET", gone.name) == 1  # a 404 is final: asked once


def test_manifest_paths_cannot_inject_into_a_pipe_command():
    with pytest.raises(storage.UnsupportedURLError, match="may only hold letters, digits"):
        storage.join("pipe:cat /data/{}", "train/x.tar; rm -rf ~")
    with pytest.raises(storage.UnsupportedURLError):
        storage.join("pipe:cat /data/{}", "../../etc/passwd")
