"""``audiossl bench``: speed figures measured as ratios against a baseline in the same run, with the machine named.

    audiossl bench fbank      batched kaldi_fbank vs a per-clip torchaudio loop (64 clips of 10 s)
    audiossl bench encoder    encoder forward+backward vs timm's VisionTransformer of the same size (512 tokens)
    audiossl bench step       training-step throughput (clips/s) per objective and for fine-tuning, tiny and/or base
    audiossl bench all        all of the above

Add ``--json FILE`` to write the figures. Nothing here asserts: speed lives in benchmarks, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

from audiossl.errors import UserError


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu") -> dict[str, float]:
    """Median times of several functions measured in alternation (fair under drifting machine load)."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# --- front end ------------------------------------------------------------------------------------------------------
def bench_fbank(clips: int = 64, seconds: float = 10.0, repeats: int = 5, device: str = "cpu") -> dict:
    try:  # the baseline; the runtime itself does not need torchaudio
        from torchaudio.compliance import kaldi
    except (ImportError, OSError) as e:
        raise UserError(f"bench fbank compares with torchaudio, which does not load here ({e}); install the "
                        "[test] extra (or a torchaudio built for this torch)") from None

    from audiossl.frontend.features import kaldi_fbank

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(clips, int(16000 * seconds), generator=g) * 0.1).to(device)

    def loop():
        return [
            kaldi.fbank(w[None], htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                        num_mel_bins=128, dither=0.0, frame_shift=10)
            for w in x
        ]

    t = interleaved({"torchaudio_loop": loop, "audiossl_batched": lambda: kaldi_fbank(x)}, repeats, device)
    return {
        "clips": clips,
        "seconds": seconds,
        "device": device,
        "torchaudio_loop_s": t["torchaudio_loop"],
        "batched_s": t["audiossl_batched"],
        "speedup": t["torchaudio_loop"] / t["audiossl_batched"],
        "batched_clips_per_s": clips / t["audiossl_batched"],
    }


# --- encoder --------------------------------------------------------------------------------------------------------
def bench_encoder(size: str = "vit_base", batch: int = 2, frames: int = 1024, repeats: int = 3, device: str = "cpu") -> dict:
    from timm.models.vision_transformer import VisionTransformer

    from audiossl.models import create_encoder

    ours = create_encoder(size, block_style="pre").to(device)
    c = ours.config
    ref = VisionTransformer(img_size=(frames, c.num_mel_bins), patch_size=16, in_chans=1, num_classes=0,
                            embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, no_embed_class=True,
                            global_pool="").to(device)
    x = torch.randn(batch, frames, c.num_mel_bins, device=device)
    x4 = x[:, None]

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(x).float().mean().backward()

    def step_timm():
        ref.zero_grad(set_to_none=True)
        ref.forward_features(x4).float().mean().backward()

    t = interleaved({"timm": step_timm, "audiossl": step_ours}, repeats, device)
    return {
        "size": size,
        "batch": batch,
        "tokens": 1 + ours.num_patches(frames),
        "device": device,
        "timm_s": t["timm"],
        "audiossl_s": t["audiossl"],
        "ratio_ours_over_timm": t["audiossl"] / t["timm"],
    }


# --- training steps -------------------------------------------------------------------------------------------------
TINY_ENCODER = {"name": "vit_base", "depth": 2, "embed_dim": 64, "num_heads": 4}


def objective_kwargs(name: str, size: str) -> dict:
    """Objective settings for the step benchmark: ``tiny`` (the CPU recipes) or ``base`` (the paper recipes)."""
    if size == "tiny":
        enc = dict(TINY_ENCODER, block_style="pre" if name in ("mae", "jepa") else "post")
        small = {
            "mae": dict(decoder_dim=64, decoder_depth=2, decoder_heads=4),
            "eat": dict(clone_batch=16, mask_block=3, decoder_layers=2),
            "jepa": dict(predictor_dim=64, predictor_depth=2, predictor_heads=4),
            "sslam": dict(clone_batch=8, mask_block=3, decoder_layers=2, unmixed_frames=32),
        }[name]
        return dict(encoder=enc, **small)
    enc = {"name": "vit_base", "block_style": "pre" if name in ("mae", "jepa") else "post"}
    return {"mae": dict(encoder=enc), "eat": dict(encoder=enc, clone_batch=16), "jepa": dict(encoder=enc),
            "sslam": dict(encoder=enc, clone_batch=8)}[name]


def bench_step(names=("mae", "eat", "jepa", "sslam"), size: str = "tiny", batch: int | None = None,
               frames: int | None = None, repeats: int = 3, device: str = "cpu", precision: str = "32") -> list[dict]:
    from audiossl.objectives import OBJECTIVES

    rows = []
    for name in names:
        torch.manual_seed(0)
        m = OBJECTIVES[name](**objective_kwargs(name, size)).to(device)
        b = batch or (8 if size == "tiny" else 12)
        T = frames or (128 if size == "tiny" else 1024)
        fb = torch.randn(b, T, 128, device=device)
        opt = torch.optim.AdamW([p for n, p in m.named_parameters() if not n.startswith("teacher.")], lr=1e-4)
        dtype = torch.bfloat16 if precision == "bf16" else None

        def step(i=[0]):
            i[0] += 1
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                out = m.compute_loss(fb, torch.Generator(device=device).manual_seed(i[0]))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if getattr(m, "teacher", None) is not None:
                m.teacher.update(m.encoder, i[0])

        t = timeit(step, repeats=repeats, warmup=1, device=device)
        rows.append({"objective": name, "size": size, "batch": b, "frames": T, "device": device,
                     "precision": precision, "step_s": t, "clips_per_s": b / t})
        del m, opt
    return rows


def bench_finetune_step(size: str = "tiny", batch: int | None = None, repeats: int = 3, device: str = "cpu",
                        precision: str = "32") -> dict:
    """A full-token classifier step (fbank already computed): encoder + head forward, BCE, backward, AdamW."""
    from audiossl.models.classifier import AudioClassifier

    torch.manual_seed(0)
    if size == "tiny":
        enc, T, b = dict(TINY_ENCODER, block_style="post"), 192, batch or 32
    else:
        enc, T, b = {"name": "vit_base", "block_style": "post"}, 1024, batch or 4
    m = AudioClassifier(encoder=enc, head={"num_classes": 527}, front_end={"target_length": T}).to(device)
    x = torch.randn(b, T, 128, device=device)
    y = (torch.rand(b, 527, device=device) < 0.02).float()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = timeit(step, repeats=repeats, warmup=1, device=device)
    return {"model": f"classifier ({size})", "tokens": 1 + m.encoder.num_patches(T), "batch": b, "device": device,
            "precision": precision, "step_s": t, "clips_per_s": b / t}


def _print(title: str, payload) -> None:
    print(f"\n== {title}")
    rows = payload if isinstance(payload, list) else [payload]
    for r in rows:
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["fbank", "encoder", "step", "all"], nargs="?", default="all")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=["tiny", "base", "both"], default="tiny", help="model size for `step`")
    p.add_argument("--encoder", default="vit_base", help="registry name for `encoder`")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--objectives", default="mae,eat,jepa,sslam")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args(argv)

    results: dict = {"machine": machine()}
    print("machine:", json.dumps(results["machine"]))
    if args.what in ("fbank", "all"):
        results["fbank"] = bench_fbank(repeats=max(args.repeats, 3), device=args.device)
        _print("kaldi fbank: 64 clips x 10 s, batched vs per-clip torchaudio loop", results["fbank"])
    if args.what in ("encoder", "all"):
        results["encoder"] = bench_encoder(args.encoder, batch=args.batch or 2, repeats=args.repeats, device=args.device)
        _print(f"encoder fwd+bwd vs timm VisionTransformer ({args.encoder}, 513 tokens)", results["encoder"])
    if args.what in ("step", "all"):
        sizes = ["tiny", "base"] if args.size == "both" else [args.size]
        results["step"] = []
        for s in sizes:
            rows = bench_step(tuple(args.objectives.split(",")), s, args.batch, repeats=args.repeats,
                              device=args.device, precision=args.precision)
            results["step"] += rows
            _print(f"pretraining step throughput ({s})", rows)
            ft = bench_finetune_step(s, args.batch, args.repeats, args.device, args.precision)
            results.setdefault("finetune_step", []).append(ft)
            _print(f"fine-tuning step throughput ({s})", ft)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
