"""``audiossl demo`` (``make demo``): the whole framework end to end on the built-in synthetic corpus, on a CPU.

1. data      ``prep synth``: an unlabelled pool (2,000 clips of 2 s) and a small labelled set (400 train + 400 eval,
             drawn with another seed), 16 sound-event classes, multi-label;
2. baseline  logistic regression on each clip's mean log-mel (what a model that ignores time can do);
3. pretrain  EAT (``configs/pretrain/eat_tiny.yaml``) on the unlabelled pool;
4. finetune  the labelled set, three ways with the same budget: from the pretrained encoder, from scratch, and a
             linear probe on the frozen pretrained encoder;
5. evaluate  mAP / mAUC / d-prime / accuracy on the labelled set's eval split;
6. export    the fine-tuned model to ``OUT/model`` (safetensors + config.json), loaded back to draw
7. plots     training curves and one eval clip's mel spectrogram with its predicted labels over time;
8. results   a table on stdout and in ``OUT/results.md`` / ``OUT/results.json``.

Longer runs give better numbers: ``--pretrain-steps``, ``--finetune-steps``, ``--unlabelled-clips``,
``--labelled-clips``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _configs_dir() -> Path:
    d = REPO / "configs"
    if not (d / "pretrain" / "eat_tiny.yaml").is_file():
        raise SystemExit(f"audiossl demo: the recipes are not at {d}; run the demo from a checkout of the repository")
    return d


class Stages:
    """Prints a header per stage and keeps the wall time of each."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n=== [{len(self.times) + 1}] {name}", flush=True)
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - t
        print(f"=== {name}: {self.times[name]:.0f} s", flush=True)
        return out

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0


DEMO_RUNS = ("pretrain", "finetune/pretrained", "finetune/scratch", "finetune/linear_probe")


def make_data(out: Path, unlabelled: int, labelled: int, eval_clips: int, workers: int) -> tuple[str, str]:
    from audiossl.data.writer import WriterOptions
    from data_prep.synth import convert

    pool, lab = out / "data" / "unlabelled", out / "data" / "labelled"
    convert(str(pool), num_clips=unlabelled, eval_clips=1, seed=0, options=WriterOptions(workers=workers))
    convert(str(lab), num_clips=labelled, eval_clips=eval_clips, seed=1, options=WriterOptions(workers=workers))
    return str(pool), str(lab)


def baseline(labelled: str) -> dict:
    from data_prep.synth import logreg_baseline

    r = logreg_baseline(labelled)
    print(f"logistic regression on {r['features']}: eval mAP {r['map']:.3f}")
    return r


def _log_every(steps: int) -> int:
    return max(1, min(10, steps // 10))


def pretrain(cfg: Path, data: str, root: Path, steps: int, workers: int) -> str:
    from audiossl.train_cli import pretrain as run

    run(["--config", str(cfg), "--data.root", data, "--trainer.max_steps", str(steps),
         "--trainer.default_root_dir", str(root), "--checkpoint_every_n_steps", str(steps),
         "--trainer.log_every_n_steps", str(_log_every(steps)), "--data.num_workers", str(workers)])
    return str(root / "checkpoints" / "last.ckpt")


def finetune(cfg: Path, data: str, root: Path, steps: int, workers: int, *extra: str) -> str:
    from audiossl.train_cli import finetune as run

    run(["--config", str(cfg), "--data.root", data, "--trainer.max_steps", str(steps),
         "--trainer.val_check_interval", str(steps), "--trainer.default_root_dir", str(root),
         "--checkpoint_every_n_steps", str(steps), "--trainer.log_every_n_steps", str(_log_every(steps)),
         "--data.num_workers", str(workers), *extra])
    return str(root / "checkpoints" / "last.ckpt")


def evaluate_all(runs: dict[str, str], data: str, out: Path) -> dict[str, dict]:
    from audiossl.checkpoint import classifier_from_checkpoint
    from audiossl.data import AudioDataModule
    from audiossl.evaluate import evaluate

    results = {}
    for name, ckpt in runs.items():
        dm = AudioDataModule(data, num_workers=0, batch_size=64)
        folder = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")  # "fine-tuned (pretrained)" -> fine_tuned_pretrained
        m = evaluate(classifier_from_checkpoint(ckpt), dm, out / "eval" / folder, progress=False)
        results[name] = {k: m[k] for k in ("mAP", "mAUC", "d_prime", "accuracy", "num_clips")}
        print(f"{name:>22}: mAP {m['mAP']:.3f}  mAUC {m['mAUC']:.3f}  d' {m['d_prime']:.2f}  "
              f"accuracy {m['accuracy']:.3f}  ({m['num_clips']} clips)")
    return results


def export_and_plot(ckpt: str, labelled: str, out: Path) -> dict:
    import soundfile as sf

    from audiossl import audio
    from audiossl.data.manifest import read_manifest
    from audiossl.data.pipeline import read_shard
    from audiossl.export import export_checkpoint, load_model
    from audiossl.plot import plot_predictions, plot_training_curves

    export_checkpoint(ckpt, out / "model")
    model = load_model(out / "model")
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_training_curves(out / "runs" / "pretrain", plots / "pretrain_curves.png",
                         tags=["train/loss", "train/frame_loss", "train/cls_loss", "train/pred_std", "train/target_std",
                               "train/lr"])
    plot_training_curves(out / "runs" / "finetune", plots / "finetune_curves.png", tags=["train/loss"])
    # one evaluation clip, written as a file the way a user would have it, then predicted from the exported model
    m = read_manifest(labelled)
    shard = Path(labelled) / m.split("eval").shards[0].path
    key, _, members = next(iter(read_shard(str(shard))))
    meta = json.loads(members["json"])
    clip = out / "example.wav"
    sf.write(clip, audio.load(members["flac"]).numpy(), m.sample_rate or 16000)
    plot_predictions(model, str(clip), plots / "example_predictions.png", top_k=4)
    top = model.predict(str(clip), top_k=3)
    print(f"example clip {clip.name}: true labels {meta['labels']}; predicted "
          + ", ".join(f"{label} {p:.2f}" for label, p in top))
    return {"example": str(clip), "true_labels": meta["labels"], "predicted": top}


def table(results: dict, base: dict) -> str:
    rows = [
        ("mean log-mel + logistic regression", base["map"], None, None),
        *[(name, r["mAP"], r["mAUC"], r["accuracy"]) for name, r in results.items()],
    ]
    lines = ["| model | eval mAP | mAUC | top-1 accuracy |", "|---|---:|---:|---:|"]
    for name, mAP, mAUC, acc in rows:
        f = (lambda v: "" if v is None else f"{v:.3f}")
        lines.append(f"| {name} | {mAP:.3f} | {f(mAUC)} | {f(acc)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--unlabelled-clips", type=int, default=2000)
    p.add_argument("--labelled-clips", type=int, default=400)
    p.add_argument("--eval-clips", type=int, default=400)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes that build the corpus (training uses one data worker beside the main process)")
    args = p.parse_args(argv)

    out = Path(args.out)
    cfg = _configs_dir()
    for run in DEMO_RUNS:  # the demo always trains afresh: its own run folders (and nothing else) are replaced
        if (out / "runs" / run).is_dir():
            print(f"audiossl demo: replacing the previous demo run {out / 'runs' / run}", file=sys.stderr)
            shutil.rmtree(out / "runs" / run)
    S = Stages()
    pool, lab = S.run("data: synthetic corpus", make_data, out, args.unlabelled_clips, args.labelled_clips,
                      args.eval_clips, args.workers)
    base = S.run("baseline: logistic regression on mean log-mel", baseline, lab)
    pre = S.run("pretrain: EAT (tiny) on the unlabelled pool", pretrain, cfg / "pretrain" / "eat_tiny.yaml", pool,
                out / "runs" / "pretrain", args.pretrain_steps, 1)
    ft_cfg = cfg / "finetune" / "tiny.yaml"
    runs = {}
    runs["fine-tuned (pretrained)"] = S.run("finetune: from the pretrained encoder", finetune, ft_cfg, lab,
                                            out / "runs" / "finetune" / "pretrained", args.finetune_steps, 1,
                                            "--model.init_from", pre)
    runs["fine-tuned (scratch)"] = S.run("finetune: from scratch, same budget", finetune, ft_cfg, lab,
                                         out / "runs" / "finetune" / "scratch", args.finetune_steps, 1)
    runs["linear probe (pretrained)"] = S.run(
        "finetune: linear probe on the frozen pretrained encoder", finetune, ft_cfg, lab,
        out / "runs" / "finetune" / "linear_probe", args.finetune_steps, 1, "--model.init_from", pre,
        "--model.freeze_encoder", "true", "--model.pool", "mean", "--model.lr", "1e-2", "--model.mixup", "0",
        "--model.specaug_ratio", "0", "--model.drop_path", "0", "--model.layer_decay", "1.0")
    results = S.run("evaluate", evaluate_all, runs, lab, out)
    example = S.run("export + plots", export_and_plot, runs["fine-tuned (pretrained)"], lab, out)

    md = table(results, base)
    gain = results["fine-tuned (pretrained)"]["mAP"] - results["fine-tuned (scratch)"]["mAP"]
    summary = {
        "results": results,
        "baseline_logreg_mean_logmel_mAP": base["map"],
        "pretraining_gain_mAP": gain,
        "settings": vars(args),
        "stage_seconds": S.times,
        "total_seconds": S.total,
        "example": example,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "results.md").write_text(
        f"# audiossl demo\n\n{args.unlabelled_clips} unlabelled clips for pretraining ({args.pretrain_steps} steps), "
        f"{args.labelled_clips} labelled clips for fine-tuning ({args.finetune_steps} steps each), "
        f"{args.eval_clips} eval clips.\n\n{md}\n\nTotal {S.total / 60:.1f} min.\n"
    )
    print("\n" + md)
    print(f"\npretraining gain: {gain:+.3f} mAP (fine-tuned from the pretrained encoder minus from scratch)")
    print(f"outputs in {out}/: results.md, results.json, eval/, model/, plots/, runs/ (TensorBoard logs)")
    print(f"total {S.total / 60:.1f} min: " + ", ".join(f"{k.split(':')[0]} {v:.0f}s" for k, v in S.times.items()))
    if gain <= 0:
        print("warning: pretraining did not help in this run; see README 'The demo' for longer settings",
              file=sys.stderr)
    return 0
