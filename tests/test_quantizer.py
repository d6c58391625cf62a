"""BEATs' l2-normalised EMA quantizer: the update rule, k-means init, padding, and the codebook under two DDP ranks."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

from audiossl.models.quantizer import NormEMAQuantizer, code_perplexity, kmeans_cosine


def test_ema_update_rule_by_hand():
    q = NormEMAQuantizer(4, 3, decay=0.9, kmeans_init=False, seed=1)
    q.train()
    before = q.codebook.clone()
    z = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(2))
    zn = F.normalize(z, dim=-1)[0]
    codes = (zn @ before.T).argmax(1)  # nearest unit codeword = most cosine-similar
    z_q, commit, got, stats = q(z)
    assert torch.equal(got[0], codes)
    want = before.clone()
    for k in range(4):
        sel = zn[codes == k]
        if len(sel):
            want[k] = F.normalize(0.9 * before[k] + 0.1 * F.normalize(sel.mean(0), dim=0), dim=0)
    assert torch.allclose(q.codebook, want, atol=1e-6)
    assert torch.allclose(commit, (before[codes] - zn).pow(2).mean(), atol=1e-6)  # against the codebook it used
    assert torch.allclose(z_q[0], before[codes], atol=1e-6)  # straight-through: the values are the codewords
    counts = torch.bincount(codes, minlength=4)
    assert torch.allclose(q.usage, 0.1 * counts.float()) and stats["codes_used"] == (counts > 0).sum()
    assert float(code_perplexity(torch.tensor([5, 0, 0, 0]))) == pytest.approx(1.0)
    assert float(code_perplexity(torch.tensor([3, 3, 3, 3]))) == pytest.approx(4.0)


def test_kmeans_init_and_padding_is_ignored():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    data = F.normalize(centres.repeat_interleave(50, 0) + 0.05 * torch.randn(200, 8, generator=g), dim=-1)
    found = kmeans_cosine(data, 4, 10, torch.Generator().manual_seed(1))
    start = kmeans_cosine(data, 4, 0, torch.Generator().manual_seed(1))  # the drawn samples, no iteration
    fit = lambda c: float((data @ c.T).max(1).values.mean())  # noqa: E731  (mean cosine to the nearest centre)
    assert torch.allclose(found.norm(dim=1), torch.ones(4)) and fit(found) > fit(start) + 0.05
    q = NormEMAQuantizer(4, 8, decay=0.5)
    q.train()
    valid = torch.ones(1, 240, dtype=torch.bool)
    valid[0, 200:] = False
    junk = torch.cat([data, 5 * torch.randn(40, 8, generator=g)])[None]  # padding holds anything
    q(junk, valid, torch.Generator().manual_seed(1))
    ref = NormEMAQuantizer(4, 8, decay=0.5)
    ref.train()
    ref(data[None], None, torch.Generator().manual_seed(1))
    assert bool(q.initted) and torch.allclose(q.codebook, ref.codebook, atol=1e-6)
    assert torch.allclose(q.usage, ref.usage)


def _ddp_worker(rank: int, init: str, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        q = NormEMAQuantizer(16, 8, decay=0.8)
        q.train()
        for step in range(3):
            z = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(100 * step + rank))
            q(z, None, torch.Generator().manual_seed(7))
        torch.save({"codebook": q.codebook, "usage": q.usage}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_one_codebook_equal_to_the_whole_batch():
    """Rank 0's k-means is broadcast and counts/sums are all-reduced: both ranks hold the codebook one process
    gets from the concatenated batches."""
    import tempfile

    import torch.multiprocessing as mp

    tmp = tempfile.mkdtemp()
    ctx = mp.start_processes(_ddp_worker, args=(f"file://{tmp}/pg", tmp), nprocs=2, join=False, start_method="spawn")
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the quantizer's collectives did not complete on both ranks")
    r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    assert torch.equal(r0["codebook"], r1["codebook"]) and torch.equal(r0["usage"], r1["usage"])
    ref = NormEMAQuantizer(16, 8, decay=0.8)
    ref.train()
    first = F.normalize(torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    ref._init(first.reshape(-1, 8), torch.Generator().manual_seed(7))  # what rank 0 broadcast
    for step in range(3):
        z = torch.cat([torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(100 * step + r)) for r in (0, 1)])
        ref(z, None, None)
    assert torch.allclose(r0["codebook"], ref.codebook, atol=1e-5)
    assert torch.allclose(r0["usage"], ref.usage, atol=1e-4)
