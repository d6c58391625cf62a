"""Checkpoint-and-requeue on a warning signal (SLURM's ``--signal=SIGUSR1@90``), safely under DDP.

SLURM sends ``SIGUSR1`` to every task of the job some seconds before its time limit (or a preemption). Lightning's own
handler saves ``hpc_ckpt_N.ckpt`` *inside the signal handler*, wherever each rank happens to be: the save ends with a
collective barrier, so a rank interrupted in its forward pass meets a rank still inside its backward pass (waiting on
the gradient all-reduce) and both hang; and a mid-step save can hold an optimizer step without its global step or EMA
teacher update. This callback only sets a flag in the handler. After each optimizer step the ranks agree (one
all-reduce of a boolean) on whether anyone was signalled; if so, at that same step on every rank, they

1. save ``ROOT/hpc_ckpt_N.ckpt`` (N one more than the highest present) through the Trainer, atomically,
2. stop training cleanly (``last.ckpt`` is refreshed at that same step, loggers flushed),
3. when ``fit`` has wound down, have the job requeued (rank 0, only inside a SLURM job). Under audiossl's sbatch
   templates (which export ``AUDIOSSL_REQUEUE_MARKER=1``) it writes ``ROOT/REQUEUE`` and the batch script runs
   ``scontrol requeue`` once ``srun`` has returned, so no running step is killed by the requeue; otherwise it runs
   ``scontrol requeue`` itself, as Lightning does. SLURM then puts the job back in the queue.

The requeued job keeps its job id, so a run directory keyed on ``$SLURM_JOB_ID`` is the same, and
``--ckpt_path last`` (see :func:`audiossl.cli.train.latest_checkpoint`) resumes from the newest checkpoint there.
Outside SLURM the same signal saves and stops without requeueing (``kill -USR1 <rank-0 pid>`` on a workstation).

The handler is installed when the callback is built (a signal during start-up must not kill a process: SIGUSR1's
default action) and again at ``setup`` if needed, before Lightning registers its handlers; Lightning leaves a signal
that already has a handler alone and keeps its own SIGTERM handling. ``teardown`` restores the previous handler.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import lightning as L


def hpc_checkpoint_path(root: str) -> str:
    """``root/hpc_ckpt_{N}.ckpt`` with N one more than the highest ``hpc_ckpt_*.ckpt`` present (Lightning's naming)."""
    numbers = []
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith("hpc_ckpt_") and name.endswith(".ckpt"):
                stem = name[len("hpc_ckpt_") : -len(".ckpt")]
                if stem.isdigit():
                    numbers.append(int(stem))
    return os.path.join(root, f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt")


MARKER_ENV = "AUDIOSSL_REQUEUE_MARKER"
MARKER_FILE = "REQUEUE"


def write_requeue_marker(root: str, job: str, checkpoint: str) -> str:
    """``root/REQUEUE``: asks the batch script to requeue ``job`` after ``srun`` returns (atomically written)."""
    path = os.path.join(root, MARKER_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{job}\n{checkpoint}\n")
    os.replace(tmp, path)
    print(f"audiossl: asked the batch script to requeue SLURM job {job} (resume from {checkpoint})", flush=True)
    return path


def slurm_job_id() -> str | None:
    """The id to requeue: ``ARRAYJOB_TASK`` for array jobs, else ``SLURM_JOB_ID``; ``None`` outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class RequeueOnSignal(L.Callback):
    """On ``signal_name``: save ``hpc_ckpt_N.ckpt`` at the next optimizer step on every rank, requeue, stop.

    Args:
        signal_name: the warning signal (``SIGUSR1``, as in ``#SBATCH --signal=SIGUSR1@90``).
        requeue: run ``scontrol requeue`` when inside a SLURM job.
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True):
        super().__init__()
        self.signum = signal.Signals[signal_name]
        self.requeue = requeue
        self.requested = False
        self._previous = None
        self._installed = False
        self._last_step = -1
        self.saved_path: str | None = None
        self._install()  # now, not at setup: a signal during start-up must not kill the process (SIGUSR1's default)

    def _install(self) -> None:
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(self.signum, self._on_signal)
        self._installed = True

    # --- the handler: nothing but a flag ------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        os.write(2, f"audiossl: received {signal.Signals(signum).name}; checkpointing at the next step\n".encode())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
        job = slurm_job_id()
        if self.saved_path and self.requeue and job and trainer.is_global_zero:
            if os.environ.get(MARKER_ENV) == "1":
                write_requeue_marker(trainer.default_root_dir, job, self.saved_path)
            else:
                self._scontrol_requeue(job)

    # --- acting at a step boundary, on every rank at once ---------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._installed or trainer.global_step == self._last_step:
            return  # not installed, or a micro-batch of gradient accumulation: wait for the optimizer step
        self._last_step = trainer.global_step
        # every rank takes part in this reduction at every step, so they all decide at the same step
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = trainer.strategy.broadcast(hpc_checkpoint_path(trainer.default_root_dir), src=0)
        trainer.save_checkpoint(path)  # rank 0 writes (AtomicCheckpointIO), then all ranks meet at a barrier
        self.saved_path = path
        if trainer.is_global_zero:
            print(f"audiossl: saved {path} at step {trainer.global_step}; stopping", flush=True)
        trainer.should_stop = True
        self.requested = False

    @staticmethod
    def _scontrol_requeue(job: str) -> None:
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"audiossl: could not requeue SLURM job {job}: {e}; resubmit it to resume", flush=True)
            return
        if result.returncode == 0:
            print(f"audiossl: requeued SLURM job {job}", flush=True)
        else:
            print(f"audiossl: `scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}; "
                  "resubmit the job to resume", flush=True)
