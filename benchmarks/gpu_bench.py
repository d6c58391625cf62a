"""Throughput on one GPU, in one run of at most ~7 minutes: front end, EAT-base pretraining step, full-token ViT-B
fine-tuning step (bf16, eager and ``torch.compile``), and the data pipeline; clips/s and MFU.

    python benchmarks/gpu_bench.py --out DIR                 # on a GPU machine (see benchmarks/gpu_bench.sh)
    python benchmarks/gpu_bench.py --out DIR --cpu-smoke     # everything shrunk: checks the script on a CPU

What is timed (the module code itself, called without a Trainer; logging is switched off):

* ``frontend``: ``FrontEnd`` (batched kaldi fbank, pad/crop to 1024 frames, normalise) on 10 s waveforms, fp32, on the
  device; and the same per clip on one CPU thread for comparison.
* ``eat``: ``EAT.training_step`` (front end + teacher + 16 masked clones + CNN decoder + loss) on 12 clips of 10 s,
  backward, gradient clipping at 4, AdamW (the module's parameter groups), EMA teacher update; bf16 autocast as
  Lightning's ``bf16-mixed``. ``compile`` compiles the student blocks as ``--model.init_args.compile true`` does.
* ``finetune``: ``FinetuneModule.training_step`` (roll + gain, front end, mixup, SpecAugment, ViT-B over all 512
  patches + CLS, drop path 0.1, 527-way BCE) on 96 clips (the EAT AS-2M recipe's batch), backward, AdamW with layer
  decay; ``compile`` compiles the encoder blocks the same way.
* ``data``: the training stream of ``AudioDataModule`` (read tar shards, shuffle, decode 10 s FLAC, crop, batch 32)
  with 2 DataLoader workers: clips/s in steady state and per worker. Needs soundfile and webdataset; skipped (with the
  reason) when they are missing.

MFU = clips/s x model FLOPs per clip (:mod:`audiossl.tasks.flops`: EAT 1,083 GFLOP, ViT-B fine-tuning 291 GFLOP) / the
device's dense bf16 peak (looked up from its name; ``--peak-tflops`` to set it). Results go to ``DIR/gpu_bench.json``
and ``DIR/gpu_bench.md`` after every section, so a run cut short keeps what it measured. Sections that would not fit
in ``--budget-s`` are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing the package (as on a bare GPU machine)
    sys.path.insert(0, ROOT)

from audiossl.tasks import flops  # noqa: E402

SAMPLE_RATE = 16000


# --- settings: full size on a GPU, shrunk for a CPU smoke run --------------------------------------------------------
def settings(smoke: bool) -> dict:
    if not smoke:
        return {
            "seconds": 10.0, "frames": 1024, "frontend_batch": 64, "frontend_cpu_clips": 8,
            "eat_encoder": {"name": "vit_base", "block_style": "post"}, "eat_batch": 12, "clones": 16,
            "eat_extra": {}, "ft_encoder": {"name": "vit_base", "block_style": "post"}, "ft_batch": 96,
            "classes": 527, "warmup": 3, "steps": 15, "data_clips": 256, "data_shard": 16, "data_passes": 2,
            "mask_block": 5,
        }
    return {
        "seconds": 2.0, "frames": 192, "frontend_batch": 4, "frontend_cpu_clips": 2,
        "eat_encoder": {"name": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 4, "block_style": "post"},
        "eat_batch": 2, "clones": 2, "eat_extra": {"decoder_layers": 2},
        "ft_encoder": {"name": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 4, "block_style": "post"},
        "ft_batch": 4, "classes": 16, "warmup": 1, "steps": 2, "data_clips": 16, "data_shard": 4, "data_passes": 1,
        "mask_block": 3,
    }


class Budget:
    """Wall-clock budget of the whole run."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.time(), seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "device": str(device)}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def timed_steps(step, warmup: int, steps: int, device: torch.device) -> dict:
    """Run ``warmup`` steps (timed apart: they include compilation), then ``steps`` steps back to back."""
    t0 = time.perf_counter()
    for i in range(warmup):
        step(i + 1)
    sync(device)
    t1 = time.perf_counter()
    for i in range(steps):
        step(warmup + i + 1)
    sync(device)
    t2 = time.perf_counter()
    return {"warmup_s": t1 - t0, "step_s": (t2 - t1) / steps, "steps": steps}


def quiet(module) -> None:
    """Called without a Trainer: ``self.log`` would complain."""
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None


def compile_blocks(encoder) -> None:
    """As ``PretrainModule(compile=True)``: each block compiled on its own, dynamic token counts."""
    for blk in encoder.blocks:
        blk.compile(dynamic=True)


def memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


# --- sections --------------------------------------------------------------------------------------------------------
def bench_frontend(device: torch.device, cfg: dict) -> list[dict]:
    from audiossl.frontend.features import FrontEnd, FrontEndConfig

    n = int(cfg["seconds"] * SAMPLE_RATE)
    fe = FrontEnd(FrontEndConfig(target_length=cfg["frames"])).to(device)
    g = torch.Generator().manual_seed(0)
    rows = []
    wave = (torch.randn(cfg["frontend_batch"], n, generator=g) * 0.1).to(device)  # [B, N]
    with torch.no_grad():
        r = timed_steps(lambda i: fe(wave), 2, 10, device)
    rows.append({"section": "frontend", "variant": f"{device.type} batch {wave.shape[0]}", "precision": "fp32",
                 "batch": wave.shape[0], "clips_per_s": wave.shape[0] / r["step_s"], **r})
    # one CPU thread, clip by clip: what a data worker would pay if the front end ran there
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fe_cpu = FrontEnd(FrontEndConfig(target_length=cfg["frames"]))
        clips = (torch.randn(cfg["frontend_cpu_clips"], n, generator=g) * 0.1)
        with torch.no_grad():
            r = timed_steps(lambda i: [fe_cpu(c[None]) for c in clips], 1, 2, torch.device("cpu"))
        rows.append({"section": "frontend", "variant": "cpu 1 thread, per clip", "precision": "fp32", "batch": 1,
                     "clips_per_s": len(clips) / r["step_s"], **r})
    finally:
        torch.set_num_threads(threads)
    return rows


def _adamw(named, weight_decay: float, lr: float, betas, scales=None):
    from audiossl.objectives.base import param_groups

    groups = param_groups(named, weight_decay, scales)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def bench_eat(device: torch.device, cfg: dict, compile: bool, peak: float | None) -> dict:
    from audiossl.objectives import EAT

    torch.manual_seed(0)
    m = EAT(encoder=dict(cfg["eat_encoder"]), clone_batch=cfg["clones"], mask_block=cfg["mask_block"],
            front_end={"target_length": cfg["frames"]}, **cfg["eat_extra"]).to(device)
    m.train()
    quiet(m)
    if compile:
        compile_blocks(m.encoder)
    opt = _adamw(m.trainable_named_parameters(), m.hparams.weight_decay, m.hparams.lr, m.hparams.betas)
    params = [p for _, p in m.trainable_named_parameters()]
    n = int(cfg["seconds"] * SAMPLE_RATE)
    batch = {"audio": torch.randn(cfg["eat_batch"], n, device=device) * 0.1}
    bf16 = device.type == "cuda"

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = m.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 4.0)
        opt.step()
        m.teacher_update(i)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = timed_steps(step, cfg["warmup"], cfg["steps"], device)
    c = m.encoder.config
    grid = m.encoder.grid_shape(cfg["frames"])
    patches = grid[0] * grid[1]
    keep, _ = m.masks(1, grid, torch.Generator(device=device).manual_seed(0))
    dec = m.hparams
    per_clip = flops.eat_step_flops(patches=patches, kept=keep.shape[1], clones=cfg["clones"],
                                    prefix=c.num_prefix_tokens, dim=c.embed_dim, depth=c.depth,
                                    mlp_hidden=int(c.embed_dim * c.mlp_ratio), decoder_dim=dec.decoder_dim,
                                    decoder_layers=dec.decoder_layers, decoder_kernel=dec.decoder_kernel,
                                    decoder_groups=dec.decoder_groups)
    clips = cfg["eat_batch"] / r["step_s"]
    return {"section": "eat", "variant": "compile" if compile else "eager", "precision": "bf16" if bf16 else "fp32",
            "batch": cfg["eat_batch"], "clones": cfg["clones"], "kept_patches": int(keep.shape[1]),
            "clips_per_s": clips, "gflop_per_clip": per_clip / 1e9, "mfu": flops.mfu(clips, per_clip, peak),
            "max_memory_gib": memory_gib(device), **r}


def bench_finetune(device: torch.device, cfg: dict, compile: bool, peak: float | None) -> dict:
    from audiossl.tasks.finetune import FinetuneModule

    torch.manual_seed(0)
    m = FinetuneModule(encoder=dict(cfg["ft_encoder"]), front_end={"target_length": cfg["frames"]}, drop_path=0.1,
                       mixup=0.8, mixup_prob=0.9, specaug_ratio=0.2, roll=True, layer_decay=0.65)
    C = cfg["classes"]
    m.build(C, [f"c{i}" for i in range(C)], True, None)
    m.to(device)
    m.train()
    quiet(m)
    g = torch.Generator(device=device)
    m.step_generator = lambda batch_idx: g.manual_seed(batch_idx)  # the module's own draws need a Trainer
    if compile:
        compile_blocks(m.model.encoder)
    from audiossl.tasks.finetune import layer_decay_scales

    named = [(f"model.{n}", p) for n, p in m.model.named_parameters() if p.requires_grad]
    opt = _adamw(named, m.hparams.weight_decay, m.hparams.lr, m.hparams.betas,
                 layer_decay_scales(m.model.encoder, m.hparams.layer_decay))
    n = int(cfg["seconds"] * SAMPLE_RATE)
    gen = torch.Generator().manual_seed(0)
    batch = {"audio": (torch.randn(cfg["ft_batch"], n, generator=gen) * 0.1).to(device),
             "target": (torch.rand(cfg["ft_batch"], C, generator=gen) < 0.02).float().to(device)}
    bf16 = device.type == "cuda"

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = m.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = timed_steps(step, cfg["warmup"], cfg["steps"], device)
    c = m.model.encoder.config
    patches = m.model.encoder.num_patches(cfg["frames"])
    per_clip = flops.finetune_step_flops(patches=patches, prefix=c.num_prefix_tokens, dim=c.embed_dim,
                                         depth=c.depth, mlp_hidden=int(c.embed_dim * c.mlp_ratio))
    clips = cfg["ft_batch"] / r["step_s"]
    return {"section": "finetune", "variant": "compile" if compile else "eager",
            "precision": "bf16" if bf16 else "fp32", "batch": cfg["ft_batch"], "tokens": patches + c.num_prefix_tokens,
            "clips_per_s": clips, "gflop_per_clip": per_clip / 1e9, "mfu": flops.mfu(clips, per_clip, peak),
            "max_memory_gib": memory_gib(device), **r}


def bench_data(cfg: dict, workers: int = 2) -> dict:
    missing = []
    for mod in ("soundfile", "webdataset"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        return {"section": "data", "variant": f"{workers} workers", "skipped": f"not installed here: {missing}"}
    from audiossl.data import AudioDataModule
    from audiossl.data.writer import WriterOptions
    from data_prep import synth

    with tempfile.TemporaryDirectory(prefix="audiossl-gpu-bench-") as tmp:
        root = os.path.join(tmp, "data")
        t = time.perf_counter()
        synth.convert(root, num_clips=cfg["data_clips"], eval_clips=1, seed=0, clip_seconds=cfg["seconds"],
                      options=WriterOptions(workers=min(8, os.cpu_count() or 1), shard_size=cfg["data_shard"],
                                            progress=False))
        made_s = time.perf_counter() - t
        dm = AudioDataModule(root, batch_size=32 if cfg["data_clips"] >= 64 else 4, num_workers=workers,
                             clip_seconds=cfg["seconds"], shuffle_buffer=200,
                             epoch_size=cfg["data_passes"] * cfg["data_clips"], pin_memory=torch.cuda.is_available())
        clips, t0 = 0, None
        for b in dm.train_dataloader():
            if t0 is None:  # worker start-up and the first shuffle-buffer fill excluded
                t0 = time.perf_counter()
                continue
            clips += b["audio"].shape[0]
        wall = time.perf_counter() - t0
    rate = clips / wall if wall > 0 else float("nan")
    return {"section": "data", "variant": f"{workers} workers", "precision": "-", "batch": dm.batch_size,
            "clips_per_s": rate, "clips_per_s_per_worker": rate / workers, "timed_clips": clips,
            "dataset_build_s": made_s}


# --- report ----------------------------------------------------------------------------------------------------------
TARGETS = {"eat": 450.0, "finetune": 1700.0}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# audiossl GPU benchmark — {m.get('gpu', m['device'])}, {m['date']}", "",
             f"torch {m['torch']}, CUDA {m.get('cuda', '-')}, CPU {m.get('cpu', '?')} ({m['cpu_count']} cores); "
             f"bf16 dense peak used for MFU: {result['peak_tflops'] or 'unknown'} TFLOP/s"
             + (" (CPU smoke run: tiny sizes, figures meaningless)" if result["smoke"] else ""), "",
             "| section | variant | precision | batch | clips/s | MFU | GFLOP/clip | step ms | warm-up s "
             "| peak mem GiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['section']} | {r.get('variant', '')} | | | | | | | | "
                         f"{'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']} |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        gf = f"{r['gflop_per_clip']:.1f}" if r.get("gflop_per_clip") else "-"
        step = f"{1000 * r['step_s']:.1f}" if r.get("step_s") else "-"
        warm = f"{r['warmup_s']:.1f}" if r.get("warmup_s") is not None else "-"
        extra = f" ({r['clips_per_s_per_worker']:.0f} per worker)" if "clips_per_s_per_worker" in r else ""
        lines.append(f"| {r['section']} | {r['variant']} | {r.get('precision', '')} | {r.get('batch', '')} | "
                     f"{r['clips_per_s']:.1f}{extra} | {mfu} | {gf} | {step} | {warm} | "
                     f"{r.get('max_memory_gib') if r.get('max_memory_gib') is not None else '-'} |")
    if not result["smoke"]:
        lines += ["", "Targets on one H100: EAT-base >= 450 clips/s, full-token ViT-B fine-tuning >= 1,700 clips/s, "
                  "fed by <= 2 data workers."]
        for r in result["rows"]:
            if r.get("section") in TARGETS and "clips_per_s" in r:
                ok = "meets" if r["clips_per_s"] >= TARGETS[r["section"]] else "misses"
                lines.append(f"- {r['section']} {r['variant']}: {r['clips_per_s']:.0f} clips/s {ok} "
                             f"{TARGETS[r['section']]:.0f}")
            if r.get("section") == "data" and "clips_per_s" in r:
                feeds = [f"{name} ({target:.0f}): {'yes' if r['clips_per_s'] >= target else 'no'}"
                         for name, target in TARGETS.items()]
                lines.append(f"- data, {r['variant']}: {r['clips_per_s']:.0f} clips/s; enough to feed "
                             + ", ".join(feeds))
    return "\n".join(lines) + "\n"


def write(result: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "gpu_bench.md"), "w") as f:
        f.write(markdown(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_bench_out", help="folder for the JSON and table")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script, not speed")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting sections after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device (default: by name)")
    p.add_argument("--sections", default="frontend,finetune,eat,data,finetune-compile,eat-compile",
                   help="comma-separated, run in this order")
    args = p.parse_args(argv)

    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny ops on a shared small CPU crawl when threads wait on each other
    elif not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; use --cpu-smoke to check the script on a CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda", 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    cfg = settings(args.cpu_smoke)
    info = machine(device)
    peak = args.peak_tflops or (flops.peak_bf16_tflops(info["gpu"]) if "gpu" in info else None)
    result = {"machine": info, "smoke": args.cpu_smoke, "peak_tflops": peak, "settings": cfg, "rows": []}
    print(f"gpu_bench: {json.dumps(info)}; peak {peak} TFLOP/s", flush=True)
    budget = Budget(args.budget_s)
    # rough worst-case seconds each section needs (compilation dominates the compiled ones)
    need = {"frontend": 20, "finetune": 40, "eat": 40, "data": 60, "finetune-compile": 120, "eat-compile": 150}
    for section in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if section not in need:
            raise SystemExit(f"gpu_bench: unknown section {section!r}; choose from {', '.join(need)}")
        if not args.cpu_smoke and budget.left() < need[section]:
            result["rows"].append({"section": section.split("-")[0], "variant": section,
                                   "skipped": f"time budget ({budget.left():.0f} s left, needs ~{need[section]} s)"})
            write(result, args.out)
            continue
        t = time.time()
        print(f"gpu_bench: {section} ...", flush=True)
        try:
            if section == "frontend":
                rows = bench_frontend(device, cfg)
            elif section.startswith("finetune"):
                rows = [bench_finetune(device, cfg, section.endswith("compile"), peak)]
            elif section.startswith("eat"):
                rows = [bench_eat(device, cfg, section.endswith("compile"), peak)]
            else:
                rows = [bench_data(cfg)]
        except Exception as e:  # one failing section must not lose the others' figures
            traceback.print_exc()
            rows = [{"section": section.split("-")[0], "variant": section, "error": f"{type(e).__name__}: {e}"[:300]}]
        for r in rows:
            r["section_wall_s"] = round(time.time() - t, 1)
            print("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}),
                  flush=True)
        result["rows"] += rows
        write(result, args.out)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(markdown(result))
    print(f"gpu_bench: wrote {os.path.join(args.out, 'gpu_bench.json')} and gpu_bench.md "
          f"in {time.time() - budget.start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
