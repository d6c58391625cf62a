"""``slurm/pretrain.sbatch`` on a real one-node SLURM cluster started by the test (Debian's SLURM packages, installed
here when missing): the job trains with two tasks (DDP over gloo on CPU), writes its checkpoints, and when it is
signalled (what ``--signal=SIGUSR1@90`` does before the time limit) it checkpoints, requeues itself and the requeued
job resumes from that checkpoint with its step counter.

The cluster is private to the test: its own munge key and socket, free TCP ports, state, spool, logs and pid files in
a temporary folder, so a second run (or daemons left by a crashed one) cannot clash. Every daemon is stopped by the
pid in its pid file at the end.

Opt-in: the test installs Debian packages and starts daemons on the host, which a researcher running ``make test`` on
a workstation does not want. It runs when ``AUDIOSSL_TEST_SLURM=1`` is set (``.ci/run`` sets it).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, config, synth_root  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(
    os.environ.get("AUDIOSSL_TEST_SLURM") != "1",
    reason="opt-in: set AUDIOSSL_TEST_SLURM=1 to install SLURM + munge (apt, as root) and start a private "
           "one-node cluster on this host (.ci/run does)",
)

TESTS = os.path.dirname(os.path.abspath(__file__))
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "squeue", "sinfo")
TINY_ENCODER = "{name: vit_tiny, depth: 2, embed_dim: 64, num_heads: 4, block_style: post}"


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def ensure_slurm_installed() -> float:
    """Install SLURM and munge from the Debian packages when missing; returns the seconds the install took."""
    if all(_which(n) for n in DAEMONS + CLIENTS):
        return 0.0
    if not sys.platform.startswith("linux"):
        pytest.skip(f"SLURM is not installed and this test installs it only on Linux (platform {sys.platform})")
    if os.geteuid() != 0:
        pytest.skip("SLURM is not installed and installing it (apt-get install slurmctld slurmd slurm-client munge) "
                    "needs root; this test runs as uid %d" % os.geteuid())
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it with")
    t0 = time.time()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "slurmctld", "slurmd", "slurm-client", "munge"]):
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing SLURM: `{' '.join(cmd)}` took more than 600 s")
        if r.returncode != 0:
            pytest.skip(f"installing SLURM: `{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    missing = [n for n in DAEMONS + CLIENTS if not _which(n)]
    if missing:
        pytest.skip(f"installed the SLURM packages but {missing} are still missing")
    return time.time() - t0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _slurm_conf(d: str, host: str, ctld_port: int, slurmd_port: int) -> str:
    # no systemd or cgroups: process tracking by /proc, no task plugin, no accounting
    return f"""ClusterName=audiossltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock,cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid_files: list[str]) -> None:
    """SIGTERM the daemons named by their pid files, SIGKILL those still alive after 5 s."""
    pids = []
    for path in pid_files:
        try:
            pids.append(int(open(path).read().strip()))
        except (OSError, ValueError):
            pass

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in pids:
            if alive(pid):
                os.kill(pid, sig)
        end = time.time() + wait
        while time.time() < end and any(alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if alive(p)]
        if not pids:
            return


def _tail(path: str, n: int = 3000) -> str:
    try:
        return open(path, errors="replace").read()[-n:]
    except OSError:
        return f"({path} missing)"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster (2 CPUs); yields the environment for the SLURM commands."""
    install_s = ensure_slurm_installed()
    if install_s:
        print(f"\ninstalled SLURM + munge in {install_s:.1f} s")
    d = str(tmp_path_factory.mktemp("slurm"))
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(d, sub))
    key = os.path.join(d, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o600)
    host = socket.gethostname().split(".")[0]
    conf = os.path.join(d, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_slurm_conf(d, host, *_free_ports(2)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = conf
    env["AUDIOSSL_TEST_SLURM_DIR"] = d  # where the daemons log: quoted when a job misbehaves
    pid_files = [os.path.join(d, f) for f in ("slurmd.pid", "slurmctld.pid", "munged.pid")]
    try:
        subprocess.run([_which("munged"), "--force", f"--socket={d}/munge.sock", f"--key-file={key}",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
                       check=True, capture_output=True, text=True, timeout=30)
        subprocess.run([_which("slurmctld"), "-c"], env=env, check=True, capture_output=True, text=True, timeout=30)
        subprocess.run([_which("slurmd"), "-c"], env=env, check=True, capture_output=True, text=True, timeout=30)
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            r = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            state = r.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the SLURM node did not become idle in 60 s (state {state!r});\nslurmctld.log:\n"
                        f"{_tail(d + '/slurmctld.log')}\nslurmd.log:\n{_tail(d + '/slurmd.log')}")
        yield env
    except subprocess.CalledProcessError as e:
        pytest.fail(f"starting the local SLURM cluster: {e.cmd} failed ({e.returncode}): {e.stderr}\n"
                    f"{_tail(d + '/slurmctld.log')}\n{_tail(d + '/slurmd.log')}\n{_tail(d + '/munged.log')}")
    finally:
        subprocess.run([_which("scancel") or "scancel", "--user", "root"], env=env, capture_output=True)
        time.sleep(0.5)
        _stop(pid_files)


def _job_field(env: dict, job: str, field: str) -> str:
    r = subprocess.run([_which("scontrol"), "show", "job", job], env=env, capture_output=True, text=True)
    for token in r.stdout.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return ""


def _wait(what: str, cond, timeout: float, on_fail) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{on_fail()}")


def test_sbatch_trains_on_two_tasks_and_resumes_after_signal_and_requeue(slurm, synth_root, tmp_path):
    work = str(tmp_path)
    env = dict(slurm)
    env["AUDIOSSL"] = os.path.join(os.path.dirname(sys.executable), "audiossl")
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["AUDIOSSL_PROBE_DIR"] = os.path.join(work, "probe")
    env["AUDIOSSL_PROBE_SLEEP"] = "0.3"  # leaves time to signal the job before it finishes
    env["OMP_NUM_THREADS"] = "1"
    out = os.path.join(work, "job.out")
    # the GPU/CPU resources of the template are overridden for a 2-CPU node without GPUs; extra arguments go to the CLI
    cmd = [_which("sbatch"), "--parsable", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1",
           "--time=10", f"--chdir={work}", f"--output={out}", os.path.join(ROOT, "slurm", "pretrain.sbatch"),
           config("pretrain", "eat_tiny.yaml"), "--data.root", synth_root, "--trainer.accelerator", "cpu",
           "--model.init_args.encoder", TINY_ENCODER, "--model.init_args.clone_batch", "2",
           "--model.init_args.decoder_layers", "2", "--data.batch_size", "8", "--data.num_workers", "0",
           "--trainer.max_steps", "16", "--checkpoint_every_n_steps", "4", "--trainer.log_every_n_steps", "1",
           "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=ddp_probe.KeyProbe"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    run = os.path.join(work, "runs", f"eat_tiny-{job}")
    d = env["AUDIOSSL_TEST_SLURM_DIR"]
    log = lambda: (f"job output:\n{_tail(out, 6000)}\nscontrol show job:\n"  # noqa: E731
                   f"{subprocess.run([_which('scontrol'), 'show', 'job', job], env=env, capture_output=True, text=True).stdout}"
                   f"\nslurmctld.log:\n{_tail(d + '/slurmctld.log', 4000)}\nslurmd.log:\n{_tail(d + '/slurmd.log', 4000)}")

    # 1. it trains on two tasks and writes its checkpoints
    _wait("the first step checkpoint", lambda: os.path.exists(os.path.join(run, "checkpoints", "step00000004.ckpt"))
          or _job_field(env, job, "JobState") in ("FAILED", "COMPLETED", "CANCELLED"), 240, log)
    assert os.path.exists(os.path.join(run, "checkpoints", "step00000004.ckpt")), log()

    # 2. the warning signal (what --signal=SIGUSR1@90 sends to the job steps): checkpoint, requeue
    subprocess.run([_which("scancel"), "--signal=USR1", job], env=env, check=True, timeout=30)
    _wait("the requeue", lambda: _job_field(env, job, "Restarts") == "1"
          and _job_field(env, job, "JobState") == "PENDING", 120, log)
    hpc = glob.glob(os.path.join(run, "hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1, (os.listdir(run), log())
    ck = torch.load(hpc[0], map_location="cpu", weights_only=True)
    saved_step = ck["global_step"]
    assert 4 <= saved_step < 16
    assert ck["AudioDataModule"]["world_size"] == 2  # the data stream was dealt to two ranks
    assert ck["audiossl"]["objective"] == "eat"

    # 3. the requeued job (same id, so the same run directory) resumes from that checkpoint
    # SLURM holds a requeued job until its revoked credential has expired (cred_expire, 10 s here; 120 s by default):
    # forcing it to start earlier (`scontrol update StartTime=now`) races slurmd, which then refuses to launch it
    # ("Job credential revoked") and the job fails. So the test waits, as a real requeue does.
    _wait("the requeued job to finish", lambda: _job_field(env, job, "JobState") in ("COMPLETED", "FAILED",
                                                                                      "CANCELLED", "TIMEOUT"),
          240, log)
    assert _job_field(env, job, "JobState") == "COMPLETED", log()
    text = open(out).read()
    assert "restart 0" in text and "restart 1" in text and "resuming from" in text, log()
    final = torch.load(os.path.join(run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert final["global_step"] == 16

    records = [json.load(open(p)) for p in glob.glob(os.path.join(work, "probe", "*.json"))]
    first = [r for r in records if r["train"] and r["train"][0]["global_step"] == 1]
    second = [r for r in records if r["train"] and r["train"][0]["global_step"] > 1]
    for group in (first, second):  # two tasks in each run, world size 2 by SLURM's own count
        assert sorted(r["rank"] for r in group) == [0, 1], records
        assert all(r["world_size"] == 2 and r["slurm_ntasks"] == "2" for r in group)
        assert sorted(r["slurm_procid"] for r in group) == ["0", "1"]
    for r in first:  # stopped at the step it saved
        assert r["global_step"] == saved_step
    for r in second:  # ... and went on from there: the step counter continues, not from zero
        assert [b["global_step"] for b in r["train"]] == list(range(saved_step + 1, 17))
