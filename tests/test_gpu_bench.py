"""The FLOP model behind MFU (against the reference figures and against torch's own FLOP counter on real modules),
and the GPU benchmark script run end to end in its CPU smoke mode (the GPU run itself needs a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from helpers import ROOT
from torch.utils.flop_counter import FlopCounterMode

from audiossl.tasks import flops


def _counts(fn) -> dict[str, int]:
    with FlopCounterMode(display=False) as fc:
        fn()
    return {str(k): int(v) for k, v in fc.get_flop_counts()["Global"].items()}


def test_flop_model_gives_the_reference_figures():
    # performance.md §3: EAT step 1,083 GFLOP per clip (913 clips/s at 100% of an H100), ViT-B full-token 291.1
    assert flops.eat_step_flops() / 1e9 == pytest.approx(1083.1, abs=0.1)
    assert flops.finetune_step_flops() / 1e9 == pytest.approx(291.1, abs=0.1)
    assert 989.4e12 / flops.eat_step_flops() == pytest.approx(913.5, abs=0.1)
    assert flops.encoder_forward_flops(513, 512, 768, 12, 3072) / 1e9 == pytest.approx(97.0, abs=0.05)
    assert flops.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert flops.peak_bf16_tflops("NVIDIA H200") == 989.4
    assert flops.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.peak_bf16_tflops("Tesla T4") is None
    assert flops.mfu(457.0, 1.083e12, 989.4) == pytest.approx(0.5002, abs=1e-4)
    assert flops.mfu(457.0, 1.083e12, None) is None


def test_flop_model_matches_torch_flop_counter_on_the_encoder_and_decoder():
    from audiossl.models import create_encoder
    from audiossl.models.decoders import CNNDecoder2d

    enc = create_encoder("vit_tiny", depth=2, embed_dim=64, num_heads=4, block_style="post")
    B, T = 3, 128
    counts = _counts(lambda: enc(torch.randn(B, T, 128)))
    c = enc.config
    N = enc.num_patches(T)
    tokens = N + c.num_prefix_tokens
    model = B * flops.encoder_forward_flops(tokens, N, c.embed_dim, c.depth, int(c.embed_dim * c.mlp_ratio))
    attention = B * c.depth * 4 * tokens * tokens * c.embed_dim
    matmuls = sum(v for k, v in counts.items() if k in ("aten.mm", "aten.addmm", "aten.convolution"))
    assert matmuls == model - attention  # linear layers + patch embedding, exactly
    counted_attention = sum(v for k, v in counts.items() if "attention" in k)
    if counted_attention:  # torch counts fused attention on some back ends only
        assert counted_attention == attention

    dec = CNNDecoder2d(64, 32, layers=3, kernel=3, groups=16)
    grid, K = (8, 6), 10
    keep = torch.stack([torch.randperm(48)[:K] for _ in range(2)])
    counts = _counts(lambda: dec(torch.randn(2, K, 64), keep, grid))
    assert sum(counts.values()) == 2 * flops.cnn_decoder_flops(48, 64, 32, 3, 3, 16)


def test_gpu_bench_script_runs_in_cpu_smoke_mode(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([os.path.join(ROOT, "benchmarks", "gpu_bench.sh"), str(out), "--cpu-smoke",
                        "--sections", "frontend,finetune,eat,data"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.load(open(out / "gpu_bench.json"))
    assert result["smoke"] is True and result["machine"]["device"] == "cpu"
    rows = {(row["section"], row["variant"]): row for row in result["rows"]}
    assert set(rows) == {("frontend", "cpu batch 4"), ("frontend", "cpu 1 thread, per clip"), ("finetune", "eager"),
                         ("eat", "eager"), ("data", "2 workers")}, list(rows)
    for row in rows.values():
        assert "error" not in row and "skipped" not in row, row
        assert row["clips_per_s"] > 0
    # the smoke sizes: a 2-block 64-wide encoder on 192 frames (12 x 8 patches)
    ft = rows[("finetune", "eager")]
    assert ft["tokens"] == 97
    assert ft["gflop_per_clip"] * 1e9 == pytest.approx(flops.finetune_step_flops(96, 1, 64, 2, 256))
    eat = rows[("eat", "eager")]
    assert eat["gflop_per_clip"] * 1e9 == pytest.approx(flops.eat_step_flops(
        patches=96, kept=eat["kept_patches"], clones=2, dim=64, depth=2, mlp_hidden=256, decoder_layers=2))
    assert eat["mfu"] is None  # no peak for a CPU
    assert rows[("data", "2 workers")]["timed_clips"] == 12  # 16 clips in batches of 4, the first batch untimed
    table = (out / "gpu_bench.md").read_text()
    assert "| section | variant |" in table and table.count("\n| eat |") == 1
    assert (out / "gpu_bench.log").exists() and (out / "nvidia-smi.txt").exists()
