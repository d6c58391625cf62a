"""``audiossl demo`` (``make demo``): the whole framework end to end on a CPU, on the built-in synthetic corpus or on
your own labelled audio (``--csv``).

1. data      built-in: ``prep synth``, an unlabelled pool (2,000 clips of 2 s) and a small labelled set (400 train +
             400 eval, drawn with another seed), 16 sound-event classes, multi-label.
             ``--csv CSV --audio-root DIR``: your clips in the ``prep folder`` CSV format (``path,labels[,split]``);
             its ``split`` column gives ``train``/``eval``, else a seeded split stratified by label
             (``--eval-fraction``, 20 %); rows are written in a seeded shuffled order, so a CSV listed class by
             class does not give class-sorted shards. Pretraining uses the training clips' audio (no labels);
             the fbank mean/std of the training clips, measured with the recipe's front end, normalise the
             features (``--no-stats``: AudioSet's);
2. baseline  logistic regression on each clip's mean log-mel (what a model that ignores time can do);
3. pretrain  ``--objective`` (``configs/pretrain/<objective>_<recipe>.yaml``, or ``--pretrain-config``; EAT, or MAE
             with ``--csv``); the recipe
             is ``tiny`` for the synthetic corpus and ``small`` (short real recordings: 64 mel bins at a 2.5 ms hop,
             a 4 x 192 encoder) with ``--csv``;
4. finetune  the labelled set, three ways with the same budget (``--finetune-config``,
             ``configs/finetune/<recipe>.yaml``): from the pretrained encoder, from scratch (the same
             architecture, freshly initialised), and a linear probe on the frozen pretrained encoder;
5. evaluate  mAP / mAUC / d-prime / accuracy on the evaluation split;
6. export    the fine-tuned model to ``OUT/model`` (safetensors + config.json), loaded back to draw
7. plots     training curves and one eval clip's mel spectrogram with its predicted labels over time;
8. results   a table on stdout and in ``OUT/results.md``; ``OUT/results.json`` holds ``baseline``, ``pretrained``,
             ``scratch`` and ``linear_probe`` (each ``accuracy``, ``mAP``, ``mAUC``, ...), the settings and the
             seconds of every stage.

Steps: 600 pretraining and 300 fine-tuning (tiny), or the recipe configs' ``max_steps`` (small); longer runs give
better numbers: ``--pretrain-steps``, ``--finetune-steps`` (and, built-in, ``--unlabelled-clips``,
``--labelled-clips``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

from audiossl.errors import UserError

REPO = Path(__file__).resolve().parents[2]
OBJECTIVES = ("eat", "mae", "jepa", "sslam")
RECIPES = ("tiny", "small")


def _configs_dir() -> Path:
    d = REPO / "configs"
    if not (d / "pretrain" / "eat_tiny.yaml").is_file():
        raise SystemExit(f"audiossl demo: the recipes are not at {d}; run the demo from a checkout of the repository")
    return d


def config_steps(path: Path) -> int:
    """``trainer.max_steps`` of a recipe YAML."""
    from audiossl.data.stats import read_config_yaml

    trainer = read_config_yaml(path).get("trainer")
    steps = trainer.get("max_steps") if isinstance(trainer, dict) else None
    if not isinstance(steps, int):
        raise UserError(f"{path} sets no trainer.max_steps; give --pretrain-steps/--finetune-steps")
    return steps


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
# results.json key -> the table's name for it
MODELS = {"pretrained": "fine-tuned (pretrained)", "scratch": "fine-tuned (scratch)",
          "linear_probe": "linear probe (pretrained)"}


# --- data --------------------------------------------------------------------------------------------------------
def make_data(out: Path, unlabelled: int, labelled: int, eval_clips: int, workers: int) -> tuple[str, str]:
    from audiossl.data.writer import WriterOptions
    from data_prep.synth import convert

    pool, lab = out / "data" / "unlabelled", out / "data" / "labelled"
    convert(str(pool), num_clips=unlabelled, eval_clips=1, seed=0, options=WriterOptions(workers=workers))
    convert(str(lab), num_clips=labelled, eval_clips=eval_clips, seed=1, options=WriterOptions(workers=workers))
    return str(pool), str(lab)


def assign_splits(rows: list, eval_fraction: float, seed: int) -> tuple[list[str], str]:
    """The split of every row: the CSV's own when some row says ``eval``; otherwise a seeded split stratified by the
    label set (each label set with at least 2 rows puts ``round(fraction * n)`` of them, at least one and at most
    ``n - 1``, into ``eval``). Returns (splits in row order, how they were chosen)."""
    import numpy as np

    if any(r.split == "eval" for r in rows):
        return [r.split for r in rows], "the CSV's split column"
    others = sorted({r.split for r in rows} - {"train"})
    if others:
        raise UserError(f"the CSV's split column names {others} but no 'eval' split: call the evaluation rows 'eval' "
                        "(or leave the column out for a seeded 80/20 split)")
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be between 0 and 1, got {eval_fraction}")
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(sorted(r.labels)), []).append(i)
    splits = ["train"] * len(rows)
    rng = np.random.default_rng(seed)
    for key in sorted(groups):
        idx = groups[key]
        if len(idx) < 2:
            continue
        n_eval = min(len(idx) - 1, max(1, int(round(eval_fraction * len(idx)))))
        for i in rng.permutation(idx)[:n_eval]:
            splits[int(i)] = "eval"
    if "eval" not in splits:
        raise UserError(f"{len(rows)} rows and no label occurs twice: nothing can be held out for evaluation; give "
                        "the CSV a split column (train/eval)")
    return splits, f"a seeded split stratified by label ({eval_fraction:.0%} eval, seed {seed})"


def prepare_csv(csv_path: str, audio_root: str, out: Path, eval_fraction: float, seed: int,
                workers: int) -> tuple[str, dict]:
    """The user's CSV -> ``OUT/data/clips.csv`` (with splits, seeded shuffled order) -> shards in
    ``OUT/data/labelled``. Returns (dataset folder, what was done)."""
    import numpy as np

    from audiossl.data.manifest import read_manifest
    from audiossl.data.writer import WriterOptions
    from data_prep.folder import convert, read_rows

    rows = read_rows(csv_path)
    if not any(r.labels for r in rows):
        raise UserError(f"{csv_path} has no labels: the demo fine-tunes and evaluates a classifier, so its rows need "
                        "a labels column (';'-separated class names)")
    splits, how = assign_splits(rows, eval_fraction, seed)
    root = Path(audio_root).resolve()
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    ours = data / "clips.csv"
    order = np.random.default_rng(seed).permutation(len(rows))
    with open(ours, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "split"])
        for i in order:
            r = rows[int(i)]
            w.writerow([r.path, ";".join(r.labels), splits[int(i)]])
    lab = data / "labelled"
    report = convert(str(ours), str(root), str(lab), options=WriterOptions(workers=workers))
    m = read_manifest(lab)
    for split in ("train", "eval"):
        if split not in m.splits or m.split(split).samples == 0:
            raise UserError(f"{csv_path}: no readable clip in the {split} split (see {lab}/rejected.tsv)")
    info = {"csv": str(csv_path), "audio_root": str(root), "splits_from": how, "prep_csv": str(ours),
            "train_clips": m.split("train").samples, "eval_clips": m.split("eval").samples,
            "classes": m.num_classes, "multi_label": bool(m.multi_label), "rejected": len(report.rejected)}
    print(f"prepared {info['train_clips']} training and {info['eval_clips']} evaluation clips, {info['classes']} "
          f"classes ({'multi' if info['multi_label'] else 'single'}-label); splits from {how}")
    return str(lab), info


def compute_stats(data: str, cfg: Path) -> dict:
    """fbank mean/std of the training clips with ``cfg``'s front end (mel bins, hop), into the manifest."""
    from audiossl.data.stats import compute_stats as run, config_front_end, write_stats

    fe = config_front_end(cfg)
    stats = run(data, "train", front_end=fe)
    write_stats(data, stats)
    print(f"fbank statistics of the training clips ({fe.num_mel_bins} mel bins, {fe.frame_shift:g} ms hop): mean "
          f"{stats['mean']:.3f}, std {stats['std']:.3f}")
    return stats


def scratch_encoder(ckpt: str) -> str:
    """The ``--model.encoder`` of the from-scratch run: the pretrained encoder's architecture (block style, sizes,
    positions) as a JSON spec, so the two fine-tuning runs differ in their initial weights only."""
    from audiossl.hub.reader import read_checkpoint

    return json.dumps(read_checkpoint(ckpt)["audiossl"]["encoder"])


# --- models ------------------------------------------------------------------------------------------------------
def baseline(labelled: str) -> dict:
    from audiossl.tasks.logreg_baseline import logreg_baseline

    r = logreg_baseline(labelled)
    print(f"logistic regression on {r['features']}: eval accuracy {r['accuracy']:.3f}, mAP {r['mAP']:.3f}, "
          f"mAUC {r['mAUC']:.3f}")
    return r


def _log_every(steps: int) -> int:
    return max(1, min(10, steps // 10))


def pretrain(cfg: Path, data: str, root: Path, steps: int, workers: int) -> str:
    from audiossl.cli.train import pretrain as run

    run(["--config", str(cfg), "--data.root", data, "--trainer.max_steps", str(steps),
         "--trainer.default_root_dir", str(root), "--checkpoint_every_n_steps", str(steps),
         "--trainer.log_every_n_steps", str(_log_every(steps)), "--data.num_workers", str(workers)])
    return str(root / "checkpoints" / "last.ckpt")


def finetune(cfg: Path, data: str, root: Path, steps: int, workers: int, *extra: str) -> str:
    from audiossl.cli.train import finetune as run

    run(["--config", str(cfg), "--data.root", data, "--trainer.max_steps", str(steps),
         "--trainer.val_check_interval", str(steps), "--trainer.default_root_dir", str(root),
         "--checkpoint_every_n_steps", str(steps), "--trainer.log_every_n_steps", str(_log_every(steps)),
         "--data.num_workers", str(workers), *extra])
    return str(root / "checkpoints" / "last.ckpt")


def evaluate_all(runs: dict[str, str], data: str, out: Path) -> dict[str, dict]:
    from audiossl.hub.reader import classifier_from_checkpoint
    from audiossl.data import AudioDataModule
    from audiossl.tasks.evaluate import evaluate

    results = {}
    for key, ckpt in runs.items():
        dm = AudioDataModule(data, num_workers=0, batch_size=64)
        m = evaluate(classifier_from_checkpoint(ckpt), dm, out / "eval" / key, progress=False)
        results[key] = {k: m[k] for k in ("accuracy", "mAP", "mAUC", "d_prime", "num_clips")}
        print(f"{MODELS[key]:>26}: accuracy {m['accuracy']:.3f}  mAP {m['mAP']:.3f}  mAUC {m['mAUC']:.3f}  "
              f"d' {m['d_prime']:.2f}  ({m['num_clips']} clips)")
    return results


def export_and_plot(ckpt: str, labelled: str, out: Path) -> dict:
    import soundfile as sf

    from audiossl.frontend import audio
    from audiossl.data.manifest import read_manifest
    from audiossl.data.pipeline import read_shard
    from audiossl.hub.export import export_checkpoint, load_model
    from audiossl.cli.plot import plot_predictions, plot_training_curves

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


# --- results -----------------------------------------------------------------------------------------------------
def table(summary: dict, times: dict[str, float]) -> str:
    """The results table: one row per model with the minutes of its own stage."""
    stage_of = {"baseline": "baseline", "pretrained": "finetune: from the pretrained encoder",
                "scratch": "finetune: from scratch", "linear_probe": "finetune: linear probe"}
    names = {"baseline": "mean log-mel + logistic regression", **MODELS}
    lines = ["| model | accuracy | mAP | mAUC | minutes |", "|---|---:|---:|---:|---:|"]
    for key in ("baseline", "pretrained", "scratch", "linear_probe"):
        r = summary[key]
        minutes = next((v for k, v in times.items() if k.startswith(stage_of[key])), 0.0) / 60
        lines.append(f"| {names[key]} | {r['accuracy']:.3f} | {r['mAP']:.3f} | {r['mAUC']:.3f} | {minutes:.1f} |")
    return "\n".join(lines)


def stage_table(times: dict[str, float]) -> str:
    lines = ["| stage | minutes |", "|---|---:|"]
    lines += [f"| {name} | {sec / 60:.2f} |" for name, sec in times.items()]
    lines.append(f"| total | {sum(times.values()) / 60:.2f} |")
    return "\n".join(lines)


def _metrics(r: dict) -> dict:
    return {k: r[k] for k in ("accuracy", "mAP", "mAUC", "d_prime") if k in r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audiossl demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    own = p.add_argument_group("your own data (instead of the synthetic corpus)")
    own.add_argument("--csv", default=None, help="CSV of labelled clips: path,labels[,split] (the prep folder format)")
    own.add_argument("--audio-root", default=None, help="folder the CSV paths are relative to (default: the CSV's)")
    own.add_argument("--eval-fraction", type=float, default=0.2,
                     help="without eval rows in the CSV: share held out, stratified by label (default 0.2)")
    own.add_argument("--stats", action=argparse.BooleanOptionalAction, default=None,
                     help="normalise with the training clips' fbank mean/std (audiossl stats) instead of AudioSet's "
                          "(default with --csv; --no-stats keeps AudioSet's)")
    syn = p.add_argument_group("the synthetic corpus")
    syn.add_argument("--unlabelled-clips", type=int, default=2000)
    syn.add_argument("--labelled-clips", type=int, default=400)
    syn.add_argument("--eval-clips", type=int, default=400)
    rec = p.add_argument_group("recipe")
    rec.add_argument("--objective", choices=OBJECTIVES, default=None,
                     help="pretraining objective: configs/pretrain/<objective>_<recipe>.yaml (default eat; mae with "
                          "--csv, the one that helped on the speech benchmark in the least time, see the README)")
    rec.add_argument("--recipe", choices=RECIPES, default=None,
                     help="tiny (the synthetic corpus' 2 s clips; its default) or small (short real recordings: "
                          "64 mel bins at a 2.5 ms hop, a 192-wide encoder; the default with --csv)")
    rec.add_argument("--pretrain-config", default=None, help="pretraining YAML (overrides --objective's)")
    rec.add_argument("--finetune-config", default=None, help="fine-tuning YAML (default configs/finetune/<recipe>.yaml)")
    rec.add_argument("--pretrain-steps", type=int, default=None,
                     help="default: 600 (tiny) or the pretraining config's max_steps")
    rec.add_argument("--finetune-steps", type=int, default=None,
                     help="default: 300 (tiny) or the fine-tuning config's max_steps")
    rec.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split and of the prep order (--csv)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes that build the corpus (training uses one data worker beside the main process)")
    args = p.parse_args(argv)

    out = Path(args.out)
    cfg = _configs_dir()
    if args.csv is None and (args.audio_root or args.stats is not None):
        raise UserError("--audio-root and --stats go with --csv (your own data)")
    args.recipe = args.recipe or ("small" if args.csv else "tiny")
    args.objective = args.objective or ("mae" if args.csv else "eat")
    args.stats = bool(args.csv) and args.stats is not False
    pre_cfg = (Path(args.pretrain_config) if args.pretrain_config
               else cfg / "pretrain" / f"{args.objective}_{args.recipe}.yaml")
    ft_cfg = Path(args.finetune_config) if args.finetune_config else cfg / "finetune" / f"{args.recipe}.yaml"
    for path in (pre_cfg, ft_cfg):
        if not path.is_file():
            raise UserError(f"config {path} does not exist")
    tiny = args.recipe == "tiny"
    if args.pretrain_steps is None:
        args.pretrain_steps = 600 if tiny else config_steps(pre_cfg)
    if args.finetune_steps is None:
        args.finetune_steps = 300 if tiny else config_steps(ft_cfg)
    if args.pretrain_steps < 1 or args.finetune_steps < 1:
        raise UserError("--pretrain-steps and --finetune-steps must be >= 1")
    for run in DEMO_RUNS:  # the demo always trains afresh: its own run folders (and nothing else) are replaced
        if (out / "runs" / run).is_dir():
            print(f"audiossl demo: replacing the previous demo run {out / 'runs' / run}", file=sys.stderr)
            shutil.rmtree(out / "runs" / run)
    S = Stages()
    data_info: dict = {}
    if args.csv:
        audio_root = args.audio_root or str(Path(args.csv).resolve().parent)
        lab, data_info = S.run("data: your CSV", prepare_csv, args.csv, audio_root, out, args.eval_fraction,
                               args.seed, args.workers)
        pool = lab  # pretraining reads the training split's audio; its labels are not used
        if args.stats:
            data_info["stats"] = S.run("stats: fbank mean/std of the training clips", compute_stats, lab, pre_cfg)
    else:
        pool, lab = S.run("data: synthetic corpus", make_data, out, args.unlabelled_clips, args.labelled_clips,
                          args.eval_clips, args.workers)
    base = S.run("baseline: logistic regression on mean log-mel", baseline, lab)
    pre = S.run(f"pretrain: {pre_cfg.stem} on the {'training clips' if args.csv else 'unlabelled pool'}", pretrain,
                pre_cfg, pool, out / "runs" / "pretrain", args.pretrain_steps, 1)
    runs = {}
    runs["pretrained"] = S.run("finetune: from the pretrained encoder", finetune, ft_cfg, lab,
                               out / "runs" / "finetune" / "pretrained", args.finetune_steps, 1,
                               "--model.init_from", pre)
    runs["scratch"] = S.run("finetune: from scratch, same budget", finetune, ft_cfg, lab,
                            out / "runs" / "finetune" / "scratch", args.finetune_steps, 1,
                            "--model.encoder", scratch_encoder(pre))
    runs["linear_probe"] = S.run(
        "finetune: linear probe on the frozen pretrained encoder", finetune, ft_cfg, lab,
        out / "runs" / "finetune" / "linear_probe", args.finetune_steps, 1, "--model.init_from", pre,
        "--model.freeze_encoder", "true", "--model.pool", "mean", "--model.lr", "1e-2", "--model.mixup", "0",
        "--model.specaug_ratio", "0", "--model.drop_path", "0", "--model.layer_decay", "1.0")
    results = S.run("evaluate", evaluate_all, runs, lab, out)
    example = S.run("export + plots", export_and_plot, runs["pretrained"], lab, out)

    summary = {"baseline": {**_metrics(base), "features": base["features"], "num_train": base["num_train"],
                            "num_eval": base["num_eval"]}}
    summary.update({k: results[k] for k in MODELS})
    md = table(summary, S.times)
    gain = {m: results["pretrained"][m] - results["scratch"][m] for m in ("accuracy", "mAP")}
    summary.update({
        "pretraining_gain": gain,
        "settings": {**vars(args), "pretrain_config": str(pre_cfg), "finetune_config": str(ft_cfg)},
        "data": data_info or {"corpus": "synthetic", "unlabelled_clips": args.unlabelled_clips,
                              "labelled_clips": args.labelled_clips, "eval_clips": args.eval_clips},
        "stage_seconds": S.times,
        "total_seconds": S.total,
        "example": example,
    })
    from audiossl.tasks.evaluate import json_safe

    (out / "results.json").write_text(json.dumps(json_safe(summary), indent=2, default=str, allow_nan=False) + "\n")
    if args.csv:
        what = (f"{data_info['train_clips']} training and {data_info['eval_clips']} evaluation clips of "
                f"{args.csv} ({data_info['classes']} classes; splits from {data_info['splits_from']}); pretraining "
                f"{pre_cfg.stem} on the training clips ({args.pretrain_steps} steps)")
    else:
        what = (f"{args.unlabelled_clips} unlabelled clips for pretraining {pre_cfg.stem} ({args.pretrain_steps} "
                f"steps), {args.labelled_clips} labelled clips for fine-tuning, {args.eval_clips} eval clips")
    (out / "results.md").write_text(
        f"# audiossl demo\n\n{what}; fine-tuning {ft_cfg.stem} ({args.finetune_steps} steps each).\n\n{md}\n\n"
        f"Minutes per stage:\n\n{stage_table(S.times)}\n"
    )
    print("\n" + md)
    print(f"\npretraining gain: {gain['accuracy']:+.3f} accuracy, {gain['mAP']:+.3f} mAP (fine-tuned from the "
          "pretrained encoder minus from scratch)")
    print(f"outputs in {out}/: results.md, results.json, eval/, model/, plots/, runs/ (TensorBoard logs)")
    print(f"total {S.total / 60:.1f} min: " + ", ".join(f"{k.split(':')[0]} {v:.0f}s" for k, v in S.times.items()))
    if gain["mAP"] <= 0:
        print("warning: pretraining did not help in this run; see README 'The demo' for longer settings",
              file=sys.stderr)
    return 0
