"""The streams and AudioDataModule: exactly-once evaluation, equal epochs, bad samples, exact resume, Lightning."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from datahelpers import build, make_clips, read_json, shard_keys
from torch.utils.data import DataLoader

from audiossl.frontend import audio
from audiossl.data import AudioDataModule
from audiossl.data.pipeline import batches_per_rank, deal, read_shard, shard_refs, worker_batches
from audiossl.data.manifest import read_manifest, write_manifest


def loader_keys(ds, workers: int) -> list[list[str]]:
    return [b["key"] for b in DataLoader(ds, batch_size=None, num_workers=workers)]


def flat(batches) -> list[str]:
    return [k for b in batches for k in b]


# --- pure helpers --------------------------------------------------------------------------------------------------
def test_batch_arithmetic_is_even_across_ranks_and_round_robin_over_workers():
    assert batches_per_rank(1000, 32, 4) == 7
    assert [worker_batches(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert sum(worker_batches(10, w, 4) for w in range(4)) == 10
    assert batches_per_rank(5, 32, 2) == 1  # never zero


def test_deal_is_disjoint_and_complete_with_few_shards(tiny_set):
    m = read_manifest(tiny_set)
    refs = shard_refs(tiny_set, m, ["train"])  # 6 shards of 5
    for slots in (2, 4, 8, 16):  # 8 and 16 slots: fewer shards than slots -> sample-level dealing
        seen = Counter()
        for slot in range(slots):
            for r in deal(refs, slot, slots):
                seen.update((r.path, int(p)) for p in r.candidates())
        assert sum(seen.values()) == 30 and len(seen) == 30


# --- evaluation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2])
def test_eval_sees_every_key_exactly_once(tiny_set, world):
    dm = AudioDataModule(str(tiny_set), batch_size=3, num_workers=2)
    keys = []
    for rank in range(world):
        keys += flat(loader_keys(dm.eval_dataset(rank=rank, world_size=world), 2))
    assert sorted(keys) == sorted(shard_keys(tiny_set, "eval")) and len(keys) == 7
    # deterministic: the same order again
    assert flat(loader_keys(dm.eval_dataset(rank=0, world_size=world), 2)) == \
        flat(loader_keys(dm.eval_dataset(rank=0, world_size=world), 2))


def test_eval_fold_splits_train_split(tiny_set):
    dm = AudioDataModule(str(tiny_set), eval_fold=2, batch_size=4, num_workers=2, epoch_size=20)
    meta = read_json(tiny_set, "train")
    fold2 = sorted(k for k, v in meta.items() if v["fold"] == 2)
    ev = []
    for rank in range(2):
        ev += flat(loader_keys(dm.eval_dataset(rank=rank, world_size=2), 2))
    assert sorted(ev) == fold2 and len(ev) == 10
    assert dm.train_size == 20
    train = flat(loader_keys(dm.train_dataset(rank=0, world_size=1), 2))
    assert len(train) == 20 and not set(train) & set(fold2)


def test_eval_batches_contents(tiny_set):
    dm = AudioDataModule(str(tiny_set), batch_size=4, num_workers=0, clip_seconds=0.3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["audio"].shape == (4, 4800) and batch["audio"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64 and batch["target"].shape == (4,)
    meta = read_json(tiny_set, "eval")
    assert batch["target"].tolist() == [meta[k]["label_idx"][0] for k in batch["key"]]
    # 0.25 s of audio, then zeros to 0.3 s
    assert batch["audio"][:, 4000:].abs().max() == 0 and batch["audio"][:, :4000].abs().amax(1).min() > 0.4


# --- training ------------------------------------------------------------------------------------------------------
def test_every_rank_yields_the_same_number_of_batches(tiny_set):
    dm = AudioDataModule(str(tiny_set), batch_size=4, num_workers=2, epoch_size=24)
    per_rank = []
    for rank in range(2):
        ds = dm.train_dataset(rank=rank, world_size=2)
        batches = loader_keys(ds, 2)
        assert len(batches) == len(ds) == 3 and all(len(b) == 4 for b in batches)
        per_rank.append(flat(batches))
    m = read_manifest(tiny_set)
    where = {key: s.path for s in m.split("train").shards for _, key, _ in read_shard(str(tiny_set / s.path))}
    shard_of = where.__getitem__
    assert not {shard_of(k) for k in per_rank[0]} & {shard_of(k) for k in per_rank[1]}  # disjoint shard sets
    # an epoch larger than the data: slots cycle through their shards, counts stay exact
    big = AudioDataModule(str(tiny_set), batch_size=4, num_workers=2, epoch_size=100)
    counts = [len(loader_keys(big.train_dataset(rank=r, world_size=2), 2)) for r in range(2)]
    assert counts == [12, 12]


def test_training_stream_is_seeded_and_changes_with_epoch(tiny_set):
    def epoch_keys(seed, epoch):
        ds = AudioDataModule(str(tiny_set), batch_size=5, num_workers=2, seed=seed).train_dataset(0, 1)
        ds.set_epoch(epoch)
        return flat(loader_keys(ds, 2))

    e0 = epoch_keys(0, 0)
    assert sorted(e0) == sorted(shard_keys(tiny_set, "train"))  # one epoch = every training sample once
    assert epoch_keys(0, 0) == e0
    assert epoch_keys(0, 1) != e0 and sorted(epoch_keys(0, 1)) == sorted(e0)
    assert epoch_keys(1, 0) != e0


def test_random_crop_for_training(tmp_path):
    root = tmp_path / "ds"
    build(root, make_clips(8, seconds=1.0), shard_size=4)
    ds = AudioDataModule(str(root), batch_size=8, num_workers=0, clip_seconds=0.25).train_dataset(0, 1)
    batch = next(iter(DataLoader(ds, batch_size=None)))
    assert batch["audio"].shape == (8, 4000)
    starts = []
    for key, wave in zip(batch["key"], batch["audio"]):
        i = int(key.split("_")[1])
        full = torch.from_numpy(make_clips(8, seconds=1.0)[i].render()[0])
        full = audio.load(audio.encode_flac(full, 16000))  # through 16-bit FLAC like the shard
        heads = full.unfold(0, 64, 1)[: full.shape[0] - 4000 + 1]  # the first 64 samples of every window
        start = int((heads - wave[:64]).abs().amax(1).argmin())
        assert torch.equal(full[start : start + 4000], wave)
        starts.append(start)
    assert len(set(starts)) > 4  # random windows, not always the start


def test_weighted_sampling_follows_weights(tmp_path):
    root = tmp_path / "ds"
    heavy = {3, 7, 11, 18}
    build(root, make_clips(20, weight_of=lambda i: 1000.0 if i in heavy else 0.001), shard_size=5)
    dm = AudioDataModule(str(root), batch_size=4, num_workers=0, epoch_size=4, weighted=True)
    for epoch in range(3):
        ds = dm.train_dataset(0, 1)
        ds.set_epoch(epoch)
        keys = flat(loader_keys(ds, 0))
        assert sorted(int(k.split("_")[1]) for k in keys) == sorted(heavy)  # without replacement
    build(tmp_path / "plain", make_clips(4))
    with pytest.raises(ValueError, match="no sampling weights"):
        AudioDataModule(str(tmp_path / "plain"), weighted=True).train_refs()


# --- bad samples -----------------------------------------------------------------------------------------------------
def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_bad_samples_are_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "ds"
    build(root, make_clips(4), shard_size=10)
    shard = root / "train" / "train-000000.tar"
    good = {k: m for k, m in [(k, m) for k, m in _members(shard)]}
    # rewrite the shard by hand: good, corrupt flac, missing json, label out of range, good
    with tarfile.open(shard, "w") as t:
        for key, (flac, js) in list(good.items())[:2]:
            _add(t, f"{key}.flac", flac)
            _add(t, f"{key}.json", js)
        _add(t, "corrupt.flac", b"fLaC" + b"\x00" * 200)
        _add(t, "corrupt.json", json.dumps({"label_idx": [1]}).encode())
        _add(t, "nojson.flac", list(good.values())[2][0])
        _add(t, "badlabel.flac", list(good.values())[2][0])
        _add(t, "badlabel.json", json.dumps({"label_idx": [9]}).encode())
        key, (flac, js) = list(good.items())[3]
        _add(t, f"{key}.flac", flac)
        _add(t, f"{key}.json", js)
    m = read_manifest(root)
    m.split("train").shards[0].samples = 7  # as if it had been written so
    write_manifest(root, m)
    dm = AudioDataModule(str(root), eval_split="train", batch_size=2, num_workers=0)
    ds = dm.eval_dataset(0, 1)
    with caplog.at_level(logging.WARNING, logger="audiossl.data"):
        keys = flat(loader_keys(ds, 0))
    order = list(good)  # the keys in shard order
    assert keys == [order[0], order[1], order[3]]
    assert sum(ds.samples.bad.values()) == 3
    assert set(ds.samples.bad) == {"undecodable audio", "missing json", "unknown label index"}
    assert "'corrupt'" in caplog.text and "'nojson'" in caplog.text and "'badlabel'" in caplog.text
    # training keeps exact batch counts by drawing replacements
    train = dm.train_dataset(0, 1)
    batches = loader_keys(train, 0)
    assert len(batches) == len(train) == 3 and all(len(b) == 2 for b in batches)
    assert set(flat(batches)) <= {order[0], order[1], order[3]}


def _members(shard):
    from audiossl.data.pipeline import read_shard

    return [(k, (m["flac"], m["json"])) for _, k, m in read_shard(str(shard))]


# --- exact resume ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,k", [(2, 3), (0, 2)])
def test_resume_mid_epoch_replays_the_rest_exactly(tiny_set, workers, k):
    def make():
        return AudioDataModule(str(tiny_set), batch_size=3, num_workers=workers, seed=5, epoch_size=27)

    dm = make()
    loader = dm.train_dataloader()
    list(loader)  # epoch 0
    full = [b for b in loader]  # epoch 1, uninterrupted
    assert len(full) == 9
    dm2 = make()
    loader2 = dm2.train_dataloader()
    list(loader2)
    it = iter(loader2)
    first = [next(it) for _ in range(k)]
    state = dm2.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == k
    dm3 = make()
    dm3.load_state_dict(state)
    rest = list(dm3.train_dataloader())
    assert [b["key"] for b in first + rest] == [b["key"] for b in full]
    for a, b in zip(rest, full[k:]):
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["target"], b["target"])
    # and the epoch after that follows on
    assert dm3.state_dict()["epoch"] == 2


class _Recorder(L.LightningModule):
    """A tiny model that records the keys of the batches it trains on."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 4)
        self.seen: list[tuple[int, list[str]]] = []

    def training_step(self, batch, _):
        self.seen.append((self.current_epoch, list(batch["key"])))
        x = batch["audio"].abs().mean(1, keepdim=True)  # [B, 1]
        return torch.nn.functional.cross_entropy(self.lin(x), batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kw):
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_lightning_epochs_advance_and_resume_is_exact(tiny_set, tmp_path):
    def dm():
        return AudioDataModule(str(tiny_set), batch_size=3, num_workers=2, seed=1, epoch_size=15)

    # 5 batches per epoch, gradient accumulation over 2: optimizer steps after batches 2, 4, 5 of each epoch
    ckpts = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", filename="{step}", every_n_train_steps=4,
                                                save_top_k=-1)
    ref = _Recorder()
    _trainer(tmp_path / "a", max_epochs=3, accumulate_grad_batches=2, callbacks=[ckpts],
             enable_checkpointing=True).fit(ref, datamodule=dm())
    assert [e for e, _ in ref.seen] == [0] * 5 + [1] * 5 + [2] * 5
    epochs = [flat(k for e, k in ref.seen if e == i) for i in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # each epoch is a new draw
    ckpt = tmp_path / "ck" / "step=4.ckpt"  # saved mid-epoch 1, after its 2nd batch
    state = torch.load(ckpt, weights_only=True)["AudioDataModule"]
    assert (state["epoch"], state["batches_done"]) == (1, 2)
    resumed = _Recorder()
    _trainer(tmp_path / "b", max_epochs=3, accumulate_grad_batches=2).fit(resumed, datamodule=dm(), ckpt_path=ckpt)
    assert resumed.seen == ref.seen[7:]  # the rest of epoch 1 and all of epoch 2, batch for batch


def test_lightning_validation_and_properties(tiny_set, tmp_path):
    dm = AudioDataModule(str(tiny_set), batch_size=4, num_workers=0)
    # cheap properties right after construction
    assert (dm.num_classes, dm.label_names, dm.multi_label) == (4, ["c0", "c1", "c2", "c3"], False)
    assert dm.sample_rate == 16000
    assert dm.stats is None and dm.clip_seconds == 0.25 and dm.eval_split == "eval"

    class Val(_Recorder):
        def validation_step(self, batch, _):
            self.seen.append((-1, list(batch["key"])))

    model = Val()
    _trainer(tmp_path, max_epochs=1, limit_train_batches=2).fit(model, datamodule=dm)
    assert sorted(flat(k for e, k in model.seen if e == -1)) == sorted(shard_keys(tiny_set, "eval"))
    assert AudioDataModule(str(tiny_set), eval_split=None, eval_fold=None).eval_split == "eval"
    build(tmp_path / "plain", make_clips(4))  # no eval split, no folds: no evaluation loader
    plain = AudioDataModule(str(tmp_path / "plain"))
    assert plain.eval_split is None and plain.val_dataloader() == [] and plain.test_dataloader() == []
    with pytest.raises(ValueError, match="eval_split or eval_fold"):
        AudioDataModule(str(tiny_set), eval_split="eval", eval_fold=1)
    with pytest.raises(FileNotFoundError, match="audiossl prep"):
        AudioDataModule(str(tmp_path / "nothing")).num_classes
    with pytest.raises(KeyError, match="has \\['eval', 'train'\\]"):
        AudioDataModule(str(tiny_set), train_split="balanced").setup("fit")


# --- mixing across shards --------------------------------------------------------------------------------------------
def test_interleave_is_a_seeded_merge_of_the_open_shards(tiny_set):
    from audiossl.data.pipeline import _interleave, _read_all, _Samples

    refs = shard_refs(tiny_set, read_manifest(tiny_set), ["train"])  # 6 shards of 5
    plan = [(r, None) for r in refs]
    where = {key: r.path for r in refs for _, key, _ in read_shard(r.path)}

    def run(k, seed):
        s = _Samples(4, False, 16000, None, "test")
        return [(path, checked[0]) for path, checked in _interleave(plan, s, k, np.random.default_rng(seed))]

    sequential = [(p, c[0]) for p, c in _read_all(plan, _Samples(4, False, 16000, None, "test"))]
    assert run(1, 0) == sequential  # one open shard: shard after shard
    merged = run(3, 0)
    assert sorted(merged) == sorted(sequential) and len(merged) == 30  # every sample once
    assert run(3, 0) == merged and run(3, 1) != merged  # seeded
    switches = sum(a[0] != b[0] for a, b in zip(merged, merged[1:]))
    assert switches >= 12, switches  # sequential reading switches shard 5 times in 30 samples
    # at most 3 shards are open at any time: a window of samples never spans more than 3 + (finished) shards
    first_shards = {where[k] for _, k in merged[:10]}
    assert first_shards <= {r.path for r in refs[:4]}


def _distinct_classes_per_batch(root, epochs=2, **kw):
    dm = AudioDataModule(str(root), batch_size=16, num_workers=0, clip_seconds=0.05, **kw)
    counts = []
    for epoch in range(epochs):
        ds = dm.train_dataset(0, 1)
        ds.set_epoch(epoch)
        counts += [len(set(b["target"].tolist())) for b in DataLoader(ds, batch_size=None)]
    return float(np.mean(counts))


def test_a_class_sorted_dataset_written_in_input_order_still_gives_mixed_batches(tmp_path):
    """10 classes x 48 clips listed class by class, ``--keep-order``, shards of 12: 40 shards of one class each.
    A fully random order gives 8.18 distinct classes per batch of 16. Reading one shard at a time (the old stream)
    with a 48-sample buffer gives about 6.2 (0.76 of random); 16 open shards give about 7.5 (0.92)."""
    from audiossl.data.labels import LabelSpace
    from audiossl.data.writer import WriterOptions, write_dataset

    clips = sorted(make_clips(480, seconds=0.05, num_classes=10), key=lambda c: c.meta["label_idx"][0])
    root = tmp_path / "sorted"
    write_dataset(root, clips, labels=LabelSpace.from_names([f"c{i}" for i in range(10)]), multi_label=False,
                  options=WriterOptions(shard_size=12, workers=0, progress=False, keep_order=True))
    for s in read_manifest(root).split("train").shards:  # really one class per shard
        assert len({json.loads(m["json"])["label_idx"][0] for _, _, m in read_shard(str(root / s.path))}) == 1
    labels = np.repeat(np.arange(10), 48)
    rng = np.random.default_rng(0)
    random_order = np.mean([len(set(rng.permutation(labels)[:16])) for _ in range(4000)])
    mixed = _distinct_classes_per_batch(root, shuffle_buffer=48, open_shards=16)
    one_at_a_time = _distinct_classes_per_batch(root, shuffle_buffer=48, open_shards=1)
    print(f"distinct classes per batch: random {random_order:.2f}, 16 open shards {mixed:.2f}, one {one_at_a_time:.2f}")
    assert mixed >= 0.88 * random_order
    assert one_at_a_time <= 0.8 * random_order  # what the stream gave before it interleaved shards
    # the same data written shuffled (the default) mixes with one open shard too
    write_dataset(tmp_path / "shuffled", clips, labels=LabelSpace.from_names([f"c{i}" for i in range(10)]),
                  multi_label=False, options=WriterOptions(shard_size=12, workers=0, progress=False))
    assert _distinct_classes_per_batch(tmp_path / "shuffled", shuffle_buffer=48, open_shards=1) >= 0.93 * random_order


def test_warnings_for_few_shards_and_a_small_buffer_on_unshuffled_shards(tmp_path, caplog):
    from audiossl.data.labels import LabelSpace
    from audiossl.data.writer import WriterOptions, write_dataset

    def dm_warnings(root, **kw):
        caplog.clear()
        dm = AudioDataModule(str(root), batch_size=4, clip_seconds=0.25, **kw)
        with caplog.at_level(logging.WARNING, logger="audiossl.data"):
            dm.train_dataloader()
        return caplog.text

    for name, keep in (("kept", True), ("shuffled", False)):
        write_dataset(tmp_path / name, make_clips(40), labels=LabelSpace.from_names([f"c{i}" for i in range(4)]),
                      multi_label=False, options=WriterOptions(shard_size=10, workers=0, progress=False,
                                                               keep_order=keep))
    text = dm_warnings(tmp_path / "kept", num_workers=0, shuffle_buffer=5)
    assert "written in input order" in text and "hold about 10 samples each, more than the shuffle buffer (5)" in text
    assert "reading slots" not in text  # 4 shards, one slot
    assert "input order" not in dm_warnings(tmp_path / "kept", num_workers=0, shuffle_buffer=10)
    assert "input order" not in dm_warnings(tmp_path / "shuffled", num_workers=0, shuffle_buffer=5)
    text = dm_warnings(tmp_path / "shuffled", num_workers=8, shuffle_buffer=5)
    assert "4 training shards for 8 reading slots (world size 1 x 8 workers)" in text
