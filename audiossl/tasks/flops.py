"""Model FLOPs per clip and model-FLOPs utilisation (MFU): the accounting behind the throughput benchmarks.

FLOPs count multiply-adds as 2 and only the matrix products (linear layers, attention, convolutions); norms,
activations and the loss are left out. One pre- or post-LN ViT block over ``N`` tokens of width ``d`` with an MLP of
width ``h`` costs, forward,

    F_block(N) = N * (8 d^2 + 4 d h) + 4 N^2 d        (QKV 6d^2 + output 2d^2 + MLP 4dh per token; QK^T and AV)

and training costs three times the forward (the backward pass computes gradients for inputs and weights). With ViT-B
(d 768, h 3072, 12 blocks) on a 1024 x 128 spectrogram (512 patches + CLS) this gives the reference figures:

* full-token fine-tuning step: 3 x (12 F_block(513) + patch embedding) = 291 GFLOP per clip;
* EAT step: 16 clones x 3 x 12 F_block(103) (student, 102 kept patches + CLS) + 16 x 3 x CNN decoder over all 512
  positions (6 grouped 3x3 convolutions + a projection) + 12 F_block(513) (teacher, forward only) = 1,083 GFLOP.

MFU = clips/s x FLOPs per clip / the device's dense bf16 peak.
"""

from __future__ import annotations

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched against torch.cuda.get_device_name() in order.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIE"), 756.0),  # NVIDIA datasheet: 1,513 with sparsity
    (("H100", "NVL"), 835.0),  # NVIDIA datasheet: 1,671 with sparsity
    (("GH200",), 989.4),
    (("H200",), 989.4),  # same GH100 compute as the H100 SXM
    (("H100",), 989.4),  # SXM5 (reported as "NVIDIA H100 80GB HBM3"): 1,979 with sparsity
    (("A100",), 312.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name, ``None`` when it is not in the table (pass one explicitly)."""
    name = device_name.upper()
    for words, peak in PEAK_BF16_TFLOPS:
        if all(w in name for w in words):
            return peak
    return None


def vit_block_flops(tokens: int, dim: int, mlp_hidden: int) -> float:
    """Forward FLOPs of one transformer block over ``tokens`` tokens."""
    return tokens * (8 * dim * dim + 4 * dim * mlp_hidden) + 4 * tokens * tokens * dim


def patch_embed_flops(patches: int, dim: int, patch_pixels: int = 256) -> float:
    """Forward FLOPs of the patch embedding (a ``patch x patch`` convolution with stride = patch)."""
    return 2 * patches * patch_pixels * dim


def encoder_forward_flops(tokens: int, patches: int, dim: int, depth: int, mlp_hidden: int,
                          patch_pixels: int = 256) -> float:
    """Forward FLOPs of a ViT: patch embedding of ``patches`` patches + ``depth`` blocks over ``tokens`` tokens."""
    return patch_embed_flops(patches, dim, patch_pixels) + depth * vit_block_flops(tokens, dim, mlp_hidden)


def cnn_decoder_flops(positions: int, dim: int, decoder_dim: int, layers: int, kernel: int, groups: int) -> float:
    """Forward FLOPs of EAT's CNN decoder over ``positions`` grid cells: grouped convolutions + a linear projection."""
    flops = 0.0
    for i in range(layers):
        c_in = dim if i == 0 else decoder_dim
        flops += 2 * positions * decoder_dim * (c_in // groups) * kernel * kernel
    return flops + 2 * positions * decoder_dim * dim


def finetune_step_flops(patches: int = 512, prefix: int = 1, dim: int = 768, depth: int = 12,
                        mlp_hidden: int = 3072, patch_pixels: int = 256) -> float:
    """Training FLOPs per clip of a full-token classifier (forward + backward = 3 x forward; the head is negligible)."""
    return 3 * encoder_forward_flops(patches + prefix, patches, dim, depth, mlp_hidden, patch_pixels)


def eat_step_flops(patches: int = 512, kept: int = 102, clones: int = 16, prefix: int = 1, dim: int = 768,
                   depth: int = 12, mlp_hidden: int = 3072, decoder_dim: int | None = None, decoder_layers: int = 6,
                   decoder_kernel: int = 3, decoder_groups: int = 16, patch_pixels: int = 256) -> float:
    """Training FLOPs per clip of an EAT step: the student over ``clones`` masked copies (``kept`` visible patches
    + prefix tokens), the CNN decoder per clone over every patch position, and the teacher's forward pass."""
    student = clones * 3 * depth * vit_block_flops(kept + prefix, dim, mlp_hidden)
    embed = 3 * patch_embed_flops(patches, dim, patch_pixels)  # once per clip, before cloning
    decoder = clones * 3 * cnn_decoder_flops(patches, dim, decoder_dim or dim, decoder_layers, decoder_kernel,
                                             decoder_groups)
    teacher = encoder_forward_flops(patches + prefix, patches, dim, depth, mlp_hidden, patch_pixels)
    return student + embed + decoder + teacher


def mfu(clips_per_s: float, flops_per_clip: float, peak_tflops: float | None) -> float | None:
    """Model-FLOPs utilisation in [0, 1] (``None`` without a peak)."""
    if not peak_tflops:
        return None
    return clips_per_s * flops_per_clip / (peak_tflops * 1e12)
