"""Memory of a probe step on a frozen encoder: a model of the peak, and a measurement of it on any device.

``cgp_step_memory`` models the peak of one CGP training step (BAT's setting: the frozen encoder in eval mode under
``no_grad``, every block's tokens kept, the head forward, backward and AdamW step) as the largest of three moments:

* the encoder's last block: the input, every block output so far (``depth`` x ``B (P + N) D``) and the block's own
  temporaries (q/k/v, the MLP hidden layer, the output: 8 token tensors; plus the ``H (P + N)^2`` attention matrix
  when attention is not a fused kernel, e.g. SDPA's math path on a CPU);
* the head's forward: the block outputs (normalised in place), the layer mix, the similarities ``S [B, N, K]`` (and
  a masked copy when there is padding), the per-prototype features;
* the head's backward: the dense gradients of the minimum and of the maximum over patches and their sum (three
  ``B N K`` tensors) with the block outputs still held, and the linear layer's weight gradient (twice, measured);
* AdamW's step (foreach, the default on GPUs: one temporary the size of the head).

``S`` dominates: with bf16 autocast (``sim_bytes`` 2) and fp32 block outputs (LayerNorm runs in fp32 under autocast,
``act_bytes`` 4), ViT-B at batch 48 on 10 s clips needs ~3.45 GB of tensors (``benchmarks/probe_memory.py``; the model
matches a CPU measurement of ViT-B in fp32 at batch 2 and 4 to 1%).

``measure_peak_bytes(fn)`` counts every tensor storage created while ``fn`` runs (a ``TorchDispatchMode`` sees each
operator's outputs; a storage is freed when the last tensor holding it is), so it measures peak *tensor* memory on a
CPU too, where there is no ``torch.cuda.max_memory_allocated``. Storages that exist before the call (weights, their
gradients and AdamW states after a first step) are not counted.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _PeakTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.refs: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.size.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            if key not in self.refs:
                self.refs[key] = 0
                self.size[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.refs[key] += 1
            weakref.finalize(t, self._drop, key)
        return out


def measure_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of the tensor storages ``fn`` creates and holds at once (inputs and state made before: not counted)."""
    tracker = _PeakTracker()
    with tracker:
        fn()
    return tracker.peak


def cgp_step_memory(batch: int, patches: int = 512, prefix: int = 1, dim: int = 768, depth: int = 12,
                    mlp_hidden: int = 3072, heads: int = 12, prototypes: int = 10_000, classes: int = 527,
                    frames: int = 1024, mel_bins: int = 128, act_bytes: int = 4, sim_bytes: int = 2,
                    padding: bool = False, fused_attention: bool = True, encoder_params: int | None = None,
                    include_weights: bool = True) -> dict[str, float]:
    """Bytes at the three moments of a CGP step (module doc) and ``peak`` (their maximum, plus the weights: encoder
    fp32, head fp32 with its gradient and AdamW's two moments). ``act_bytes``: block outputs; ``sim_bytes``: the
    similarity matrix and its gradients (2 under bf16 autocast, 4 in fp32)."""
    B, N, P, D, K = batch, patches, prefix, dim, prototypes
    tokens = B * (P + N) * D * act_bytes  # one block's output
    fbank = B * frames * mel_bins * 4
    sim = B * N * K * sim_bytes
    mix = 2 * B * N * D * 4  # the layer mix and one weighted term
    small = B * K * (2 * 8 + 3 * 4 + 3 * 4 + 1)  # min/max indices, features, dropout output and mask
    attention = 0 if fused_attention else B * heads * (P + N) ** 2 * act_bytes
    protos = K * D * 4  # the normalised prototypes and the matmul's copy of their transpose
    fc = 3 * K * classes * 4  # the linear layer's weight gradient and its accumulation into .grad
    head_params = K * D + depth + 3 * K * classes + classes
    out = {
        "encoder": fbank + depth * tokens + 8 * tokens + attention,
        "head_forward": fbank + depth * tokens + (2 if padding else 1) * sim + mix + small + 2 * protos,
        "head_backward": fbank + depth * tokens + 3 * sim + mix + small + 2 * fc,
        "optimizer": 4 * head_params,  # AdamW's foreach temporaries (the default on GPUs)
    }
    if encoder_params is None:
        encoder_params = depth * (4 * D * D + 2 * D * mlp_hidden + 9 * D + mlp_hidden) + 256 * D + 3 * D
    out["weights"] = (4 * encoder_params + 16 * head_params) if include_weights else 0
    out["peak"] = max(out["encoder"], out["head_forward"], out["head_backward"], out["optimizer"]) + out["weights"]
    return out
