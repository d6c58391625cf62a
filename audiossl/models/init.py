"""Reference weight initialisations, applied by the objectives to a freshly built encoder (and decoder/predictor).

``AudioEncoder.reset_parameters`` gives every model one default (Linear trunc-normal 0.02, zero biases, LayerNorm
1/0, patch embedding xavier-uniform on its 2-D view with a zero bias, prefix tokens N(0, 0.02)). The references differ:

* EAT / SSLAM (data2vec 2.0): ``init_bert_params`` = Linear N(0, 0.02) (our trunc-normal at +-2 absolute is the same
  distribution); the patch-embedding bias keeps PyTorch's Conv2d default U(+-1/sqrt(fan_in)); the CLS
  (``extra_tokens``, ``init_extra_token_zero: false``) is ``nn.init.normal_``: **N(0, 1)**.
* AudioMAE: every Linear **xavier-uniform** (zero bias), LayerNorm 1/0, CLS and mask token N(0, 0.02); the
  patch-embedding bias keeps PyTorch's default.
* I-JEPA: Linear and Conv2d trunc-normal 0.02 with zero biases, then ``fix_init_weight``: the attention output and
  second MLP weights of block ``l`` (1-based) divided by ``sqrt(2 l)``, in the encoder and in the predictor.
"""

from __future__ import annotations

import math

import torch.nn as nn

WEIGHT_INITS = ("default", "xavier", "ijepa")


def default_conv_bias_(conv: nn.Conv2d) -> None:
    """The bias PyTorch's ``Conv2d.reset_parameters`` draws: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if conv.bias is None:
        return
    fan_in = conv.weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(conv.bias, -bound, bound)


def xavier_linears_(module: nn.Module) -> None:
    """AudioMAE's ``_init_weights``: xavier-uniform weights and zero biases for every ``nn.Linear`` in ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def rescale_residual_branches_(blocks) -> None:
    """I-JEPA ``fix_init_weight``: block ``l`` (1-based): ``attn.proj.weight`` and ``mlp.fc2.weight`` / sqrt(2 l)."""
    for i, blk in enumerate(blocks):
        scale = math.sqrt(2.0 * (i + 1))
        blk.attn.proj.weight.data.div_(scale)
        blk.mlp.fc2.weight.data.div_(scale)


def reference_init_(encoder, scheme: str = "default", cls_std: float | None = None,
                    patch_bias: str = "zeros") -> None:
    """Re-initialise a freshly built ``AudioEncoder`` in place after one reference.

    ``scheme``: ``default`` (leave the weights), ``xavier`` (AudioMAE's Linears), ``ijepa`` (the patch embedding
    trunc-normal 0.02 with a zero bias, residual branches rescaled); ``cls_std``: redraw the prefix tokens from
    N(0, cls_std) (EAT: 1.0); ``patch_bias``: ``zeros`` or ``default`` (PyTorch's Conv2d draw, EAT and AudioMAE).
    """
    if scheme not in WEIGHT_INITS:
        raise ValueError(f"weight init must be one of {WEIGHT_INITS}, got {scheme!r}")
    if patch_bias not in ("zeros", "default"):
        raise ValueError(f"patch_bias must be 'zeros' or 'default', got {patch_bias!r}")
    if scheme == "xavier":
        xavier_linears_(encoder.blocks)
    elif scheme == "ijepa":
        nn.init.trunc_normal_(encoder.patch_embed.weight, std=0.02)
        nn.init.zeros_(encoder.patch_embed.bias)
        rescale_residual_branches_(encoder.blocks)
    if patch_bias == "default" and scheme != "ijepa":
        default_conv_bias_(encoder.patch_embed)
    if cls_std is not None and encoder.prefix_tokens is not None:
        nn.init.normal_(encoder.prefix_tokens, std=cls_std)
