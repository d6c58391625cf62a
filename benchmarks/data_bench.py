"""Data benchmark: converter throughput and the read + decode + crop rate of the training stream.

    python benchmarks/data_bench.py [--clips 400] [--seconds 10] [--workdir DIR]

1. Makes ``--clips`` WAV files of ``--seconds`` s at 44.1 kHz stereo (synthetic-corpus audio), the typical input of a
   conversion, and converts them with ``audiossl prep folder`` logic using 1 and 2 worker processes (decode,
   resample to 16 kHz, FLAC encode, tar): clips/s.
2. Times FLAC decoding alone (``audiossl.frontend.audio.load`` from bytes) per clip: the floor of the reading cost.
3. Streams the shards through ``AudioDataModule``'s training loader (shuffle buffer, decode, random crop to
   ``--seconds``, batches of 32) in the main process and with 1 and 2 DataLoader workers: clips/s in steady state
   (one long epoch, after its first batch), and the ratio to decoding alone.

Prints figures; asserts nothing. Name the machine when quoting them.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiossl.frontend import audio
from audiossl.data import AudioDataModule, read_manifest
from audiossl.data.pipeline import read_shard
from audiossl.data.writer import WriterOptions
from data_prep import folder, synth


def machine() -> str:
    proc = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        proc = names[0] if names else proc
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{proc} ({platform.processor() or platform.machine()}), {cores} cores usable, torch {torch.__version__}"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (pool and DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_inputs(workdir: Path, clips: int, seconds: float) -> Path:
    """``clips`` WAV files (44.1 kHz stereo) and the CSV listing them."""
    src = workdir / "wav"
    src.mkdir(parents=True, exist_ok=True)
    rows = ["path,labels"]
    for i in range(clips):
        wave, _ = synth.render_clip(0, "train", i, seconds)  # 16 kHz mono; resampled up for a realistic input
        up = audio.resample(torch.from_numpy(wave), 16000, 44100).numpy()
        stereo = np.stack([up, np.roll(up, 7)], axis=1)
        sf.write(str(src / f"clip{i:05d}.wav"), stereo, 44100, subtype="PCM_16")
        rows.append(f"clip{i:05d}.wav,c{i % 10}")
    (workdir / "list.csv").write_text("\n".join(rows) + "\n")
    return src


def bench_convert(workdir: Path, src: Path, workers: int) -> tuple[float, float, Path]:
    """``(clips/s wall, clips per CPU-second, output folder)``."""
    out = workdir / f"shards_w{workers}"
    t, c = time.perf_counter(), cpu_seconds()
    report = folder.convert(str(workdir / "list.csv"), str(src), str(out),
                            options=WriterOptions(workers=workers, shard_size=100, progress=False))
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    return report.num_written / dt, report.num_written / dc, out


def bench_decode(root: Path, limit: int = 200) -> float:
    """Seconds per clip to decode FLAC bytes to float32 at 16 kHz (one core)."""
    m = read_manifest(root)
    blobs = [mem["flac"] for s in m.split("train").shards for _, _, mem in read_shard(str(root / s.path))][:limit]
    audio.load(blobs[0])
    t = time.perf_counter()
    for b in blobs:
        audio.load(b)
    return (time.perf_counter() - t) / len(blobs)


def bench_stream(root: Path, workers: int, seconds: float, passes: int = 5) -> tuple[float, float]:
    """Training-loader throughput in steady state: one epoch of ``passes`` times the data, timed from its first batch
    (worker start-up and the shuffle-buffer fill excluded). ``(clips/s wall, clips per CPU-second overall)``."""
    size = read_manifest(root).split("train").samples
    dm = AudioDataModule(str(root), batch_size=32, num_workers=workers, clip_seconds=seconds, shuffle_buffer=200,
                         epoch_size=passes * size)
    clips, t0, total = 0, None, 0
    c0 = cpu_seconds()
    for batch in dm.train_dataloader():
        total += batch["audio"].shape[0]
        if t0 is None:
            t0 = time.perf_counter()
            continue
        clips += batch["audio"].shape[0]
    wall = clips / (time.perf_counter() - t0)
    return wall, total / (cpu_seconds() - c0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="audiossl-data-bench-"))
    try:
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} (other processes compete for the cores)")
        print(f"inputs: {args.clips} WAV files, {args.seconds:g} s, 44.1 kHz stereo 16-bit", flush=True)
        t = time.perf_counter()
        src = make_inputs(workdir, args.clips, args.seconds)
        print(f"  made in {time.perf_counter() - t:.1f} s")
        rates = {}
        for w in (1, 2):
            rates[w], per_cpu, root = bench_convert(workdir, src, w)
            print(f"convert (decode 44.1k stereo, resample to 16k, FLAC, tar), {w} worker(s): {rates[w]:.0f} clips/s "
                  f"({per_cpu:.0f} clips per CPU-second)", flush=True)
        print(f"  speed-up 2 vs 1 worker: {rates[2] / rates[1]:.2f}x")
        m = read_manifest(root)
        mb = sum(s.bytes for s in m.split("train").shards) / m.split("train").samples / 1e3
        print(f"shards: {len(m.split('train').shards)} x {m.params['shard_size']} clips, {mb:.0f} kB per clip")
        per_clip = bench_decode(root)
        print(f"FLAC decode alone (audiossl.frontend.audio.load from bytes), 1 core: {per_clip * 1e3:.2f} ms per clip "
              f"= {1 / per_clip:.0f} clips/s", flush=True)
        for w in (0, 1, 2):
            rate, per_cpu = bench_stream(root, w, args.seconds)
            who = "in the main process" if w == 0 else f"{w} worker(s)"
            print(f"training stream (read tar, shuffle, decode, crop to {args.seconds:g} s, batch 32), {who}: "
                  f"{rate:.0f} clips/s, {per_cpu:.0f} clips per CPU-second "
                  f"({per_cpu * per_clip:.2f}x of decode-alone speed)", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
