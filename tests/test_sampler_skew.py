"""benchmarks/sampler_skew.py runs the training stream's real shard dealing and weighted draw against EAT's global
multinomial; a small run must plan a full epoch of distinct clips and report both comparisons."""

import os
import subprocess
import sys

from helpers import ROOT


def test_sampler_skew_script_runs_small():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sampler_skew.py"), "--epochs", "1",
                        "--unbalanced", "30000", "--balanced", "5270", "--epoch-size", "4000", "--batch-size", "16"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "total variation between the label distributions" in r.stdout and "share of balanced-train" in r.stdout
