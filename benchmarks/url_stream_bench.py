"""Training-stream throughput from an S3 server against local disk, in the same run.

    python benchmarks/url_stream_bench.py [--clips 400] [--seconds 2] [--shard-size 25] [--passes 5] [--workdir DIR]

Starts moto's S3 server on 127.0.0.1 (``pip install 'audiossl[test]'``), writes the synthetic corpus once to a local
folder and uploads the same files to a bucket, then streams both through ``AudioDataModule``'s training loader
(open shards, shuffle buffer, FLAC decode, random crop, batches of 32) with 1 and 2 DataLoader workers: clips/s in
steady state (an epoch of ``--passes`` passes over the data, timed from its first batch), and the ratio S3 / local. A third
row reads S3 through a warm ``cache_dir``.

The S3 server runs on the same machine and takes CPU from the workers: on a small machine the ratio is a lower
bound of what a remote store with its own servers gives. Prints figures; asserts nothing. Name the machine when
quoting them.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audiossl.data import AudioDataModule, read_manifest, storage  # noqa: E402
from audiossl.data.writer import WriterOptions  # noqa: E402
from benchmarks.data_bench import machine  # noqa: E402
from data_prep import synth  # noqa: E402


def start_s3() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def upload(local: Path, url: str) -> None:
    """The dataset's files to ``url``, the manifest last."""
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != "manifest.json")
    for p in files + [local / "manifest.json"]:
        storage.put_file(p, storage.join(url, str(p.relative_to(local))))


def stream_rate(root: str, workers: int, seconds: float, passes: int = 2, **kw) -> float:
    """clips/s of the training loader over an epoch of ``passes`` times the data, timed from its first batch."""
    size = read_manifest(root).split("train").samples
    dm = AudioDataModule(root, batch_size=32, num_workers=workers, clip_seconds=seconds, shuffle_buffer=200,
                         epoch_size=passes * size, **kw)
    clips, t0 = 0, None
    for batch in dm.train_dataloader():
        if t0 is None:
            t0 = time.perf_counter()
            continue
        clips += batch["audio"].shape[0]
    return clips / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--shard-size", type=int, default=25)
    p.add_argument("--passes", type=int, default=5, help="passes over the data per timed epoch")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="audiossl-urlbench-"))
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    proc, endpoint = start_s3()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        local = work / "synth"
        synth.convert(str(local), num_clips=args.clips, eval_clips=1, clip_seconds=args.seconds,
                      options=WriterOptions(shard_size=args.shard_size, progress=False))
        url = "s3://bench/synth"
        t = time.perf_counter()
        upload(local, url)
        mb = sum(p.stat().st_size for p in local.rglob("*.tar")) / 1e6
        print(f"machine: {machine()}")
        print(f"{args.clips} clips of {args.seconds:g} s in shards of {args.shard_size} ({mb:.1f} MB); "
              f"uploaded to {endpoint} in {time.perf_counter() - t:.1f} s; {args.passes} passes per timed epoch, "
              "best of 2")
        print("| workers | local disk clips/s | S3 (local server) clips/s | S3 / local | S3 + warm cache clips/s |")
        print("|---:|---:|---:|---:|---:|")
        for workers in (1, 2):
            cache = work / f"cache{workers}"
            stream_rate(url, workers, args.seconds, passes=1, cache_dir=str(cache))  # fills the cache
            rates = {"local": [], "s3": [], "cache": []}
            for _ in range(2):  # interleaved, so drift in the machine's load hits both alike
                rates["local"].append(stream_rate(str(local), workers, args.seconds, args.passes))
                rates["s3"].append(stream_rate(url, workers, args.seconds, args.passes))
                rates["cache"].append(stream_rate(url, workers, args.seconds, args.passes, cache_dir=str(cache)))
            best = {k: max(v) for k, v in rates.items()}
            print(f"| {workers} | {best['local']:.0f} | {best['s3']:.0f} | {best['s3'] / best['local']:.2f} | "
                  f"{best['cache']:.0f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
