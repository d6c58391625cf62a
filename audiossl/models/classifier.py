"""A sound classifier: the shared encoder plus a pooled LayerNorm -> Linear head (the EAT/AudioMAE/AST recipe).

``AudioClassifier`` is what fine-tuning trains, what export writes and what ``audiossl.load_model`` returns. It takes
the *normalised front-end output* ``[B, T, F]``; ``model.front_end`` (a ``FrontEnd``) turns waveforms into that, so
the whole description of the model (front end, encoder, head, label names) lives in ``model.config_dict()``.

``HeadConfig.probe`` picks the head: ``linear`` (pooled token -> LayerNorm -> dropout -> Linear: fine-tuning and
BAT's linear probe) or a probe over every block's tokens from ``audiossl.models.probe_heads`` (``cgp``, ``lcgp``, ``h2t``). Either
way ``outputs(fbank, num_frames)`` gives (logits, clip embedding, patch tokens): the runners, the ONNX graph and
``predict``/``evaluate`` use it, so probe checkpoints export and predict like any classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from audiossl.config_dict import DictConfig
from audiossl.models import inference
from audiossl.errors import MissingHeadError
from audiossl.frontend.features import FrontEnd, FrontEndConfig
from audiossl.models.encoder import AudioEncoder, EncoderConfig, build_encoder
from audiossl.models.probe_heads import LAYER_PROBES, build_layer_probe

POOLINGS = ("cls", "mean", "prefix")


@dataclass
class HeadConfig(DictConfig):
    kind = "head"

    num_classes: int
    pool: str = "cls"  # "cls": first token; "mean": mean of patch tokens; "prefix": mean of prefix tokens (AST)
    norm: bool = True  # LayerNorm before the linear layer (EAT's fc_norm)
    norm_eps: float = 1e-6
    probe: str = "linear"  # "linear" (this pooled head) or a multi-block probe from audiossl.models.probe_heads: cgp, lcgp, h2t
    num_prototypes: int = 10_000  # cgp
    dropout: float = 0.0  # before the linear layer (BAT's probes: 0.2)


def pool_tokens(tokens: torch.Tensor, pool: str, num_prefix_tokens: int,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, P + N, D]`` -> ``[B, D]``; ``valid [B, N]`` (padding mask, True = real patch) restricts ``mean`` to the
    real patches (the prefix tokens attended to real patches only already)."""
    if pool == "cls":
        if num_prefix_tokens < 1:
            raise ValueError("pool='cls' needs an encoder with a CLS token")
        return tokens[:, 0]
    if pool == "prefix":
        return tokens[:, :num_prefix_tokens].mean(dim=1)
    if pool == "mean":
        patches = tokens[:, num_prefix_tokens:]
        if valid is None:
            return patches.mean(dim=1)
        w = valid.to(patches.dtype)[..., None]  # [B, N, 1]
        return (patches * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")


class ClassifierHead(nn.Module):
    def __init__(self, dim: int, config: HeadConfig):
        super().__init__()
        if config.pool not in POOLINGS:
            raise ValueError(f"pool must be one of {POOLINGS}, got {config.pool!r}")
        if config.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {config.num_classes}")
        self.config = config
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps) if config.norm else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.linear = nn.Linear(dim, config.num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(self.norm(pooled)))  # [B, C]


class AudioClassifier(nn.Module):
    """Front end + encoder + head. ``head=None`` makes an encoder-only model (exported from a pretraining checkpoint):
    ``embed``/``forward_features`` work, ``forward``/``predict`` raise ``MissingHeadError``; its clip embedding pools
    with ``pool`` (default: the CLS token when the encoder has one, else the mean of the patch tokens)."""

    def __init__(
        self,
        encoder: AudioEncoder | EncoderConfig | dict,
        head: HeadConfig | dict | None,
        front_end: FrontEndConfig | dict | None = None,
        label_names: list[str] | None = None,
        multi_label: bool = True,
        pool: str | None = None,
    ):
        super().__init__()
        self.encoder = build_encoder(encoder)
        if head is None:
            self.head_config = None
            self.head = None
            self._pool = pool or ("cls" if self.encoder.num_prefix_tokens else "mean")
            if self._pool not in POOLINGS:
                raise ValueError(f"pool must be one of {POOLINGS}, got {self._pool!r}")
            if label_names:
                raise ValueError(f"{len(label_names)} label names given for a model without a classifier head")
            label_names = []
        else:
            self.head_config = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(dict(head))
            if pool is not None and pool != self.head_config.pool:
                raise ValueError(f"pool={pool!r} contradicts the head's pool {self.head_config.pool!r}")
            self.head = self._build_head(self.head_config)
            self._pool = self.head_config.pool
        self.front_end = FrontEnd(front_end)
        if self.front_end.config.num_mel_bins != self.encoder.config.num_mel_bins:
            raise ValueError(
                f"front end makes {self.front_end.config.num_mel_bins} mel bins, "
                f"the encoder expects {self.encoder.config.num_mel_bins}"
            )
        if label_names is None:
            label_names = [f"class_{i}" for i in range(self.head_config.num_classes)]
        if self.head_config is not None and len(label_names) != self.head_config.num_classes:
            raise ValueError(f"{len(label_names)} label names for {self.head_config.num_classes} classes")
        self.label_names = list(label_names)
        self.multi_label = bool(multi_label)

    def _build_head(self, hc: HeadConfig) -> nn.Module:
        if hc.probe == "linear":
            return ClassifierHead(self.encoder.embed_dim, hc)
        if hc.probe not in LAYER_PROBES:
            raise ValueError(f"head probe must be 'linear' or one of {LAYER_PROBES}, got {hc.probe!r}")
        if hc.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {hc.num_classes}")
        enc = self.encoder
        return build_layer_probe(hc.probe, enc.embed_dim, enc.config.depth, hc.num_classes, hc.num_prototypes,
                                 hc.dropout, has_cls=enc.num_prefix_tokens > 0, norm_eps=hc.norm_eps)

    @property
    def has_head(self) -> bool:
        return self.head is not None

    @property
    def layered_head(self) -> bool:
        """Whether the head reads every block's tokens (a ``cgp``/``lcgp``/``h2t`` probe) rather than one pooled token."""
        return self.head_config is not None and self.head_config.probe != "linear"

    @property
    def pool(self) -> str:
        """How the clip embedding is pooled from the tokens (``cls``, ``prefix`` or ``mean``)."""
        return self._pool

    def config_dict(self) -> dict:
        """Everything needed to rebuild this model (no weights). Encoder-only models have ``head: None`` + ``pool``."""
        d = {
            "encoder": self.encoder.config.to_dict(),
            "head": None if self.head_config is None else self.head_config.to_dict(),
            "front_end": self.front_end.config.to_dict(),
            "label_names": self.label_names,
            "multi_label": self.multi_label,
        }
        if self.head_config is None:
            d["pool"] = self._pool
        return d

    @classmethod
    def from_config_dict(cls, d: dict) -> "AudioClassifier":
        head = d["head"]
        return cls(
            encoder=EncoderConfig.from_dict(d["encoder"]),
            head=None if head is None else HeadConfig.from_dict(head),
            front_end=FrontEndConfig.from_dict(d["front_end"]),
            label_names=d.get("label_names"),
            multi_label=d.get("multi_label", True),
            pool=d.get("pool"),
        )

    def forward_features(self, fbank: torch.Tensor,
                         num_frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, F]`` -> (clip embedding ``[B, D]``, frame/patch tokens ``[B, N, D]``). ``num_frames [B]`` (real
        frames per row, ``front_end(..., return_frames=True)``) keeps padding out of attention and pooling; the patch
        tokens at padding positions are then meaningless."""
        tokens, _, valid = self.encode(fbank, num_frames)
        P = self.encoder.num_prefix_tokens
        return pool_tokens(tokens, self._pool, P, valid), tokens[:, P:]

    def encode(self, fbank: torch.Tensor, num_frames: torch.Tensor | None = None, layers: bool = False):
        """(tokens ``[B, P + N, D]``, every block's output ``[B, P + N, D]`` x depth or ``None``, patch validity
        ``[B, N]`` or ``None``)."""
        enc = self.encoder
        patches, valid = enc.embed_padded(fbank, num_frames)
        if not layers:
            return enc.forward_tokens(patches, valid=valid), None, valid
        tokens, blocks, _ = enc.forward_tokens(patches, valid=valid, return_layers=True)
        return tokens, blocks, valid

    def head_logits(self, tokens: torch.Tensor, layers: list | None, valid: torch.Tensor | None,
                    inplace: bool = False) -> torch.Tensor:
        """Logits from ``encode``'s outputs. ``inplace``: a multi-block probe may normalise ``layers`` in place (a
        frozen encoder's outputs that nothing else reads)."""
        if self.head is None:
            raise MissingHeadError(_NO_HEAD)
        if self.layered_head:
            return self.head(layers, self.encoder.num_prefix_tokens, valid, inplace=inplace)
        return self.head(pool_tokens(tokens, self._pool, self.encoder.num_prefix_tokens, valid))

    def outputs(self, fbank: torch.Tensor, num_frames: torch.Tensor | None = None):
        """(logits ``[B, C]`` or ``None`` without a head, clip embedding ``[B, D]``, patch tokens ``[B, N, D]``)."""
        tokens, layers, valid = self.encode(fbank, num_frames, layers=self.layered_head)
        P = self.encoder.num_prefix_tokens
        logits = None if self.head is None else self.head_logits(tokens, layers, valid)
        return logits, pool_tokens(tokens, self._pool, P, valid), tokens[:, P:]

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised front-end output ``[B, T, F]`` (and real frames per row ``[B]``) -> logits ``[B, num_classes]``."""
        if self.head is None:
            raise MissingHeadError(_NO_HEAD)
        tokens, layers, valid = self.encode(fbank, num_frames, layers=self.layered_head)
        return self.head_logits(tokens, layers, valid)

    def logits_from_audio(self, waveforms: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms ``[B, N]`` at the front end's rate (``num_samples [B]``: real length of zero-padded rows) ->
        logits ``[B, C]``, with the padding mask when the front end asks for it."""
        x, frames = self.front_end(waveforms, num_samples=num_samples, return_frames=True)
        return self(x, frames)

    # --- user-facing inference (implemented in audiossl.models.inference, which knows models only by their methods) -----
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., C]`` -> class probabilities: sigmoid for multi-label models, softmax otherwise."""
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def predict(self, audio, top_k: int = 5, sample_rate: int | None = None, hop: float | None = None,
                aggregate: str = "max") -> list[tuple[str, float]]:
        """Top-k ``[(label, probability), ...]`` for one clip: a file path, file bytes, or a waveform (``[N]`` or
        ``[channels, N]``, at ``sample_rate``, default the model's rate). Clips longer than the model's window are
        cut into windows ``hop`` seconds apart (default: half a window) and the window probabilities aggregated
        (``max`` or ``mean``)."""
        return inference.predict(self, audio, top_k=top_k, sample_rate=sample_rate, hop=hop, aggregate=aggregate)

    def embed(self, audio, sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip embedding ``[D]``, frame embeddings ``[N, D]``) for one clip (path, bytes or waveform). Clips longer
        than a window are cut into back-to-back windows: the clip embedding is the mean over windows, the frame
        embeddings are every window's patch tokens, window after window."""
        return inference.embed(self, audio, sample_rate=sample_rate)


_NO_HEAD = (
    "this model has no classifier head (it was exported from a pretraining checkpoint, config.json has head: null); "
    "use model.embed(...) / model.forward_features(...) for embeddings, or fine-tune it into a classifier"
)
