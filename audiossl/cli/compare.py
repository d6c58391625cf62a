"""``audiossl compare``: every objective on the same encoder, data, seeds and pretraining budget, then the same
downstream recipe for each — the table papers cannot give, since they compare objectives across code bases.

    audiossl compare --data ROOT_OR_CSV [--audio-root DIR] --objectives mae,eat,jepa,sslam[,beats,bat] \\
        --budget steps:N | flops:X | seconds:S --out OUT [--recipe tiny|small] [--encoder depth=4,embed_dim=128,num_heads=4]

1. data      a prepared dataset folder, or a ``prep folder`` CSV prepared as ``audiossl demo --csv`` does (its split
             column, else a seeded stratified 80/20 split); pretraining uses the training clips' audio, no labels.
2. baseline  logistic regression on each clip's mean log-mel.
3. pretrain  each objective's ``configs/pretrain/<objective>_<recipe>.yaml`` with one encoder size for all
             (``--encoder``; each objective keeps its block style), the same data stream and seed, for an equal
             budget: optimizer steps; or pretraining FLOPs / wall-clock seconds, turned into each objective's own
             number of steps from a short calibration run (FLOPs of one real training step counted by
             ``torch.utils.flop_counter``: forward and backward matrix products, teacher included; the median step
             time). ``--points`` checkpoints along the way are each probed linearly (the curve in ``compare.png``).
4. downstream the same recipe for every objective: fine-tuning (``configs/finetune/<recipe>.yaml``, mean-pooled
             patches, since MAE/A-JEPA CLS tokens are untrained and BEATs has none), BAT's linear probe and CGP
             (``configs/probe/<recipe>.yaml``) on the frozen final encoder; plus the same fine-tuning from scratch.
5. results   ``OUT/compare.json``, ``OUT/compare.md`` (one row per objective: pretraining clips/s, FLOPs, wall time,
             peak memory, fine-tune / linear / CGP accuracy and mAP) and ``OUT/compare.png`` (linear-probe accuracy
             against pretraining FLOPs, one line per objective; mAP for multi-label data).

Resumable: every run is an ordinary run directory under ``OUT/runs``; a finished run leaves ``result.json`` and is
skipped next time; an interrupted pretraining resumes from its ``last.ckpt``. Pretraining runs in a child process, so
its peak memory is its own (CUDA: the peak allocated; CPU: the process's peak resident set).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from audiossl.errors import UserError
from audiossl.tasks.evaluate import json_safe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRETRAIN_CONFIG = {"mae": "mae", "eat": "eat", "jepa": "jepa", "sslam": "sslam", "beats": "beats_iter1", "bat": "bat"}
BUDGETS = ("steps", "flops", "seconds")
# the encoder size every objective gets by default, per recipe (BEATs' tiny config is smaller than the others')
RECIPE_ENCODERS = {"tiny": "depth=4,embed_dim=128,num_heads=4", "small": "depth=4,embed_dim=192,num_heads=3"}
PROFILE_FILE = "step_profile.json"
RESULT_FILE = "result.json"
ELAPSED_FILE = "elapsed_seconds.json"  # wall time of every invocation that worked on a run

# recipe -> (pretraining config suffix, fine-tuning config, probe config); any other name X: (X, X, X). ``base``: the
# ViT-B AudioSet recipes for GPUs (each objective's *_base_as2m.yaml, then AS-20K fine-tuning and CGP)
RECIPE_FILES = {"base": ("base_as2m", "as20k", "as20k_cgp")}


def recipe_configs(recipe: str, names: list[str]) -> tuple[dict[str, Path], Path, Path]:
    """Each objective's pretraining config, the fine-tuning config and the probe config of ``recipe``."""
    pre, ft, probe = RECIPE_FILES.get(recipe, (recipe, recipe, recipe))
    pre_cfgs = {o: CONFIGS / "pretrain" / f"{PRETRAIN_CONFIG[o]}_{pre}.yaml" for o in names}
    ft_cfg, probe_cfg = CONFIGS / "finetune" / f"{ft}.yaml", CONFIGS / "probe" / f"{probe}.yaml"
    for path in [*pre_cfgs.values(), ft_cfg, probe_cfg]:
        if not path.is_file():
            raise UserError(f"recipe {recipe!r}: {path} does not exist")
    return pre_cfgs, ft_cfg, probe_cfg


# --- the step profile (runs inside the pretraining process) -----------------------------------------------------
class StepProfile(L.Callback):
    """Writes ``DEFAULT_ROOT_DIR/step_profile.json``: the FLOPs of one training step (forward + backward, counted on
    the first real batch), the median wall time of the steps after the first, clips per step and the peak memory."""

    def __init__(self):
        self.flops = None
        self.clips = None
        self.times: list[float] = []
        self._t = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.flops is None:
            self.flops, self.clips = count_step_flops(pl_module, batch, batch_idx), int(batch["audio"].shape[0])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank != 0:
            return
        steady = self.times[1:] or self.times
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        out = {"flops_per_step": self.flops, "clips_per_step": self.clips, "seconds_per_step": statistics.median(steady),
               "steps_timed": len(self.times), "peak_mem_mb": peak,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
        Path(trainer.default_root_dir, PROFILE_FILE).write_text(json.dumps(out, indent=1) + "\n")


def count_step_flops(module, batch: dict, batch_idx: int = 0) -> float:
    """FLOPs of one training step of ``module`` on ``batch`` (forward and backward, ``torch.utils.flop_counter``);
    the gradients it leaves are cleared and no optimizer or teacher moves."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = {k: (v.to(module.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        loss = module.training_step(batch, batch_idx)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# --- budget ------------------------------------------------------------------------------------------------------
def parse_budget(text: str) -> tuple[str, float]:
    kind, _, value = text.partition(":")
    if kind not in BUDGETS or not value:
        raise UserError(f"--budget {text!r}: write steps:N, flops:X or seconds:S (e.g. steps:600, flops:2e15)")
    try:
        v = float(value)
    except ValueError:
        raise UserError(f"--budget {text!r}: {value!r} is not a number") from None
    if not v > 0:
        raise UserError(f"--budget {text!r} must be positive")
    return kind, v


def steps_for(kind: str, value: float, profile: dict | None) -> int:
    """Optimizer steps an objective gets for the budget (its calibration ``profile`` for FLOPs and seconds)."""
    if kind == "steps":
        return max(1, int(value))
    per = profile["flops_per_step"] if kind == "flops" else profile["seconds_per_step"]
    return max(1, int(value // per))


def parse_encoder(text: str | None) -> dict:
    """``depth=4,embed_dim=128,num_heads=4`` -> ``{"depth": 4, ...}`` (the size every objective gets)."""
    out: dict = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in ("depth", "embed_dim", "num_heads", "mlp_ratio"):
            raise UserError(f"--encoder {text!r}: give depth=, embed_dim=, num_heads= (and mlp_ratio=), comma-separated")
        out[key] = float(value) if key == "mlp_ratio" else int(value)
    return out


# --- runs --------------------------------------------------------------------------------------------------------
def _done(run: Path) -> dict | None:
    f = run / RESULT_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def _progress(run: Path) -> int:
    """Optimizer steps an interrupted run's ``last.ckpt`` holds (0 without one)."""
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return 0
    from audiossl.hub.reader import safe_torch_load

    return int(safe_torch_load(last, mmap=True).get("global_step", 0))


@contextlib.contextmanager
def _timed(run: Path):
    """Adds this invocation's wall time to ``run``'s ``elapsed_seconds.json`` however it ends (an error or Ctrl-C
    included; not a hard kill), and yields a function giving the run's seconds so far, earlier invocations of a
    resumed run counted."""
    f = run / ELAPSED_FILE
    try:
        before = float(json.loads(f.read_text())) if f.is_file() else 0.0
    except ValueError:  # cut short by a hard kill mid-write: that run's earlier time is lost, not its result
        before = 0.0
    t0 = time.perf_counter()
    try:
        yield lambda: before + time.perf_counter() - t0
    finally:
        run.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(before + time.perf_counter() - t0) + "\n")


def _finish(run: Path, result: dict) -> dict:
    (run / RESULT_FILE).write_text(json.dumps(json_safe(result), indent=1, default=str, allow_nan=False) + "\n")
    return result


def pretrain_run(cfg: Path, data: str, run: Path, steps: int, encoder: dict, seed: int, workers: int,
                 checkpoint_every: int) -> dict:
    """One pretraining run in a child process (resumed from its ``last.ckpt`` when interrupted); returns its
    profile plus its wall time (of every invocation that worked on it)."""
    if (r := _done(run)) is not None:
        return r
    args = [sys.executable, "-m", "audiossl", "pretrain", "--config", str(cfg), "--data.root", data,
            "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(run), "--seed_everything", str(seed),
            "--data.seed", str(seed), "--model.init_args.seed", str(seed), "--data.num_workers", str(workers),
            "--checkpoint_every_n_steps",
            str(checkpoint_every), "--trainer.log_every_n_steps", str(max(1, min(10, steps // 10))),
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=audiossl.cli.compare.StepProfile"]
    for k, v in encoder.items():
        args += [f"--model.init_args.encoder.{k}", str(v)]
    if _progress(run):
        args += ["--ckpt_path", "last"]
    with _timed(run) as elapsed:
        r = subprocess.run(args)
        seconds = elapsed()
    if r.returncode != 0:
        raise UserError(f"pretraining {cfg.name} into {run} failed (exit {r.returncode}); rerun compare to resume")
    prof = json.loads((run / PROFILE_FILE).read_text())
    return _finish(run, {**prof, "steps": steps, "seconds": seconds,
                         "checkpoint": str(run / "checkpoints" / "last.ckpt")})


def downstream_run(kind: str, cfg: Path, data: str, run: Path, steps: int, workers: int, seed: int,
                   init_from: str | None, encoder: dict | None = None) -> dict:
    """``finetune`` (from ``init_from`` or from scratch with ``encoder``) or a ``linear``/``cgp`` probe; evaluated
    on the data's evaluation split. Its seconds count every invocation that worked on it (training and evaluation)."""
    if (r := _done(run)) is not None:
        return r
    from audiossl.hub.reader import classifier_from_checkpoint
    from audiossl.data import AudioDataModule
    from audiossl.cli.demo import finetune
    from audiossl.tasks.evaluate import evaluate

    with _timed(run) as elapsed:
        common = ["--seed_everything", str(seed), "--data.seed", str(seed), "--model.seed", str(seed)]
        done = _progress(run)
        if 0 < done < steps:  # interrupted: resume
            common += ["--ckpt_path", "last"]
        if done >= steps:  # trained, not yet evaluated
            ckpt = str(run / "checkpoints" / "last.ckpt")
        elif kind == "finetune":
            extra = common + ["--model.pool", "mean"]
            if init_from:
                extra += ["--model.init_from", init_from]
            for k, v in (encoder or {}).items():
                extra += [f"--model.encoder.{k}", str(v)]
            ckpt = finetune(cfg, data, run, steps, workers, *extra)
        else:
            from audiossl.cli.train import probe

            status = probe(["--config", str(cfg), "--data.root", data, "--model.init_from", init_from, "--model.probe",
                            kind, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
                            "--trainer.default_root_dir", str(run), "--checkpoint_every_n_steps", str(steps),
                            "--data.num_workers", str(workers), "--trainer.enable_progress_bar", "false", *common])
            if status:
                raise UserError(f"the {kind} probe into {run} failed")
            ckpt = str(run / "checkpoints" / "last.ckpt")
        metrics = evaluate(classifier_from_checkpoint(ckpt), AudioDataModule(data, num_workers=0, batch_size=64),
                           run / "eval", progress=False)
        print(f"{run.relative_to(run.parent.parent)}: accuracy {metrics['accuracy']:.3f}, mAP {metrics['mAP']:.3f}")
        return _finish(run, {**{k: metrics[k] for k in ("accuracy", "mAP", "mAUC") if k in metrics},
                             "seconds": elapsed()})


def run_seconds(summary: dict) -> tuple[float, int]:
    """(seconds of every run the table rests on, from their ``result.json`` — earlier invocations of a resumed
    comparison included; how many runs recorded no time)."""
    runs = [summary["baseline"], summary["scratch"]]
    for r in summary["objectives"].values():
        runs += [r["pretrain"], r.get("finetune"), r.get("cgp"), *(c["linear_probe"] for c in r["curve"])]
        runs += [r["calibration"]] if r.get("calibration") else []
    known = [x["seconds"] for x in runs if x and x.get("seconds") is not None]
    return float(sum(known)), sum(1 for x in runs if x and x.get("seconds") is None)


# --- outputs -----------------------------------------------------------------------------------------------------
def _fmt(v, spec=".3f") -> str:
    return "" if v is None else format(v, spec)


def markdown(summary: dict) -> str:
    b = summary["budget"]
    enc = summary["settings"]["encoder"] or f"of the {summary['settings'].get('recipe', '')} recipe configs"
    head = (f"# audiossl compare\n\n{summary['data']['description']}; every objective pretrained for "
            f"**{b['kind']} {b['value']:g}** ({b['note']}), encoder {enc}, then the same "
            f"downstream recipe. Machine: {summary['machine']}. Total {summary['total_seconds'] / 60:.1f} min of runs"
            + (f" ({summary['untimed_runs']} runs without a recorded time)" if summary.get("untimed_runs") else "")
            + ".\n\n")
    lines = ["| model | pretrain steps | GFLOP | minutes | clips/s | peak MB | fine-tune acc / mAP | "
             "linear acc / mAP | CGP acc / mAP |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary["objectives"].items():
        p = r["pretrain"]
        cells = [f"{_fmt(r[k].get('accuracy'))} / {_fmt(r[k].get('mAP'))}" if r.get(k) else ""
                 for k in ("finetune", "linear_probe", "cgp")]
        lines.append(f"| {name} | {p['steps']} | {p['flops'] / 1e9:.3g} | {p['seconds'] / 60:.1f} | "
                     f"{p['clips_per_s']:.1f} | {p['peak_mem_mb']:.0f} | " + " | ".join(cells) + " |")
    s, base = summary["scratch"], summary["baseline"]
    lines.append(f"| scratch (no pretraining; the fine-tuning config's encoder) | | | | | | {_fmt(s.get('accuracy'))} / "
                 f"{_fmt(s.get('mAP'))} | | |")
    lines.append(f"| mean log-mel + logistic regression | | | | | | {_fmt(base.get('accuracy'))} / "
                 f"{_fmt(base.get('mAP'))} | | |")
    return head + "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["data"]["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in summary["objectives"].items():
        pts = [(c["flops"], c["linear_probe"][metric]) for c in r["curve"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if summary["baseline"].get(metric) is not None:
        ax.axhline(summary["baseline"][metric], color="grey", ls="--", label="mean log-mel baseline")
    ax.set_xscale("log")
    ax.set_xlabel("pretraining FLOPs (forward + backward, measured)")
    ax.set_ylabel(f"linear-probe {metric} (eval)")
    ax.set_title("downstream score against pretraining cost")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the verb ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from audiossl.cli.demo import Stages, baseline, config_steps, prepare_csv

    ap = argparse.ArgumentParser(prog="audiossl compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared dataset folder, or a prep-folder CSV (path,labels[,split])")
    ap.add_argument("--audio-root", help="with a CSV: the folder its paths are relative to (default: the CSV's)")
    ap.add_argument("--objectives", default="mae,eat,jepa,sslam", help=f"comma-separated, of {','.join(PRETRAIN_CONFIG)}")
    ap.add_argument("--budget", default="steps:600", help="steps:N, flops:X or seconds:S per objective (default steps:600)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default="tiny",
                    help="config suffix: configs/{pretrain,finetune,probe}/..._RECIPE.yaml (tiny, small); base: each "
                         "objective's *_base_as2m.yaml, finetune/as20k.yaml, probe/as20k_cgp.yaml (ViT-B, GPUs)")
    ap.add_argument("--encoder", default=None,
                    help="the one encoder size for every objective, e.g. depth=4,embed_dim=128,num_heads=4 (default: "
                         "the recipe's: " + ", ".join(f"{k} {v}" for k, v in RECIPE_ENCODERS.items()) + ")")
    ap.add_argument("--finetune-steps", type=int, default=None,
                    help="fine-tuning steps (default: configs/finetune/RECIPE.yaml's max_steps)")
    ap.add_argument("--probe-steps", type=int, default=None,
                    help="linear / CGP probe steps (default: configs/probe/RECIPE.yaml's max_steps)")
    ap.add_argument("--points", type=int, default=3, help="checkpoints along pretraining probed for the curve (>= 1)")
    ap.add_argument("--calibration-steps", type=int, default=6, help="steps of the run that sizes flops/seconds budgets")
    ap.add_argument("--no-cgp", action="store_true", help="leave out the CGP probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="data workers of every run")
    args = ap.parse_args(argv)

    names = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in names if o not in PRETRAIN_CONFIG]
    if unknown or not names:
        raise UserError(f"--objectives: unknown {unknown or names}; choose from {', '.join(PRETRAIN_CONFIG)}")
    kind, value = parse_budget(args.budget)
    encoder = parse_encoder(RECIPE_ENCODERS.get(args.recipe, "") if args.encoder is None else args.encoder)
    pre_cfgs, ft_cfg, probe_cfg = recipe_configs(args.recipe, names)
    if args.finetune_steps is None:
        args.finetune_steps = config_steps(ft_cfg)
    if args.probe_steps is None:
        args.probe_steps = config_steps(probe_cfg)
    if args.points < 1 or args.finetune_steps < 1 or args.probe_steps < 1:
        raise UserError("--points, --finetune-steps and --probe-steps must be >= 1")
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    S = Stages()

    src = Path(args.data)
    if src.is_file() and src.suffix.lower() == ".csv":
        data, info = S.run("data: prepare the CSV", prepare_csv, str(src), args.audio_root or str(src.resolve().parent),
                           out, 0.2, args.seed, args.workers + 1)
        desc = f"{info['train_clips']} training / {info['eval_clips']} evaluation clips of {src}"
    elif (src / "manifest.json").is_file() or "://" in str(src):
        data = str(src)
        desc = f"the dataset {src}"
    else:
        raise UserError(f"--data {src}: neither a prepared dataset folder (manifest.json) nor a .csv")
    if (base := _done(runs / "baseline")) is None:
        (runs / "baseline").mkdir(exist_ok=True)
        with _timed(runs / "baseline") as elapsed:
            r = S.run("baseline", baseline, data)
            base = _finish(runs / "baseline", {**{k: r[k] for k in ("accuracy", "mAP", "mAUC") if k in r},
                                               "seconds": elapsed()})
    from audiossl.data.manifest import read_manifest

    multi = bool(read_manifest(data).multi_label)

    results: dict[str, dict] = {}
    for o in names:
        profile = None
        if kind != "steps":
            profile = S.run(f"{o}: calibrate", pretrain_run, pre_cfgs[o], data, runs / o / "calibration",
                            args.calibration_steps, encoder, args.seed, args.workers, args.calibration_steps)
        steps = steps_for(kind, value, profile)
        every = max(1, math.ceil(steps / args.points))
        p = S.run(f"{o}: pretrain {steps} steps", pretrain_run, pre_cfgs[o], data, runs / o / "pretrain", steps,
                  encoder, args.seed, args.workers, every)
        ckpt_dir = runs / o / "pretrain" / "checkpoints"
        points = sorted(ckpt_dir.glob("step*.ckpt"))
        if not any(str(c).endswith(f"step{steps:08d}.ckpt") for c in points):
            points.append(ckpt_dir / "last.ckpt")
        curve = []
        for c in points:
            at = steps if c.name == "last.ckpt" else int(c.stem[4:])
            r = S.run(f"{o}: linear probe at step {at}", downstream_run, "linear", probe_cfg, data,
                      runs / o / f"linear_step{at:08d}", args.probe_steps, args.workers, args.seed, str(c))
            curve.append({"steps": at, "flops": at * p["flops_per_step"], "linear_probe": r})
        final = str(ckpt_dir / "last.ckpt")
        row = {"pretrain": {"steps": steps, "flops": steps * p["flops_per_step"], "seconds": p["seconds"],
                            "clips_per_s": p["clips_per_step"] / p["seconds_per_step"], "peak_mem_mb": p["peak_mem_mb"],
                            "flops_per_step": p["flops_per_step"], "device": p["device"]},
               "linear_probe": curve[-1]["linear_probe"], "curve": curve}
        if profile is not None:
            row["calibration"] = {"seconds": profile.get("seconds")}
        row["finetune"] = S.run(f"{o}: fine-tune", downstream_run, "finetune", ft_cfg, data, runs / o / "finetune",
                                args.finetune_steps, args.workers, args.seed, final)
        if not args.no_cgp:
            row["cgp"] = S.run(f"{o}: CGP probe", downstream_run, "cgp", probe_cfg, data, runs / o / "cgp",
                               args.probe_steps, args.workers, args.seed, final)
        results[o] = row
    scratch = S.run("scratch: fine-tune without pretraining", downstream_run, "finetune", ft_cfg, data,
                    runs / "scratch", args.finetune_steps, args.workers, args.seed, None, encoder)

    note = {"steps": "optimizer steps", "flops": "FLOPs of the measured step x steps",
            "seconds": "seconds from the measured median step time"}[kind]
    summary = {
        "budget": {"kind": kind, "value": value, "note": note},
        "objectives": results,
        **{o: results[o] for o in names},  # the layout: {objective: {...}, "scratch": ..., "baseline": ...}
        "scratch": scratch,
        "baseline": base,
        "data": {"source": str(src), "root": data, "description": desc, "multi_label": multi,
                 "metric": "mAP" if multi else "accuracy"},
        "settings": {**vars(args), "encoder": encoder},
        "machine": f"{os.cpu_count()} CPU cores" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available()
                                                   else ", no GPU"),
        "stage_seconds": S.times,
        "invocation_seconds": S.total,  # this call's wall time; finished runs of earlier calls are not redone
    }
    summary["total_seconds"], summary["untimed_runs"] = run_seconds(summary)
    (out / "compare.json").write_text(json.dumps(json_safe(summary), indent=1, default=str, allow_nan=False) + "\n")
    (out / "compare.md").write_text(markdown(summary))
    plot(summary, out / "compare.png")
    print("\n" + markdown(summary))
    print(f"outputs: {out}/compare.json, compare.md, compare.png, runs/")
    return 0
