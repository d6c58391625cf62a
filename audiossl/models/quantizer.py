"""The l2-normalised EMA vector quantizer of BEATs' tokenizers (BEiT v2's ``NormEMAVectorQuantizer``).

* Lookup: ``z`` is l2-normalised and assigned to the nearest codeword (Euclidean, over l2-normalised codewords, so the
  most cosine-similar one); the output is straight-through, ``z + (e - z).detach()``.
* Loss: the commitment term only, ``mse(e.detach(), z)`` averaged over the elements of the real tokens (the codebook
  gets no gradient).
* Codebook update (training forwards): per code, the count ``n_k`` and the sum of its assigned vectors over the
  batch (all-reduced over DDP ranks); ``e_k <- l2norm(decay * e_k + (1 - decay) * l2norm(sum_k / n_k))`` for every
  code that was used, unused codes keep their vector.
* Init: k-means (cosine, 10 iterations) on the first training batch's vectors, run on rank 0 and broadcast, so every
  rank starts from the same codebook.
* Usage: ``usage`` holds an EMA (same decay) of per-code counts; ``stats`` reports the batch's code perplexity, the
  codes it used and the dead codes (EMA usage below 1% of a uniform share), the collapse signals.

The codebook, its usage and the init flag are buffers, not parameters: an optimiser or a mixed-precision wrapper
never holds a master copy that could overwrite the EMA writes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def code_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of a code histogram ``[K]``: 1 when one code takes everything, ``K`` when all are equal."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def kmeans_cosine(samples: torch.Tensor, k: int, iters: int = 10,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Spherical k-means of l2-normalised ``samples [S, d]`` -> ``k`` unit centres ``[k, d]`` (empty clusters keep
    their centre); initial centres drawn from the samples (with replacement when ``S < k``)."""
    S = samples.shape[0]
    dev = samples.device
    if S >= k:
        idx = torch.randperm(S, generator=generator, device=generator.device if generator else None)[:k]
    else:
        idx = torch.randint(0, S, (k,), generator=generator, device=generator.device if generator else None)
    means = samples[idx.to(dev)]
    for _ in range(iters):
        assign = (samples @ means.T).argmax(dim=1)  # [S]
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(means).index_add_(0, assign, samples)
        new = F.normalize(sums / counts.clamp_min(1)[:, None], dim=-1)
        means = torch.where((counts == 0)[:, None], means, new)
    return means


class NormEMAQuantizer(nn.Module):
    def __init__(self, num_codes: int = 1024, dim: int = 256, decay: float = 0.99, kmeans_init: bool = True,
                 kmeans_iters: int = 10, seed: int = 0):
        super().__init__()
        if num_codes < 2 or dim < 1 or not 0.0 < decay < 1.0:
            raise ValueError(f"bad quantizer settings: {num_codes} codes of dim {dim}, decay {decay}")
        self.num_codes, self.dim, self.decay, self.kmeans_iters = num_codes, dim, decay, kmeans_iters
        g = torch.Generator().manual_seed(seed)
        start = torch.zeros(num_codes, dim) if kmeans_init else F.normalize(torch.randn(num_codes, dim, generator=g), dim=-1)
        self.register_buffer("codebook", start)  # [K, d] unit rows
        self.register_buffer("usage", torch.zeros(num_codes))  # EMA of per-code counts
        self.register_buffer("initted", torch.tensor(not kmeans_init))

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codes of (already l2-normalised) ``z [..., d]`` -> ``[...]`` int64."""
        flat = z.reshape(-1, self.dim)
        e = self.codebook
        dist2 = e.pow(2).sum(1)[None, :] - 2.0 * flat @ e.T  # ||z||^2 is 1 for every row: left out
        return dist2.argmin(dim=1).view(z.shape[:-1])

    @torch.no_grad()
    def _init(self, samples: torch.Tensor, generator: torch.Generator | None) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_rank() == 0:
                self.codebook.copy_(kmeans_cosine(samples, self.num_codes, self.kmeans_iters, generator))
            dist.broadcast(self.codebook, 0)
        else:
            self.codebook.copy_(kmeans_cosine(samples, self.num_codes, self.kmeans_iters, generator))
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """One EMA step from vectors ``flat [S, d]`` assigned to ``codes [S]`` with weights ``weight [S]`` (0 for
        padding); returns the all-reduced batch counts ``[K]``."""
        counts = torch.zeros(self.num_codes, device=flat.device).index_add_(0, codes, weight)
        sums = torch.zeros_like(self.codebook).index_add_(0, codes, flat * weight[:, None])
        _all_reduce(counts)
        _all_reduce(sums)
        used = counts > 0
        mean = F.normalize(sums / counts.clamp_min(1)[:, None], dim=-1)
        target = torch.where(used[:, None], mean, self.codebook)
        self.codebook.mul_(self.decay).add_(target, alpha=1.0 - self.decay)
        self.codebook.copy_(F.normalize(self.codebook, dim=-1))
        return counts

    def forward(self, z: torch.Tensor, valid: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """``z [B, N, d]`` (``valid [B, N]``: real tokens) -> (straight-through quantized ``[B, N, d]`` (unit
        vectors), commitment loss (scalar), codes ``[B, N]``, usage statistics)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            flat = z.reshape(-1, self.dim)
            weight = (torch.ones(flat.shape[0], device=z.device) if valid is None
                      else valid.reshape(-1).to(torch.float32))
            if self.training and not bool(self.initted):
                self._init(flat[weight > 0].detach(), generator)
            codes = self.lookup(z)
            flat_codes = codes.reshape(-1)
            e = self.codebook[codes]  # [B, N, d]
            if self.training:
                counts = self._ema_update(flat.detach(), flat_codes, weight)
            else:
                counts = _all_reduce(torch.zeros(self.num_codes, device=z.device).index_add_(0, flat_codes, weight))
            with torch.no_grad():
                self.usage.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
            err = (e.detach() - z).pow(2).mean(dim=-1).reshape(-1)  # [B*N]
            commit = (err * weight).sum() / weight.sum().clamp_min(1.0)
            z_q = z + (e - z).detach()
        return z_q, commit, codes, self.stats(counts)

    @torch.no_grad()
    def stats(self, counts: torch.Tensor) -> dict:
        share = self.usage.sum() / self.num_codes
        return {
            "code_perplexity": code_perplexity(counts),
            "codes_used": (counts > 0).sum().float(),
            "dead_codes": (self.usage < 0.01 * share).sum().float(),
        }
