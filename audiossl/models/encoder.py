"""The shared ViT patch encoder every objective and every classifier is built on.

Input is a normalised front-end output ``[B, T, F]`` (frames x mel bins). A ``Conv2d`` cuts 16x16 patches (stride 16,
or overlapping with a smaller stride as in AST); patches are flattened time-major (index ``t * (F/16) + f``), get
fixed 2-D sin-cos positions computed for whatever ``T`` arrives (or a learned table, for imported AST weights), and
prefix tokens (one CLS by default) are prepended *without* a position. The trunk is ``depth`` blocks in the ``pre``
(timm/AST/AudioMAE) or ``post`` (data2vec 2.0/EAT/SSLAM) style; the post style has a LayerNorm over [CLS]+patches
before the trunk and no final norm, the pre style a final norm and nothing before.

``encoder(x, keep=idx)`` runs only the kept patches (plus prefix tokens) through the trunk: MAE/EAT students drop
masked tokens this way. ``return_layers=True`` also returns every block's output and FFN output (EAT targets).

Padding. ``encoder(x, num_frames=n)`` (``n [B]``: frames of real audio per row, from ``FrontEnd(...,
return_frames=True)``) marks every patch whose first frame lies beyond the real audio as padding
(``patch_valid``, ``[B, N]`` bool); padding keys take no part in attention (an SDPA boolean mask), so the real
tokens of a padded clip are those of the clip cut to its own whole patches, up to float rounding. With ``keep``, a
kept index may point at a padding patch (a *filler*: masks keep the batch rectangular that way) and is masked too.
The outputs at padding positions are meaningless; poolings, targets and losses use ``patch_valid`` to ignore them.
A batch without padding runs without a mask (flash attention stays available on GPUs).

BEATs (``beats_base``) is a set of options of the same encoder, all off by default:
``patch_proj_dim`` (Conv2d without bias -> LayerNorm -> Linear, ``patch_embed.py``), ``pos_embed='none'`` with
``conv_pos`` (convolutional positions, ``conv_pos.py``) and ``rel_pos_buckets`` (gated relative position bias, one
table shared by the blocks, ``rel_pos.py``), ``deep_norm`` (post-LN residual ``LN(alpha x + f(x))``,
``alpha = (2 depth)^(1/4)``, and DeepNorm's init), dropouts, ``layerdrop`` (one draw per block per forward, for the
whole batch), ``grad_decay`` (BEATs' layer-wise gradient multiplier) and ``partial_patch='drop'`` (trailing frames
that fill no whole patch are dropped, and a partly real patch counts as padding). In that trunk, padding tokens are
zeroed before the convolutional positions (BEATs does the same), so a clip padded in a batch sees exactly what the
clip alone sees: the convolution's own zero padding.

Positions of a sparse sequence (``keep``). With ``sparse_positions='original'`` (default) the kept tokens keep their
places on the full grid: the relative bias uses their original indices, and the convolution runs over the full-length
sequence with the dropped tokens set to zero (as padding is), read back at the kept places. ``'compact'`` is ESPnet's
choice: both see the kept tokens as a contiguous sequence, so distances between kept tokens shrink.

BAT options (``reference/methods-bat.md`` §8): ``attn_gate`` (gated attention, ``blocks.py``); ``pos_embed:
sincos_bat``, BAT's fixed table kept as a frozen buffer ``pos_fixed [1, R, D]`` (its (8, 64) layout, ``sincos_bat``;
imported weights keep their stored table); ``chunk_time_patches`` (BAT 64): inputs longer than that many time
patches run as windows with positions restarting in each, their CLS averaged and their patches concatenated
(``chunking.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiossl.config_dict import DictConfig
from audiossl.errors import ConfigError
from audiossl.models.blocks import BLOCK_STYLES, Block
from audiossl.models.chunking import merge_chunks, split_chunks
from audiossl.models.conv_pos import ConvPositions
from audiossl.models.patch_embed import NormProjPatchEmbed
from audiossl.models.pos_embed import sincos_2d, sincos_2d_traceable, sincos_bat
from audiossl.models.rel_pos import GatedRelPosAttention, RelativePositionBias


def _tracing() -> bool:
    """True while ``torch.onnx.export``/``torch.jit.trace`` records the graph (sizes are then symbolic)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


@dataclass
class EncoderConfig(DictConfig):
    kind = "encoder"

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop_path: float = 0.0  # stochastic depth, linearly increasing to this value over the blocks
    block_style: str = "pre"  # "pre" (timm/AST/AudioMAE) or "post" (data2vec 2.0/EAT/SSLAM)
    num_mel_bins: int = 128
    patch_size: int = 16
    patch_stride: int = 16  # < patch_size gives overlapping patches (AST: 10)
    num_prefix_tokens: int = 1  # CLS (AST: 2, CLS + distillation)
    pos_embed: str = "sincos"  # "sincos" (fixed, any length), "learned" (a table over pos_grid, AST) or "sincos_bat"
    pos_grid: list[int] | None = None  # [time patches, freq patches] of a learned table (sincos_bat: of the stored one)
    patch_order: str = "time"  # "time": index t * Fp + f ; "freq": index f * Tp + t (AST)
    pad_input: bool = True  # pad T up to a whole number of patches; False raises instead
    name: str = ""  # registry name this config came from (informational)
    final_norm: bool = True  # pre style: LayerNorm after the last block (False: none, AudioMAE global-pool models)
    # --- BEATs options (see the module doc); the defaults leave the encoder as above ---
    patch_proj_dim: int = 0  # > 0: Conv2d (no bias) -> LayerNorm(this width) -> Linear(-> embed_dim) (BEATs 512)
    conv_pos: int = 0  # > 0: kernel of the convolutional positions (BEATs 128)
    conv_pos_groups: int = 16
    rel_pos_buckets: int = 0  # > 0: gated relative position bias over this many T5 buckets (BEATs 320)
    rel_pos_max_distance: int = 800
    sparse_positions: str = "original"  # positions of kept tokens: "original" (grid indices) or "compact" (ESPnet)
    deep_norm: bool = False  # post style: LN(alpha x + f(x)), alpha = (2 depth)^(1/4), and DeepNorm's init
    dropout: float = 0.0  # after attention and FFN outputs, and after the pre-trunk LayerNorm
    attn_drop: float = 0.0  # on attention probabilities
    input_dropout: float = 0.0  # on the patch embeddings
    layerdrop: float = 0.0  # training: skip each block with this probability (one draw for the whole batch)
    grad_decay: float = 1.0  # BEATs' layer_wise_gradient_decay_ratio: gradients x this at every block input
    partial_patch: str = "pad"  # "pad": pad T up, a partly real patch is real; "drop": floor T, it is padding
    # --- BAT options ---
    attn_gate: bool = False  # BAT: proj(attention * sigmoid(gate(x))), gate = Linear(D, D) per block
    chunk_time_patches: int = 0  # BAT 64: longer inputs run in windows of this many time patches (0: never)


    def validate(self) -> None:
        if self.block_style not in BLOCK_STYLES:
            raise ValueError(f"block_style must be one of {BLOCK_STYLES}, got {self.block_style!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed not in ("sincos", "learned", "none", "sincos_bat"):
            raise ValueError(f"pos_embed must be 'sincos', 'learned', 'none' or 'sincos_bat', got {self.pos_embed!r}")
        if self.pos_embed in ("sincos", "sincos_bat") and self.embed_dim % 4:
            raise ValueError(f"sin-cos positions need embed_dim divisible by 4, got {self.embed_dim}")
        if self.pos_embed == "learned" and (not self.pos_grid or len(self.pos_grid) != 2):
            raise ValueError("a learned position table needs pos_grid = [time patches, freq patches]")
        if self.patch_order not in ("time", "freq"):
            raise ValueError(f"patch_order must be 'time' or 'freq', got {self.patch_order!r}")
        if not 0 < self.patch_stride <= self.patch_size:
            raise ValueError("patch_stride must be in (0, patch_size]")
        if self.num_mel_bins < self.patch_size:
            raise ValueError(f"num_mel_bins {self.num_mel_bins} is smaller than a patch ({self.patch_size})")
        if self.num_prefix_tokens < 0:
            raise ValueError("num_prefix_tokens must be >= 0")
        if self.partial_patch not in ("pad", "drop"):
            raise ValueError(f"partial_patch must be 'pad' or 'drop', got {self.partial_patch!r}")
        if self.sparse_positions not in ("original", "compact"):
            raise ValueError(f"sparse_positions must be 'original' or 'compact', got {self.sparse_positions!r}")
        if (self.conv_pos or self.rel_pos_buckets) and self.num_prefix_tokens:
            raise ValueError("convolutional / relative positions run over patch tokens only: set num_prefix_tokens=0")
        if self.deep_norm and self.block_style != "post":
            raise ValueError("deep_norm needs block_style='post' (DeepNorm is a post-LN residual)")
        for name in ("dropout", "attn_drop", "input_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.chunk_time_patches < 0:
            raise ValueError("chunk_time_patches must be >= 0 (0: no chunking)")
        if (self.chunk_time_patches or self.pos_embed == "sincos_bat") and self.patch_order != "time":
            raise ValueError("chunk_time_patches and pos_embed='sincos_bat' need patch_order='time'")
        if self.pos_embed == "sincos_bat" and self.pos_grid is not None and len(self.pos_grid) != 2:
            raise ValueError("pos_grid of a sincos_bat table must be [time patches, freq patches]")
        if self.chunk_time_patches and (self.conv_pos or self.rel_pos_buckets):
            raise ValueError("chunk_time_patches (BAT) does not combine with conv_pos / rel_pos_buckets (BEATs)")


class AudioEncoder(nn.Module):
    def __init__(self, config: EncoderConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None:
            config = EncoderConfig()
        elif isinstance(config, dict):
            config = EncoderConfig.from_dict(config)
        if overrides:
            config = EncoderConfig.from_dict({**config.to_dict(), **overrides})
        config.validate()
        self.config = c = config
        D = c.embed_dim
        self.embed_dim = D
        self.num_prefix_tokens = c.num_prefix_tokens
        if c.patch_proj_dim:
            self.patch_embed = NormProjPatchEmbed(c.patch_size, c.patch_stride, c.patch_proj_dim, D, c.norm_eps)
        else:
            self.patch_embed = nn.Conv2d(1, D, kernel_size=c.patch_size, stride=c.patch_stride)
        self.num_freq_patches = (c.num_mel_bins - c.patch_size) // c.patch_stride + 1
        self.prefix_tokens = nn.Parameter(torch.zeros(1, c.num_prefix_tokens, D)) if c.num_prefix_tokens else None
        if c.pos_embed == "learned":
            gt, gf = c.pos_grid
            if gf != self.num_freq_patches:
                raise ValueError(f"pos_grid has {gf} frequency patches, the mel bins give {self.num_freq_patches}")
            self.pos_table = nn.Parameter(torch.zeros(1, c.num_prefix_tokens + gt * gf, D))
        else:
            self.pos_table = None
        if c.pos_embed == "sincos_bat":  # a frozen table (a buffer: never trained, saved with the weights)
            gt, gf = c.pos_grid or [c.chunk_time_patches or 64, self.num_freq_patches]
            if gf != self.num_freq_patches:
                raise ValueError(f"pos_grid has {gf} frequency patches, the mel bins give {self.num_freq_patches}")
            self.register_buffer("pos_fixed", sincos_bat(D, gt * gf).float()[None])  # [1, R, D]
        else:
            self.pos_fixed = None
        self._sincos_cache: dict = {}
        dpr = torch.linspace(0, c.drop_path, c.depth).tolist() if c.depth else []
        self.input_drop = nn.Dropout(c.input_dropout) if c.input_dropout else nn.Identity()
        self.conv_pos = ConvPositions(D, c.conv_pos, c.conv_pos_groups) if c.conv_pos else None
        self.rel_pos = (RelativePositionBias(c.num_heads, c.rel_pos_buckets, c.rel_pos_max_distance)
                        if c.rel_pos_buckets else None)
        self.pre_norm = nn.LayerNorm(D, eps=c.norm_eps) if c.block_style == "post" else nn.Identity()
        self.trunk_drop = nn.Dropout(c.dropout) if c.dropout else nn.Identity()
        alpha = (2.0 * c.depth) ** 0.25 if c.deep_norm else 1.0
        self.blocks = nn.ModuleList(
            Block(D, c.num_heads, c.mlp_ratio, c.qkv_bias, dpr[i], c.norm_eps, c.block_style,
                  attn=GatedRelPosAttention(D, c.num_heads, c.qkv_bias, c.attn_drop, c.dropout) if c.rel_pos_buckets
                  else None,
                  residual_scale=alpha, dropout=c.dropout, attn_drop=c.attn_drop, gated=c.attn_gate)
            for i in range(c.depth)
        )
        use_final_norm = c.block_style == "pre" and c.final_norm
        self.norm = nn.LayerNorm(D, eps=c.norm_eps) if use_final_norm else nn.Identity()
        self.reset_parameters()

    # --- initialisation ------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        if isinstance(self.patch_embed, NormProjPatchEmbed):
            self.patch_embed.reset_parameters()
        else:
            w = self.patch_embed.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(self.patch_embed.bias)
        if self.prefix_tokens is not None:
            nn.init.normal_(self.prefix_tokens, std=0.02)
        if self.pos_table is not None:
            nn.init.trunc_normal_(self.pos_table, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.deep_norm:
            self._deep_norm_init()

    @torch.no_grad()
    def _deep_norm_init(self) -> None:
        """BEATs' init: BERT's normal(0, 0.02) everywhere, then xavier-normal with DeepNorm's gain
        ``beta = (8 depth)^(-1/4)`` on the value, output and FFN projections and gain 1 on query and key."""
        beta = (8.0 * self.config.depth) ** -0.25
        D = self.embed_dim
        for blk in self.blocks:
            for m in blk.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            qkv = blk.attn.qkv.weight  # [3D, D]: q, k, v
            nn.init.xavier_normal_(qkv[:D], gain=1.0)
            nn.init.xavier_normal_(qkv[D : 2 * D], gain=1.0)
            nn.init.xavier_normal_(qkv[2 * D :], gain=beta)
            for lin in (blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                nn.init.xavier_normal_(lin.weight, gain=beta)

    # --- geometry ------------------------------------------------------------------------------------------------
    def grid_shape(self, num_frames: int) -> tuple[int, int]:
        """(time patches, freq patches) for an input of ``num_frames`` frames (after any padding)."""
        c = self.config
        T = self.padded_frames(num_frames)
        return (T - c.patch_size) // c.patch_stride + 1, self.num_freq_patches

    def num_patches(self, num_frames: int) -> int:
        gt, gf = self.grid_shape(num_frames)
        return gt * gf

    def padded_frames(self, num_frames: int) -> int:
        """Frames the patches cover: padded up to whole patches (``partial_patch='pad'``), or floored to them
        (``'drop'``); at least one patch."""
        c = self.config
        if num_frames < c.patch_size:
            return c.patch_size
        if c.partial_patch == "drop":
            return num_frames - (num_frames - c.patch_size) % c.patch_stride
        if c.patch_stride < c.patch_size:  # overlapping patches (AST): trailing frames that fill no stride are dropped
            return num_frames
        rem = (num_frames - c.patch_size) % c.patch_stride
        return num_frames if rem == 0 else num_frames + c.patch_stride - rem

    # --- positions -----------------------------------------------------------------------------------------------
    def _reorder(self, table: torch.Tensor, gt: int, gf: int) -> torch.Tensor:
        """Rows of a time-major ``[gt*gf, D]`` table put in this encoder's patch order."""
        if self.config.patch_order == "time":
            return table
        return table.view(gt, gf, -1).transpose(0, 1).reshape(gt * gf, -1)

    def patch_positions(self, gt: int, gf: int, device=None, dtype=None) -> torch.Tensor | None:
        """Position embeddings of the patch tokens, ``[gt * gf, D]`` in patch order (``None``: ``pos_embed='none'``;
        with ``chunk_time_patches``, the positions restart at every window: time patch ``t`` gets the row of
        ``t mod chunk``)."""
        if self.config.pos_embed == "none":
            return None
        chunk = self.config.chunk_time_patches
        if chunk and (gt > chunk or _tracing()):
            table = self._positions(chunk, gf, device, dtype)  # [chunk * gf, D]
            t = torch.arange(gt, device=table.device) % chunk
            rows = (t[:, None] * gf + torch.arange(gf, device=table.device)).reshape(-1)
            return table[rows]
        return self._positions(gt, gf, device, dtype)

    def _positions(self, gt: int, gf: int, device=None, dtype=None) -> torch.Tensor:
        if self.pos_fixed is not None:
            rows = self.pos_fixed.shape[1]
            if not _tracing() and gt * gf > rows:
                raise ValueError(f"{gt} time patches need {gt * gf} rows of the stored position table, it has {rows}; "
                                 f"chunk_time_patches ({self.config.chunk_time_patches}) splits longer inputs")
            return self.pos_fixed[0, : gt * gf].to(device=device, dtype=dtype)
        if self.pos_table is None:
            if _tracing():  # ONNX/jit export: build the table from (traced) sizes so the time length stays dynamic
                table = sincos_2d_traceable(self.embed_dim, gt, gf, device=device).to(dtype)
                return self._reorder(table, gt, gf)
            key = (gt, gf, device, dtype)
            if key not in self._sincos_cache:
                table = sincos_2d(self.embed_dim, gt, gf)
                self._sincos_cache[key] = self._reorder(table, gt, gf).to(device=device, dtype=dtype)
            return self._sincos_cache[key]
        P = self.num_prefix_tokens
        tgt, tgf = self.config.pos_grid
        table = self.pos_table[0, P:]  # [tgt * tgf, D] in patch order
        if (gt, gf) == (tgt, tgf):
            return table
        if gf != tgf:
            raise ValueError(f"the learned position table has {tgf} frequency patches, the input has {gf}")
        # to a [D, gf, gt] grid, crop or linearly interpolate the time axis, back to patch order
        grid = table.view(tgt, tgf, -1) if self.config.patch_order == "time" else table.view(tgf, tgt, -1).transpose(0, 1)
        grid = grid.permute(2, 1, 0)  # [D, gf, tgt]
        if gt <= tgt:
            grid = grid[..., :gt]
        else:
            grid = F.interpolate(grid[None], size=(gf, gt), mode="bilinear", align_corners=False)[0]
        grid = grid.permute(2, 1, 0)  # [gt, gf, D]
        if self.config.patch_order == "freq":
            grid = grid.transpose(0, 1)
        return grid.reshape(gt * gf, -1)

    # --- padding -------------------------------------------------------------------------------------------------
    def patch_valid(self, num_frames: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor | None:
        """``[B, N]`` bool, True where a patch holds real audio, for ``num_frames [B]`` real frames on the patch
        ``grid = (time patches, freq patches)`` (``grid_shape(T)``); ``None`` when ``num_frames`` is ``None`` or no
        patch is padding."""
        if num_frames is None:
            return None
        c = self.config
        gt, gf = grid
        n = num_frames.reshape(-1, 1).to(torch.long).clamp_min(1)
        starts = torch.arange(gt, device=n.device) * c.patch_stride  # [gt] first frame of each time patch
        if c.partial_patch == "drop":  # a patch is real when all its frames are (the first one always counts)
            valid_t = ((starts + c.patch_size)[None, :] <= n) | (starts == 0)[None, :]  # [B, gt]
        else:
            valid_t = starts[None, :] < n  # [B, gt]
        if not _tracing() and bool(valid_t.all()):
            return None
        if c.patch_order == "time":
            return valid_t.repeat_interleave(gf, dim=1)  # [B, gt*gf], index t*gf + f
        return valid_t.repeat(1, gf)  # [B, gf*gt], index f*gt + t

    @staticmethod
    def attention_mask(valid: torch.Tensor | None, num_prefix: int) -> torch.Tensor | None:
        """Token validity of the patches ``[B, K]`` -> the blocks' SDPA mask ``[B, 1, 1, P + K]`` (prefix always in)."""
        if valid is None:
            return None
        if num_prefix:
            valid = torch.cat([valid.new_ones(valid.shape[0], num_prefix), valid], dim=1)
        return valid[:, None, None, :]

    # --- forward -------------------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions: ``[B, T, F]`` -> ``[B, N, D]`` (N = time patches x freq patches)."""
        if x.dim() != 3:
            raise ValueError(f"the encoder expects a front-end output [B, T, F], got shape {tuple(x.shape)}")
        B, T, Fq = x.shape
        c = self.config
        if Fq != c.num_mel_bins:
            raise ValueError(f"the encoder was built for {c.num_mel_bins} mel bins, the input has {Fq}")
        Tpad = self.padded_frames(T)
        if c.partial_patch == "drop":
            if T < c.patch_size:  # one patch at least; otherwise the convolution drops the frames no patch fills
                x = F.pad(x, (0, 0, 0, c.patch_size - T))
        elif _tracing() and c.pad_input and c.patch_stride == c.patch_size:
            # Traced graphs must not bake in this input's padding. Appending stride - 1 zero frames always gives the
            # same patches as padding to the next whole patch: the convolution drops the frames no patch can fill.
            x = F.pad(x, (0, 0, 0, c.patch_stride - 1))
        elif Tpad != T:
            if not c.pad_input:
                raise ValueError(
                    f"{T} frames do not make a whole number of {c.patch_size}-frame patches (stride {c.patch_stride}); "
                    f"pad the input to {Tpad} frames or build the encoder with pad_input=True"
                )
            x = F.pad(x, (0, 0, 0, Tpad - T))
        p = self.patch_embed(x.unsqueeze(1))  # [B, D, Tp, Fp]
        gt, gf = p.shape[2], p.shape[3]
        if c.patch_order == "time":
            p = p.permute(0, 2, 3, 1).reshape(B, gt * gf, -1)  # [B, Tp*Fp, D], index t*Fp + f
        else:
            p = p.permute(0, 3, 2, 1).reshape(B, gt * gf, -1)  # [B, Fp*Tp, D], index f*Tp + t
        pos = self.patch_positions(gt, gf, device=p.device, dtype=p.dtype)
        return p if pos is None else p + pos

    def embed_padded(self, x: torch.Tensor, num_frames: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``embed(x)`` and the patches' validity ``[B, N]`` (``patch_valid``; ``None``: no padding)."""
        patches = self.embed(x)
        gf = self.num_freq_patches
        return patches, self.patch_valid(num_frames, (patches.shape[1] // gf, gf))

    def prefix(self, batch: int) -> torch.Tensor | None:
        """Prefix tokens ``[B, P, D]`` (with their learned positions when the table has them)."""
        if self.prefix_tokens is None:
            return None
        tok = self.prefix_tokens
        if self.pos_table is not None:
            tok = tok + self.pos_table[:, : self.num_prefix_tokens]
        return tok.expand(batch, -1, -1)

    def forward_tokens(self, patches: torch.Tensor, keep: torch.Tensor | None = None, return_layers: bool = False,
                       valid: torch.Tensor | None = None):
        """Trunk over embedded patches ``[B, N, D]``; ``keep`` ``[B, K]`` selects the patches that enter; ``valid``
        ``[B, N]`` (``patch_valid``) keeps padding patches out of attention."""
        if keep is not None and (keep.dim() != 2 or keep.shape[0] != patches.shape[0]):
            raise ValueError(f"keep must be [B, K] patch indices, got {tuple(keep.shape)}")
        chunk = self.config.chunk_time_patches
        long = bool(chunk) and patches.shape[1] > chunk * self.num_freq_patches
        if keep is not None and long:
            raise ValueError(f"token dropping (keep) needs inputs of at most chunk_time_patches={chunk} time "
                             f"patches, got {patches.shape[1] // self.num_freq_patches}")
        positions = None
        if self.conv_pos is not None or self.rel_pos is not None:
            patches, valid, positions = self._relative_inputs(patches, keep, valid)
        else:
            if keep is not None:
                patches = torch.gather(patches, 1, keep[..., None].expand(-1, -1, patches.shape[-1]))  # [B, K, D]
                if valid is not None:
                    valid = torch.gather(valid, 1, keep)  # [B, K]
            patches = self.input_drop(patches)
        if chunk and keep is None and (long or _tracing()):
            return self._forward_chunked(patches, return_layers, valid)
        return self._trunk(patches, return_layers, valid, positions)

    def _forward_chunked(self, patches: torch.Tensor, return_layers: bool, valid: torch.Tensor | None):
        """``_trunk`` over windows of ``chunk_time_patches`` time patches, folded into the batch (``chunking.py``)."""
        B, N, _ = patches.shape
        P = self.num_prefix_tokens
        windows, wvalid, real, C = split_chunks(patches, valid, self.num_freq_patches, self.config.chunk_time_patches)
        out = self._trunk(windows, return_layers, wvalid)
        if not return_layers:
            return merge_chunks(out, B, C, P, N, real)
        x, layers, ffn = out
        return (merge_chunks(x, B, C, P, N, real), [merge_chunks(h, B, C, P, N, real) for h in layers],
                [merge_chunks(h, B, C, P, N, real) for h in ffn])

    def _trunk(self, patches: torch.Tensor, return_layers: bool, valid: torch.Tensor | None,
               positions: torch.Tensor | None = None):
        """Prefix tokens + pre-norm + blocks (+ final norm) over ``patches [B, K, D]`` (validity ``[B, K]``;
        ``positions``: token indices for the relative position bias)."""
        mask = self.attention_mask(valid, self.num_prefix_tokens)
        pre = self.prefix(patches.shape[0])
        x = patches if pre is None else torch.cat([pre, patches], dim=1)  # [B, P + K, D]
        x = self.trunk_drop(self.pre_norm(x))
        pos_bias = None if self.rel_pos is None else self.rel_pos(positions)  # [1 or B, H, K, K]
        c = self.config
        layers, ffn = [], []
        for blk in self.blocks:
            if self.training and c.grad_decay != 1.0 and torch.is_grad_enabled():
                x = _GradMultiply.apply(x, c.grad_decay)
            if self.training and c.layerdrop > 0 and float(torch.rand(())) < c.layerdrop:
                x, h = x, torch.zeros_like(x)  # the block is skipped for the whole batch (its FFN output: none)
            else:
                x, h = blk(x, mask, pos_bias)
            if return_layers:
                layers.append(x)
                ffn.append(h)
        x = self.norm(x)
        if return_layers:
            return x, layers, ffn
        return x

    def _relative_inputs(self, patches: torch.Tensor, keep: torch.Tensor | None, valid: torch.Tensor | None):
        """The BEATs trunk's input: padding zeroed, the kept tokens gathered, convolutional positions added.
        Returns (tokens ``[B, K, D]``, their validity ``[B, K]`` or ``None``, positions for the relative bias:
        ``[K]`` shared or ``[B, K]`` grid indices)."""
        if valid is not None:
            patches = patches * valid[..., None].to(patches.dtype)  # padding tokens are zeros (BEATs)
        B, N, D = patches.shape
        sparse = keep is not None and self.config.sparse_positions == "original"
        if keep is None:
            x = self.input_drop(patches)
        else:
            idx = keep[..., None].expand(-1, -1, D)
            x = self.input_drop(torch.gather(patches, 1, idx))  # [B, K, D]
            if valid is not None:
                valid = torch.gather(valid, 1, keep)
        if self.conv_pos is not None:
            if sparse:  # the full grid, dropped tokens zero, read back at the kept places
                full = torch.zeros_like(patches).scatter(1, idx, x)  # [B, N, D]
                x = torch.gather(self.conv_pos(full), 1, idx)
            else:
                x = self.conv_pos(x)
        positions = keep if sparse else torch.arange(x.shape[1], device=x.device)
        return x, valid, positions

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, return_layers: bool = False,
                num_frames: torch.Tensor | None = None):
        """``[B, T, F]`` -> tokens ``[B, P + N, D]`` (prefix first); with ``return_layers`` also per-block lists
        ``layers`` (block outputs) and ``ffn`` (FFN outputs before the residual), each ``[B, P + N, D]``.
        ``num_frames [B]``: real frames per row; padding patches are kept out of attention (see the module doc)."""
        patches, valid = self.embed_padded(x, num_frames)
        return self.forward_tokens(patches, keep=keep, return_layers=return_layers, valid=valid)

    def no_weight_decay(self) -> set[str]:
        return {"prefix_tokens", "pos_table"}


class _GradMultiply(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` backward (BEATs' ``GradMultiply``)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


# --- registry ----------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., AudioEncoder]] = {}
_DEFAULTS: dict[str, dict] = {}


def register_encoder(name: str, **defaults) -> None:
    """Register a named encoder size: ``create_encoder(name, **overrides)`` builds it."""
    _DEFAULTS[name] = {**defaults, "name": name}


register_encoder("vit_tiny", embed_dim=192, depth=12, num_heads=3)
register_encoder("vit_small", embed_dim=384, depth=12, num_heads=6)
register_encoder("vit_base", embed_dim=768, depth=12, num_heads=12)
register_encoder("vit_large", embed_dim=1024, depth=24, num_heads=16)
# BEATs (Chen et al. 2023), the released configuration; dropouts and layerdrop as in its pretraining checkpoints.
BEATS_OPTIONS = dict(
    block_style="post", norm_eps=1e-5, num_prefix_tokens=0, pos_embed="none", patch_proj_dim=512, conv_pos=128,
    conv_pos_groups=16, rel_pos_buckets=320, rel_pos_max_distance=800, deep_norm=True, partial_patch="drop",
    dropout=0.1, attn_drop=0.1, input_dropout=0.1, layerdrop=0.05,
)
register_encoder("beats_base", embed_dim=768, depth=12, num_heads=12, **BEATS_OPTIONS)


def list_encoders() -> list[str]:
    return sorted(_DEFAULTS)


# Settings that do not change the weights: two encoders differing only in these load each other's state dicts.
WEIGHT_NEUTRAL = ("name", "drop_path", "dropout", "attn_drop", "input_dropout", "layerdrop", "grad_decay")


def encoder_config(name: str, **overrides) -> EncoderConfig:
    if name not in _DEFAULTS:
        raise ConfigError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    return EncoderConfig.from_dict({**_DEFAULTS[name], **overrides})


def create_encoder(name: str, **overrides) -> AudioEncoder:
    """Build a registered encoder (``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``, ``beats_base``) with
    overrides such as ``depth=2, embed_dim=64, block_style='post'``."""
    return AudioEncoder(encoder_config(name, **overrides))


def build_encoder(spec: dict | EncoderConfig | AudioEncoder) -> AudioEncoder:
    """An encoder from a config spec: ``{"name": "vit_base", **overrides}`` or a full ``EncoderConfig`` dict."""
    if isinstance(spec, AudioEncoder):
        return spec
    if isinstance(spec, EncoderConfig):
        return AudioEncoder(spec)
    spec = dict(spec)
    name = spec.pop("name", "") or ""
    if name in _DEFAULTS:
        return create_encoder(name, **spec)
    if name:
        raise ConfigError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    return AudioEncoder(EncoderConfig.from_dict(spec))
