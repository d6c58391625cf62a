"""SSLAM: EAT plus in-batch spectrogram mixtures and a source-retention loss (Alex et al., ICLR 2025), stage 2.

Read top to bottom (the reference is ``SSLAM_Stage2/models/EAT_pretraining.py``):
1. ``mix_regions``: per batch, two un-mixed time regions of ``unmixed_frames`` frames (240 = 15 patches at 1024
   frames) whose starts are multiples of the patch size: ``s1`` in ``range(0, T//2 - 11, 16)``,
   ``s2`` in ``range(s1 + R, T - 1 - R, 16)`` (the reference's ranges, written for any ``T``).
2. ``mix``: the partner of clip ``i`` is clip ``i - 1`` (``torch.roll(x, 1, 0)``); inside the two regions the
   partner is ``-inf``, and the mixture is ``max(x, partner)``: the element-wise max of the two *normalised*
   log-mel spectrograms in the mixed regions, the original elsewhere.
3. The student sees ``cat(originals, mixtures)`` with ``clone_batch`` clones each; a mixture reuses the masks of its
   original (the reference concatenates the precomputed masks twice).
4. Teacher pass 1 on ``cat(originals, mixtures)``: frame targets from the top-K FFN outputs (the mixture's own
   targets for mixtures), utterance targets from the **last layer only**, mean over patches.
   Teacher pass 2 on the originals with the un-mixed regions dropped after the position embedding (272 of 512
   patches): the partner's representation of exactly what it contributed, in its own context.
5. Source-retention target for mixture ``i``: ``(y_i + r_i) / 2`` where ``y_i`` is the unmixed original's 12-layer
   target and ``r_i`` equals ``y_i`` in the un-mixed regions and the partner's pass-2 target (rolled by one) in the
   mixed regions. No re-normalisation after averaging.
6. Loss (reference weighting): with ``M`` masked tokens over all ``2B x C`` sequences,
   ``(sum eat_frame + 2 * sum mix_frame) / M + cls_weight * sum cls`` — the factor 2 "matches the sample size of the
   EAT patch loss". The mixture-CLS term of the reference is computed there but unused, so it is not here either.

Padding (``num_frames``), our extension (the reference pads 10 s AudioSet clips rarely): a clip's padding frames
contribute nothing to a mixture (they are left out of the max), and a mixture holds audio as far as the longer of its
two clips. The teacher sees each input with its own padding mask. The student, its masks and both frame losses of a
mixture use the *original's* real patches (the mixture reuses the original's masks, fillers included); the
source-retention target takes the partner's part only where the partner has real audio.
"""

from __future__ import annotations

import torch

from audiossl.objectives.eat import EAT, diagnostics, gather_tokens
from audiossl.objectives.targets import d2v_regression, layer_targets, masked_mean


def mix_regions(num_frames: int, patch: int, unmixed_frames: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """Starts (in frames) of the two un-mixed regions, multiples of ``patch``, as the SSLAM reference draws them."""
    R = unmixed_frames
    first = list(range(0, num_frames // 2 - 11, patch))
    if not first:
        raise ValueError(f"{num_frames} frames are too few for SSLAM mixing")
    s1 = first[int(torch.randint(len(first), (1,), generator=generator, device=generator.device if generator else None))]
    second = list(range(s1 + R, num_frames - 1 - R, patch))
    if not second:
        raise ValueError(f"{num_frames} frames cannot hold two un-mixed regions of {R} frames; lower unmixed_frames")
    s2 = second[int(torch.randint(len(second), (1,), generator=generator, device=generator.device if generator else None))]
    return s1, s2


def mix_spectrograms(x: torch.Tensor, starts: tuple[int, int], unmixed_frames: int,
                     real: torch.Tensor | None = None, pad_value: float = 0.0) -> torch.Tensor:
    """``x [B, T, F]`` (normalised) -> mixtures ``[B, T, F]``: ``max(x_i, x_{i-1})`` outside the un-mixed regions.

    ``real [B, T]`` (frames of real audio): padding frames take no part in the max; where neither clip has audio the
    mixture holds ``pad_value`` (the front end's padding: normalised log-mel zero)."""
    partner = torch.roll(x, shifts=1, dims=0).clone()
    for s in starts:
        partner[:, s : s + unmixed_frames] = float("-inf")
    if real is None:
        return torch.maximum(x, partner)
    neg = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    own = torch.where(real[..., None], x, neg)
    partner = torch.where(torch.roll(real, shifts=1, dims=0)[..., None], partner, neg)
    mixed = torch.maximum(own, partner)
    return torch.where(torch.isinf(mixed), torch.full_like(x, pad_value), mixed)


def mixed_patch_index(grid: tuple[int, int], starts: tuple[int, int], unmixed_frames: int, patch: int,
                      device=None) -> torch.Tensor:
    """Time-major patch indices ``[K]`` of the mixed regions (everything outside the two un-mixed regions)."""
    T, Fp = grid
    tmask = torch.ones(T, dtype=torch.bool, device=device)
    for s in starts:
        tmask[s // patch : (s + unmixed_frames) // patch] = False
    t = tmask.nonzero().flatten()
    return (t[:, None] * Fp + torch.arange(Fp, device=device)).flatten()


class SSLAM(EAT):
    objective = "sslam"

    def __init__(self, encoder: dict, clone_batch: int = 8, unmixed_frames: int = 240, mix_weight: float = 2.0, **kwargs):
        """
        Args:
            encoder: student encoder spec (EAT's: ``{name: vit_base, block_style: post}``); start it from an EAT
                checkpoint with ``init_from``.
            clone_batch: clones per clip (stage 2 uses 8: originals + mixtures give the same 16 per clip as EAT).
            unmixed_frames: length of each of the two un-mixed regions, in frames (240 at 1024 frames).
            mix_weight: weight of the source-retention (mixture) frame loss (2.0).
            **kwargs: everything EAT takes (masking, decoder, EMA, optimiser).
        """
        super().__init__(encoder=encoder, clone_batch=clone_batch, **kwargs)

    def compute_loss(self, fbank: torch.Tensor, generator: torch.Generator,
                     num_frames: torch.Tensor | None = None) -> dict:
        hp = self.hparams
        B, T, _ = fbank.shape
        C = hp.clone_batch
        p = self.encoder.config.patch_size
        grid = self.encoder.grid_shape(T)
        R = hp.unmixed_frames

        starts = mix_regions(T, p, R, generator)
        real = None if num_frames is None else torch.arange(T, device=fbank.device)[None] < num_frames[:, None]
        mixed = mix_spectrograms(fbank, starts, R, real, float(self.front_end.normalize(torch.zeros(()))))
        both = torch.cat([fbank, mixed], dim=0)  # [2B, T, F]: originals first, then mixtures
        both_frames = None if num_frames is None else torch.cat([num_frames, torch.maximum(num_frames,
                                                                                          num_frames.roll(1, 0))])

        # teacher pass 1: every input, all layers (each with its own padding)
        patches, valid_t = self.encoder.embed_padded(both, both_frames)  # [2B, N, D], [2B, N] or None
        layers = self.teacher_layers(both, valid=valid_t)
        y = layer_targets(layers, self.top_k, valid=valid_t)  # [2B, N, D] frame targets of the actual inputs
        cls_target = masked_mean(layer_targets(layers, 1, valid=valid_t), valid_t)  # [2B, D] from the last layer
        # teacher pass 2: originals, un-mixed regions dropped after the positions
        idx = mixed_patch_index(grid, starts, R, p, device=fbank.device)  # [K']
        keep2 = idx.expand(B, -1)
        valid_o = None if valid_t is None else valid_t[:B]  # the originals' real patches
        v2 = None if valid_o is None else valid_o.gather(1, keep2)  # [B, K']
        dropped = layer_targets(self.teacher_layers(fbank, keep=keep2, valid=valid_o), self.top_k, valid=v2)
        y_orig = y[:B]
        rebuilt = y_orig.clone()
        partner_part = torch.roll(dropped, shifts=1, dims=0)  # the partner's part, in its own context
        if v2 is None:
            rebuilt[:, idx] = partner_part
        else:  # the partner's part only where the partner has audio
            rebuilt[:, idx] = torch.where(torch.roll(v2, 1, 0)[..., None], partner_part, rebuilt[:, idx])
        mix_target = (y_orig + rebuilt) / 2.0  # [B, N, D]

        # student: originals and mixtures, each mixture with its original's masks (and its original's real patches)
        valid_s = None if valid_o is None else valid_o.repeat_interleave(C, dim=0)  # [BC, N]
        keep, masked = self.masks(B * C, grid, generator, valid_s)
        keep, masked = keep.repeat(2, 1), masked.repeat(2, 1)  # [2BC, K], [2BC, M]
        valid_s = None if valid_s is None else valid_s.repeat(2, 1)
        tokens = self.student(patches.repeat_interleave(C, dim=0), keep, valid_s)  # [2BC, 1 + K, D]
        rows = torch.arange(2 * B * C, device=fbank.device) // C
        eat_sum, cls_sum, pred_m, target_m, m_valid = self.frame_and_cls_errors(
            tokens, keep, masked, grid, y, cls_target, rows, generator, valid_s
        )
        half = B * C
        mix_pred = pred_m[half:]  # predictions for the mixtures, at their masked positions
        mix_t = gather_tokens(mix_target, masked[half:], rows[half:] - B)
        mix_err = d2v_regression(mix_pred, mix_t)
        mix_sum = mix_err.sum() if m_valid is None else (mix_err * m_valid[half:, :, None]).sum()

        M = masked.numel() if m_valid is None else m_valid.sum().clamp_min(1)
        eat_frame = eat_sum / M
        mix_frame = hp.mix_weight * mix_sum / M
        cls_loss = hp.cls_weight * cls_sum
        return {
            "loss": eat_frame + mix_frame + cls_loss,
            "frame_loss": eat_frame.detach(),
            "mix_loss": mix_frame.detach(),
            "cls_loss": cls_loss.detach(),
            **diagnostics(keep, masked, pred_m, target_m, tokens, m_valid, valid_s),
        }
