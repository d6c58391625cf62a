"""Peak tensor memory of a CGP probe step on a frozen ViT-B (10 s clips, 10,000 prototypes, 527 classes): measured on
this machine's CPU in fp32 at small batches (``audiossl.tasks.probe_memory.measure_peak_bytes``), against the model
(``cgp_step_memory``), and the model's figure for BAT's setting (batch 48, bf16 autocast).

    PYTHONPATH=. python benchmarks/probe_memory.py [--batches 2 4] [--gate]
"""

from __future__ import annotations

import argparse
import time

import torch

from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.tasks.probe_memory import cgp_step_memory, measure_peak_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--gate", action="store_true", help="BAT's gated attention (more encoder weights, same activations)")
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = {"name": "vit_base", "block_style": "post", "attn_gate": args.gate}
    clf = AudioClassifier(spec, HeadConfig(num_classes=527, probe="cgp", num_prototypes=10_000), {"target_length": 1024})
    clf.encoder.requires_grad_(False).eval()
    opt = torch.optim.AdamW(clf.head.parameters(), lr=1e-3, foreach=True)  # the GPU default
    enc_params = sum(p.numel() for p in clf.encoder.parameters())

    def step(B: int) -> None:
        x = torch.randn(B, 1024, 128)
        with torch.no_grad():
            tokens, layers, valid = clf.encode(x, None, layers=True)
        loss = clf.head_logits(tokens, layers, valid, inplace=True).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step(1)  # gradients and AdamW state exist from here on, as in training
    weights = cgp_step_memory(1, encoder_params=enc_params)["weights"]
    print(f"ViT-B{' (gated)' if args.gate else ''}: encoder {enc_params / 1e6:.1f}M parameters, weights + head "
          f"gradients + AdamW state {weights / 1e9:.3f} GB (not in the measurement)")
    for B in args.batches:
        t = time.perf_counter()
        measured = measure_peak_bytes(lambda: step(B))
        model = cgp_step_memory(B, sim_bytes=4, include_weights=False)
        print(f"batch {B:3d} fp32 CPU: measured peak {measured / 1e9:.3f} GB, model {model['peak'] / 1e9:.3f} GB "
              f"(ratio {measured / model['peak']:.3f}; {time.perf_counter() - t:.0f} s)")
    for sim, name in ((2, "bf16 autocast"), (4, "fp32")):
        m = cgp_step_memory(48, sim_bytes=sim, encoder_params=enc_params)
        parts = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in m.items() if k != "peak")
        print(f"batch  48 {name}: model peak {m['peak'] / 1e9:.2f} GB ({parts} GB)")


if __name__ == "__main__":
    main()
