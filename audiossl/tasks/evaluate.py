"""``audiossl evaluate``: score a fine-tuned model on a dataset split, every clip exactly once.

    audiossl evaluate --ckpt_path CKPT_OR_EXPORT_DIR --data.root DIR [--data.eval_split eval | --data.eval_fold K] --out OUT
        [--best_ckpt_path RUN/checkpoints/best.ckpt]

Writes ``OUT/metrics.json`` (``mAP``, ``mAUC``, ``d_prime``, ``accuracy``, ``num_clips``, ...; ``null`` for a metric the
data leaves undefined),
``OUT/predictions.npz`` (``keys``, ``scores``, ``targets``) and ``OUT/per_class.csv`` (index, name, AP, AUC,
positives). Scores are sigmoid outputs for multi-label data and softmax outputs otherwise.

``--best_ckpt_path`` (fine-tuning keeps ``best.ckpt``, the step with the highest in-training validation score) also
scores that checkpoint, into ``OUT/best/``, and adds it to ``OUT/metrics.json`` under ``best_test_selected``: the
references' headline numbers are of this kind (EAT/SSLAM keep the best checkpoint on the AudioSet eval set, AudioMAE
prints "Max mAP", AST picks the ESC-50 epoch on the test folds), but a checkpoint chosen on the very data it is
scored on is an optimistic estimate. The top-level numbers stay the ``--ckpt_path`` (last) checkpoint's.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audiossl.data.storage import output_dir
from audiossl.errors import DatasetError, UserError, resolve_device
from audiossl.tasks.metrics import classification_metrics


def load_classifier(path: str):
    """A classifier from a fine-tuning checkpoint or an export directory."""
    p = Path(path)
    if p.is_dir():
        from audiossl.hub.export import load_model

        model = load_model(p)
    else:
        from audiossl.hub.reader import classifier_from_checkpoint

        model = classifier_from_checkpoint(p)
    if not model.has_head:
        raise UserError(f"{path} is an encoder-only model (exported from pretraining, no classifier head): fine-tune "
                        f"it first with `audiossl finetune --model.init_from CKPT`, then evaluate that checkpoint")
    return model


@torch.no_grad()
def predict_split(model, loader, device: torch.device, progress: bool = True) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Run ``model`` over every batch of ``loader``: (keys, scores ``[N, C]``, targets)."""
    model = model.to(device).eval()
    keys, scores, targets = [], [], []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        n = batch.get("num_samples")
        logits = model.logits_from_audio(batch["audio"].to(device).float(), None if n is None else n.to(device)).float()
        s = torch.sigmoid(logits) if model.multi_label else torch.softmax(logits, dim=-1)
        scores.append(s.cpu())
        targets.append(batch["target"].cpu())
        keys.extend(batch["key"])
    if not scores:
        raise DatasetError("the evaluation set is empty")
    return keys, torch.cat(scores), torch.cat(targets)


def json_safe(v):
    """Strict-JSON values: NaN (a metric undefined on this data, e.g. mAUC when no class has both positives and
    negatives) and infinities (d' of a perfect ranking, AUC 1) -> None (null), through dicts and lists."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_outputs(out: Path, metrics: dict, keys, scores, targets, label_names) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: json_safe(v) for k, v in metrics.items() if not k.startswith("per_class")}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    np.savez(out / "predictions.npz", keys=np.array(keys), scores=scores.numpy(), targets=targets.numpy())
    t = targets
    if t.dim() == 1:
        t = torch.nn.functional.one_hot(t.long(), scores.shape[1])
    positives = (t > 0.5).sum(dim=0).tolist()
    with open(out / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "name", "ap", "auc", "positives"])
        for i, name in enumerate(label_names):
            w.writerow([i, name, metrics["per_class_ap"][i], metrics["per_class_auc"][i], positives[i]])


def evaluate(model, datamodule, out: str | os.PathLike, device: str = "auto", progress: bool = True) -> dict:
    """Evaluate ``model`` on ``datamodule``'s evaluation set and write the three outputs; returns the metrics."""
    if list(model.label_names) != list(datamodule.label_names):
        raise UserError(
            f"the model's {len(model.label_names)} labels do not match the dataset's "
            f"{datamodule.num_classes} (first differences: "
            f"{[(a, b) for a, b in zip(model.label_names, datamodule.label_names) if a != b][:3]})"
        )
    from audiossl.objectives.base import check_sample_rate

    check_sample_rate(datamodule.sample_rate, model.front_end.config, f"the dataset {datamodule.root}")
    if not datamodule.has_eval:
        raise DatasetError(f"{datamodule.root} has no evaluation split; set --data.eval_split or --data.eval_fold")
    dev = resolve_device(device)
    out = output_dir(out)
    datamodule.setup("validate")
    keys, scores, targets = predict_split(model, datamodule.val_dataloader(), dev, progress)
    if len(set(keys)) != len(keys):
        raise RuntimeError("the evaluation stream repeated clips; refusing to report metrics")
    metrics = classification_metrics(scores, targets)
    metrics["split"] = datamodule.eval_split if datamodule.eval_fold is None else f"fold {datamodule.eval_fold}"
    write_outputs(out, metrics, keys, scores, targets, model.label_names)
    return metrics


SELECTION_NOTE = ("TEST-SELECTED: the checkpoint with the highest in-training validation score on this same evaluation "
                  "data (as EAT/SSLAM/AudioMAE/AST report); optimistic, not a held-out estimate")
HEADLINE = ("mAP", "mAUC", "d_prime", "accuracy", "num_clips")


def checkpoint_step(path) -> int | None:
    """The optimizer step a Lightning checkpoint was written at (``None`` for an export directory)."""
    if Path(path).is_dir():
        return None
    from audiossl.hub.reader import safe_torch_load

    step = safe_torch_load(path, mmap=True).get("global_step")
    return int(step) if step is not None else None


def label_checkpoints(out: Path, ckpt_path: str, best: dict | None = None, best_path: str | None = None) -> dict:
    """Add to ``out/metrics.json`` which checkpoint its numbers are from (``checkpoint``: path, step, no selection)
    and, with ``best``, the test-selected checkpoint's headline numbers under ``best_test_selected``."""
    summary = json.loads((out / "metrics.json").read_text())
    summary["checkpoint"] = {"path": str(ckpt_path), "step": checkpoint_step(ckpt_path),
                             "selection": "none (the checkpoint given, normally the last)"}
    if best is not None:
        summary["best_test_selected"] = {**{k: json_safe(best[k]) for k in HEADLINE}, "path": str(best_path),
                                         "step": checkpoint_step(best_path), "selection": SELECTION_NOTE}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def main(argv: list[str]) -> int:
    from jsonargparse import ArgumentParser

    from audiossl.data import AudioDataModule

    p = ArgumentParser(prog="audiossl evaluate", description=__doc__)
    p.add_argument("--ckpt_path", required=True, help="fine-tuning checkpoint (.ckpt) or export directory")
    p.add_argument("--best_ckpt_path", default=None,
                   help="also score this (test-selected) checkpoint, e.g. RUN/checkpoints/best.ckpt, into OUT/best")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_class_arguments(AudioDataModule, "data")
    cfg = p.parse_args(argv)
    output_dir(cfg.out, create=False)  # a file in the way fails before the model and the data are loaded
    resolve_device(cfg.device)
    model = load_classifier(cfg.ckpt_path)
    data_kwargs = {k: v for k, v in vars(cfg.data).items() if not k.startswith("__")}
    dm = AudioDataModule(**data_kwargs)
    best_model = load_classifier(cfg.best_ckpt_path) if cfg.best_ckpt_path else None
    evaluate(model, dm, cfg.out, cfg.device)
    b = evaluate(best_model, dm, Path(cfg.out) / "best", cfg.device) if best_model is not None else None
    summary = label_checkpoints(Path(cfg.out), cfg.ckpt_path, b, cfg.best_ckpt_path)
    shown = {k: summary[k] for k in (*HEADLINE, "split")}
    if b is not None:
        shown["best_test_selected"] = summary["best_test_selected"]
    print(json.dumps(shown, indent=2))
    print(f"wrote {cfg.out}/metrics.json, predictions.npz, per_class.csv" + (" (+ best/)" if best_model else ""),
          file=sys.stderr)
    return 0
