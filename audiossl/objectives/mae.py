"""MAE on spectrograms (AudioMAE-style, Huang et al. 2022): reconstruct masked patches from the visible ones.

1. ``random_mask``: 80% of the patches are masked uniformly at random; the encoder sees the visible 20% (+ CLS).
2. ``decoder``: a narrow transformer; the visible tokens are projected to its width, learned mask tokens take the
   masked positions, fixed sin-cos positions are added, and each masked position predicts its 16x16 patch.
   ``decoder_type: swin`` is AudioMAE's own (``decoder_mode 1``): Swin blocks with 4x4 local windows, the shift
   alternating (0, 0) / (2, 0) (``audiossl.models.swin_decoder``); ``global``: pre-LN blocks with global attention.
3. ``target``: the patch's normalised values (``norm_pix_loss``: per-patch mean and variance removed, eps 1e-6).
4. ``loss``: mean over masked patches of the per-patch mean squared error.

Neither decoder sees the CLS token (AudioMAE's ``decoder_mode 1`` drops it too). Initialisation is AudioMAE's
(``weight_init: xavier``): every Linear xavier-uniform, the patch-embedding bias PyTorch's Conv2d draw.

Padding (``num_frames``): masks over each clip's real patches, padding out of the encoder's and the decoder's
attention, and only real masked patches in the loss.
"""

from __future__ import annotations

import torch

from audiossl.objectives.masking import random_mask
from audiossl.models.decoders import TokenDecoder
from audiossl.models.init import reference_init_, xavier_linears_
from audiossl.models.swin_decoder import SwinDecoder
from audiossl.objectives.base import PretrainModule
from audiossl.objectives.eat import gather_tokens
from audiossl.objectives.targets import feature_std


def patchify(fbank: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, T, F]`` -> ``[B, N, patch*patch]`` time-major patches, each flattened (time, freq) within the patch."""
    B, T, F = fbank.shape
    gt, gf = T // patch, F // patch
    x = fbank[:, : gt * patch, : gf * patch].reshape(B, gt, patch, gf, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(B, gt * gf, patch * patch)


def normalized_pixel_target(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE ``norm_pix_loss`` target: each patch standardised by its own mean and (unbiased) variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over masked patches of the mean squared error over a patch's values. pred/target ``[B, M, P]``;
    ``weight [B, M]`` (bool or 0/1): only those patches count."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, M]
    if weight is None:
        return per_patch.mean()
    w = weight.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp_min(1.0)


class MAE(PretrainModule):
    objective = "mae"

    def __init__(
        self,
        encoder: dict,
        mask_ratio: float = 0.8,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        decoder_type: str = "global",
        decoder_window: tuple[int, int] = (4, 4),
        decoder_shift: tuple[int, int] = (2, 0),
        weight_init: str = "xavier",
        patch_bias_init: str = "default",
        **kwargs,
    ):
        """
        Args:
            encoder: student encoder spec; AudioMAE uses ``{name: vit_base, block_style: pre}``.
            mask_ratio: fraction of patches masked (0.8).
            decoder_dim/decoder_depth/decoder_heads: the reconstruction decoder (AudioMAE: 512 wide, 16 heads).
            norm_pix_loss: reconstruct per-patch normalised values (AudioMAE's setting) instead of raw values.
            decoder_type: ``global`` (pre-LN transformer) or ``swin`` (AudioMAE's local windows: 16 blocks, 512 wide,
                16 heads, ``decoder_window`` 4x4, ``decoder_shift`` (2, 0) on every other block).
            weight_init: ``xavier`` (AudioMAE: every Linear xavier-uniform) or ``default`` (the encoder's 0.02).
            patch_bias_init: ``default`` (PyTorch's Conv2d draw, as AudioMAE leaves it) or ``zeros``.
        """
        super().__init__(encoder=encoder, **kwargs)
        p = self.encoder.config.patch_size
        if self.encoder.config.patch_stride != p:
            raise ValueError("MAE reconstruction needs non-overlapping patches (patch_stride == patch_size)")
        if weight_init not in ("xavier", "default"):
            raise ValueError(f"weight_init must be 'xavier' or 'default', got {weight_init!r}")
        reference_init_(self.encoder, weight_init, None, patch_bias_init)
        D = self.encoder.embed_dim
        if decoder_type == "swin":
            self.decoder = SwinDecoder(D, decoder_dim, decoder_depth, decoder_heads, out_dim=p * p,
                                       window=tuple(decoder_window), shift=tuple(decoder_shift))
        elif decoder_type == "global":
            self.decoder = TokenDecoder(D, decoder_dim, decoder_depth, decoder_heads, out_dim=p * p)
            if weight_init == "xavier":
                xavier_linears_(self.decoder)
        else:
            raise ValueError(f"decoder_type must be 'global' or 'swin', got {decoder_type!r}")

    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict:
        hp = self.hparams
        B, T, _ = fbank.shape
        grid = self.encoder.grid_shape(T)
        N = grid[0] * grid[1]
        patches, valid = self.encoder.embed_padded(fbank, num_frames)  # [B, N, D], [B, N] or None
        keep, masked = random_mask(B, N, hp.mask_ratio, generator, self.device, valid)  # [B, K], [B, M]
        tokens = self.encoder.forward_tokens(patches, keep=keep, valid=valid)  # [B, P + K, D]
        P = self.encoder.num_prefix_tokens
        pred = self.decoder(tokens[:, P:], keep, masked, grid, valid)  # [B, M, p*p]
        x = fbank
        Tpad = self.encoder.padded_frames(T)
        if Tpad != T:
            x = torch.nn.functional.pad(fbank, (0, 0, 0, Tpad - T))
        target = patchify(x, self.encoder.config.patch_size)  # [B, N, p*p]
        if hp.norm_pix_loss:
            target = normalized_pixel_target(target)
        target = gather_tokens(target, masked)
        m_valid = None if valid is None else valid.gather(1, masked)  # [B, M] real masked patches
        loss = masked_mse(pred, target, m_valid)
        return {
            "loss": loss,
            "recon_loss": loss.detach(),
            "masked_pct": masked.shape[1] / N if valid is None else m_valid.sum() / valid.sum().clamp_min(1),
            "pred_std": feature_std(pred, m_valid),
            "student_cls_std": feature_std(tokens[:, 0]) if P else torch.zeros(()),
            "target_var": (target if m_valid is None else target[m_valid]).detach().float().var(),
        }
