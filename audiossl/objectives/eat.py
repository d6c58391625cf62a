"""EAT: Efficient Audio Transformer (Chen et al., IJCAI 2024) — utterance-frame objective on a data2vec 2.0 trunk.

Read top to bottom:
1. ``embed``: patch tokens with positions, once per clip ``[B, N, D]``.
2. ``teacher_targets``: the EMA teacher (a full copy: patch embedding, CLS, pre-norm, blocks) sees the whole
   spectrogram once per clip; targets are the FFN outputs of its top-K blocks, instance-normed over tokens, averaged,
   layer-normed ``[B, N, D]``; the utterance target is their mean over patches ``[B, D]``.
3. ``student``: every clip is cloned ``clone_batch`` times, each clone with its own inverse block mask; only the
   visible patches (102 of 512 at the defaults) plus CLS go through the post-LN student.
4. ``decoder``: the CNN decoder puts the visible tokens back on the grid (masked slots = N(0, 0.01) noise) and
   predicts every patch; the frame loss uses the masked ones.
5. ``loss`` (the reference weighting, data2vec 2.0 / fairseq ``model`` criterion): with ``M`` masked tokens in the
   batch, element-wise squared errors scaled by ``1/sqrt(D)``,

       loss = (sum over masked tokens of frame errors) / M  +  cls_weight * (sum over sequences of CLS errors)

   i.e. fairseq sums every loss tensor, multiplies the CLS term by ``sample_size = M`` and divides the total by
   ``M``. ``frame_loss`` and ``cls_loss`` are logged with exactly the normalisation fairseq logs them with
   (``loss_<name> / sample_size``), so they compare with the reference logs (SSLAM stage 2 at 200k updates:
   ``eat_patch_loss`` ~13.8, ``eat_cls_loss`` ~0.2 per GPU batch of 24 x 8 clones).

Padding (``num_frames``): the teacher attends to real patches only and its instance norm counts them only; the
utterance target averages real patches; masks are drawn over each clip's real patches (``masking``); the CNN decoder
holds padding at zero; only real masked patches count in the frame loss and in ``M``.
"""

from __future__ import annotations

import torch

from audiossl.objectives.masking import inverse_block_mask
from audiossl.models.decoders import CNNDecoder2d
from audiossl.models.init import reference_init_
from audiossl.objectives.base import PretrainModule
from audiossl.objectives.ema import EMATeacher
from audiossl.objectives.targets import d2v_regression, feature_std, layer_targets, masked_mean


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``x [R, N, D]`` at ``idx [B, M]`` -> ``[B, M, D]``; ``rows [B]`` picks the row of ``x`` for each ``idx`` row."""
    if rows is None:
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
    return x[rows[:, None], idx]


def diagnostics(keep, masked, pred_m, target_m, tokens, m_valid=None, valid=None) -> dict:
    """Masking rate and collapse diagnostics: per-dimension std of predictions, targets and the student CLS
    (``m_valid [B, M]`` / ``valid [B, N]``: real masked patches / real patches, when there is padding)."""
    if m_valid is None:
        pct = masked.shape[1] / (keep.shape[1] + masked.shape[1])
        var = target_m.detach().float().var()
    else:
        pct = m_valid.sum() / valid.sum().clamp_min(1)
        var = target_m.detach().float()[m_valid].var()
    return {
        "masked_pct": pct,
        "pred_std": feature_std(pred_m, m_valid),
        "target_std": feature_std(target_m, m_valid),
        "student_cls_std": feature_std(tokens[:, 0]),
        "target_var": var,
    }


class EAT(PretrainModule):
    objective = "eat"

    def __init__(
        self,
        encoder: dict,
        clone_batch: int = 16,
        mask_ratio: float = 0.8,
        mask_block: int = 5,
        mask_adjust: float = 0.07,
        average_top_k: int | None = None,
        cls_weight: float = 1.0,
        decoder_layers: int = 6,
        decoder_kernel: int = 3,
        decoder_groups: int = 16,
        decoder_dim: int | None = None,
        mask_noise_std: float = 0.01,
        ema_start: float = 0.9998,
        ema_end: float = 0.99999,
        ema_anneal_steps: int = 100_000,
        cls_init_std: float | None = 1.0,
        patch_bias_init: str = "default",
        **kwargs,
    ):
        """
        Args:
            encoder: student encoder spec; EAT uses ``{name: vit_base, block_style: post}``.
            clone_batch: masked clones of each clip for the student (the teacher runs once per clip).
            mask_ratio: fraction of patches masked (EAT 0.8; inverse block masking keeps ``int(N * 0.2)``).
            mask_block: side of the visible square blocks, in patches (5).
            mask_adjust: extra fraction used to size the number of blocks (0.07).
            average_top_k: teacher blocks averaged into the targets (default: all of them).
            cls_weight: weight of the utterance (CLS) loss, applied per sequence as in the reference.
            decoder_layers/decoder_kernel/decoder_groups/decoder_dim: the CNN decoder (6 x kernel 3, 16 groups).
            mask_noise_std: std of the noise filling masked slots at the decoder input.
            ema_start/ema_end/ema_anneal_steps: teacher decay, annealed linearly (0.9998 -> 0.99999 over 100k).
            cls_init_std: the CLS token's initial N(0, std) (EAT/SSLAM: ``nn.init.normal_``, std 1; ``null``: the
                encoder's 0.02).
            patch_bias_init: ``default`` (PyTorch's Conv2d draw, as EAT leaves it) or ``zeros``.
        """
        super().__init__(encoder=encoder, **kwargs)
        reference_init_(self.encoder, "default", cls_init_std, patch_bias_init)  # before the teacher copies it
        D = self.encoder.embed_dim
        self.top_k = average_top_k or self.encoder.config.depth
        self.decoder = CNNDecoder2d(D, decoder_dim, decoder_layers, decoder_kernel, decoder_groups, mask_noise_std)
        self.teacher = EMATeacher(self.encoder, ema_start, ema_end, ema_anneal_steps)

    # --- pieces --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_layers(self, fbank: torch.Tensor, keep: torch.Tensor | None = None,
                       valid: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-block FFN outputs of the teacher, prefix tokens removed: list of ``[B, N or K, D]``."""
        tm = self.teacher.model
        _, _, ffn = tm.forward_tokens(tm.embed(fbank), keep=keep, return_layers=True, valid=valid)
        P = tm.num_prefix_tokens
        return [h[:, P:] for h in ffn]

    def masks(self, batch: int, grid: tuple[int, int], generator: torch.Generator, valid: torch.Tensor | None = None):
        hp = self.hparams
        return inverse_block_mask(batch, grid, hp.mask_ratio, hp.mask_block, hp.mask_adjust, generator, self.device,
                                  valid)

    def student(self, patches: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Clone-expanded patch tokens ``[BC, N, D]`` -> student tokens over the kept patches ``[BC, P + K, D]``."""
        return self.encoder.forward_tokens(patches, keep=keep, valid=valid)

    def frame_and_cls_errors(self, tokens, keep, masked, grid, frame_target, cls_target, rows, generator, valid=None):
        """Sums of scaled squared errors: (frame, over real masked tokens), (cls, over sequences), the masked
        predictions and targets, and which masked tokens are real (``[BC, M]`` bool, ``None`` without padding)."""
        P = self.encoder.num_prefix_tokens
        pred = self.decoder(tokens[:, P:], keep, grid, generator=generator, valid=valid)  # [BC, N, D]
        pred_m = gather_tokens(pred, masked)  # [BC, M, D]
        target_m = gather_tokens(frame_target, masked, rows)  # [BC, M, D]
        err = d2v_regression(pred_m, target_m)
        m_valid = None if valid is None else torch.gather(valid, 1, masked)  # [BC, M]
        frame_sum = err.sum() if m_valid is None else (err * m_valid[..., None]).sum()
        cls_sum = d2v_regression(tokens[:, 0], cls_target[rows]).sum()
        return frame_sum, cls_sum, pred_m, target_m, m_valid

    # --- the objective -------------------------------------------------------------------------------------------
    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict:
        hp = self.hparams
        B, T, _ = fbank.shape
        C = hp.clone_batch
        grid = self.encoder.grid_shape(T)

        patches, valid = self.encoder.embed_padded(fbank, num_frames)  # [B, N, D] once per clip, [B, N] or None
        y = layer_targets(self.teacher_layers(fbank, valid=valid), self.top_k, valid=valid)  # [B, N, D]
        cls_target = masked_mean(y, valid)  # [B, D]

        valid_c = None if valid is None else valid.repeat_interleave(C, dim=0)  # [BC, N]
        keep, masked = self.masks(B * C, grid, generator, valid_c)  # [BC, K], [BC, M]
        tokens = self.student(patches.repeat_interleave(C, dim=0), keep, valid_c)  # [BC, 1 + K, D]
        rows = torch.arange(B * C, device=fbank.device) // C  # clone -> clip
        frame_sum, cls_sum, pred_m, target_m, m_valid = self.frame_and_cls_errors(
            tokens, keep, masked, grid, y, cls_target, rows, generator, valid_c
        )
        M = masked.numel() if m_valid is None else m_valid.sum().clamp_min(1)  # fairseq's sample_size
        frame_loss = frame_sum / M
        cls_loss = hp.cls_weight * cls_sum
        return {
            "loss": frame_loss + cls_loss,
            "frame_loss": frame_loss.detach(),
            "cls_loss": cls_loss.detach(),
            **diagnostics(keep, masked, pred_m, target_m, tokens, m_valid, valid_c),
        }
