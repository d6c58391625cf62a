"""BEATs' acoustic tokenizers: what turns a spectrogram into one discrete label per patch.

* ``RandomProjectionTokenizer`` (iteration 1): frozen and seeded. Each 16x16 patch of the normalised fbank (the
  front end's global mean/std normalisation) is flattened, multiplied by a random matrix ``W [p*p, code_dim]``
  (xavier-normal), l2-normalised, and labelled with the nearest of ``codebook_size`` l2-normalised Gaussian codewords.
  The paper says "random projection ... nearest neighbour" (after BEST-RQ) and nothing about normalisation; we take
  BEST-RQ's: normalised input, l2-normalised projections and codewords (cosine nearest neighbour). Both tensors are
  buffers, so the checkpoint holds them and a resumed run keeps the same labels.
* ``DistilledTokenizer`` (iterations >= 2): a BEATs encoder -> ``Linear(D, D) -> Tanh -> Linear(D, code_dim)`` ->
  the ``NormEMAQuantizer`` codebook, trained by ``BEATsTokenizer`` (``beats_tokenizer_training.py``) and loaded frozen here
  from that run's checkpoint.

Both give ``codes [B, N]`` on the encoder's patch grid (time-major), for the batch's ``num_frames`` (real frames).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiossl.errors import CheckpointError, ConfigError
from audiossl.models import build_encoder
from audiossl.models.encoder import AudioEncoder
from audiossl.models.quantizer import NormEMAQuantizer

TOKENIZER_KINDS = ("random", "distilled")


def quantize_head(dim: int, code_dim: int) -> nn.Sequential:
    """BEATs' ``quantize_layer``: Linear(D, D) -> Tanh -> Linear(D, code_dim)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, code_dim))


def grid_patches(fbank: torch.Tensor, encoder: AudioEncoder) -> torch.Tensor:
    """``[B, T, F]`` -> ``[B, N, p*p]`` flattened patches on the encoder's grid (its padding or floor of T)."""
    c = encoder.config
    if c.patch_order != "time" or c.patch_stride != c.patch_size:
        raise ConfigError("the random-projection tokenizer needs non-overlapping, time-major patches")
    p = c.patch_size
    T = fbank.shape[1]
    use = encoder.padded_frames(T)
    x = F.pad(fbank, (0, 0, 0, use - T)) if use > T else fbank[:, :use]
    B, T, Fq = x.shape
    gt, gf = T // p, Fq // p
    x = x[:, :, : gf * p].reshape(B, gt, p, gf, p).permute(0, 1, 3, 2, 4)
    return x.reshape(B, gt * gf, p * p)


class RandomProjectionTokenizer(nn.Module):
    kind = "random"

    def __init__(self, patch_size: int = 16, codebook_size: int = 1024, code_dim: int = 256, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        n = patch_size * patch_size
        w = torch.randn(n, code_dim, generator=g) * math.sqrt(2.0 / (n + code_dim))  # xavier-normal
        self.register_buffer("projection", w)
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, code_dim, generator=g), dim=-1))
        self.codebook_size = codebook_size

    @torch.no_grad()
    def forward(self, fbank: torch.Tensor, encoder: AudioEncoder, num_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised fbank ``[B, T, F]`` -> codes ``[B, N]`` (the encoder gives the patch grid)."""
        z = F.normalize(grid_patches(fbank.float(), encoder) @ self.projection, dim=-1)  # [B, N, d]
        return (z @ self.codebook.T).argmax(dim=-1)


class DistilledTokenizer(nn.Module):
    kind = "distilled"

    def __init__(self, encoder: dict, codebook_size: int = 1024, code_dim: int = 256):
        super().__init__()
        self.encoder = build_encoder(encoder)
        self.quantize_layer = quantize_head(self.encoder.embed_dim, code_dim)
        self.quantizer = NormEMAQuantizer(codebook_size, code_dim)
        self.codebook_size = codebook_size
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: always in eval mode (no dropout, no codebook updates)
        return super().train(False)

    @torch.no_grad()
    def forward(self, fbank: torch.Tensor, encoder: AudioEncoder | None = None,
                num_frames: torch.Tensor | None = None) -> torch.Tensor:
        patches, valid = self.encoder.embed_padded(fbank, num_frames)
        z = F.normalize(self.quantize_layer(self.encoder.forward_tokens(patches, valid=valid)).float(), dim=-1)
        return self.quantizer.lookup(z)

    @torch.no_grad()
    def load_checkpoint(self, path: str) -> None:
        """Weights from a ``BEATsTokenizer`` training checkpoint (objective ``beats_tokenizer``): its encoder,
        ``quantize_layer`` and quantizer, checked against this tokenizer's settings."""
        from audiossl.hub.reader import load_weights, read_checkpoint, sub_state_dict
        from audiossl.config_dict import config_differences
        from audiossl.models.encoder import WEIGHT_NEUTRAL

        ckpt = read_checkpoint(path)
        meta = ckpt["audiossl"]
        if meta.get("objective") != "beats_tokenizer":
            raise CheckpointError(f"tokenizer checkpoint {path} was written by the {meta.get('objective')!r} "
                                  "objective; train one with a beats_tokenizer config first")
        diffs = config_differences(self.encoder.config.to_dict(), meta["encoder"], WEIGHT_NEUTRAL)
        if diffs:
            raise CheckpointError(f"tokenizer checkpoint {path}: its encoder differs from the config's tokenizer "
                                  f"encoder (ours, checkpoint's): {diffs}")
        sd = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(("teacher.", "estimator."))}
        load_weights(self, {k: v for k, v in sub_state_dict(sd, "").items()
                            if k.startswith(("encoder.", "quantize_layer.", "quantizer."))}, f"tokenizer {path}")
        if not bool(self.quantizer.initted):
            raise CheckpointError(f"tokenizer checkpoint {path} holds an uninitialised codebook (no training step)")


def build_tokenizer(spec: dict | None, encoder: AudioEncoder) -> nn.Module:
    """``{kind: random, seed, codebook_size, code_dim}`` or ``{kind: distilled, encoder: {...}, codebook_size,
    code_dim, checkpoint: PATH}`` -> a frozen tokenizer (a distilled one's weights load in ``setup``)."""
    spec = dict(spec or {"kind": "random"})
    kind = spec.pop("kind", "random")
    spec.pop("checkpoint", None)
    try:
        if kind == "random":
            return RandomProjectionTokenizer(patch_size=encoder.config.patch_size, **spec)
        if kind == "distilled":
            if "encoder" not in spec:
                raise ConfigError("a distilled tokenizer needs its encoder spec (tokenizer.encoder)")
            return DistilledTokenizer(**spec)
    except TypeError as e:
        raise ConfigError(f"tokenizer settings: {e}") from None
    raise ConfigError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
