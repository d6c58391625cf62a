"""``audiossl evaluate``: score a fine-tuned model on a dataset split, every clip exactly once.

    audiossl evaluate --ckpt_path CKPT_OR_EXPORT_DIR --data.root DIR [--data.eval_split eval | --data.eval_fold K] --out OUT

Writes ``OUT/metrics.json`` (``mAP``, ``mAUC``, ``d_prime``, ``accuracy``, ``num_clips``, ...; ``null`` for a metric the
data leaves undefined),
``OUT/predictions.npz`` (``keys``, ``scores``, ``targets``) and ``OUT/per_class.csv`` (index, name, AP, AUC,
positives). Scores are sigmoid outputs for multi-label data and softmax outputs otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audiossl.errors import DatasetError, UserError, output_dir, resolve_device
from audiossl.metrics import classification_metrics


def load_classifier(path: str):
    """A classifier from a fine-tuning checkpoint or an export directory."""
    p = Path(path)
    if p.is_dir():
        from audiossl.export import load_model

        model = load_model(p)
    else:
        from audiossl.checkpoint import classifier_from_checkpoint

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


def _json_number(v):
    """NaN (a metric undefined on this data, e.g. mAUC when no class has both positives and negatives) -> null."""
    return None if isinstance(v, float) and v != v else v


def write_outputs(out: Path, metrics: dict, keys, scores, targets, label_names) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: _json_number(v) for k, v in metrics.items() if not k.startswith("per_class")}
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


def main(argv: list[str]) -> int:
    from jsonargparse import ArgumentParser

    from audiossl.data import AudioDataModule

    p = ArgumentParser(prog="audiossl evaluate", description=__doc__)
    p.add_argument("--ckpt_path", required=True, help="fine-tuning checkpoint (.ckpt) or export directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_class_arguments(AudioDataModule, "data")
    cfg = p.parse_args(argv)
    output_dir(cfg.out, create=False)  # a file in the way fails before the model and the data are loaded
    resolve_device(cfg.device)
    model = load_classifier(cfg.ckpt_path)
    data_kwargs = {k: v for k, v in vars(cfg.data).items() if not k.startswith("__")}
    dm = AudioDataModule(**data_kwargs)
    m = evaluate(model, dm, cfg.out, cfg.device)
    print(json.dumps({k: m[k] for k in ("mAP", "mAUC", "d_prime", "accuracy", "num_clips", "split")}, indent=2))
    print(f"wrote {cfg.out}/metrics.json, predictions.npz, per_class.csv", file=sys.stderr)
    return 0
