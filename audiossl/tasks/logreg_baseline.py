"""The simple baseline of every learning claim: logistic regression on each clip's mean log-mel spectrum.

For any prepared dataset folder (``audiossl prep ...``): every clip's kaldi fbank (the models' front end, 128 mel
bins, over the clip's real frames only — no padding, no crop) averaged over time gives 128 numbers; they are
standardised with the training set's mean and standard deviation, and scikit-learn's ``LogisticRegression`` is fit on
the training split and scored on the evaluation split.

* single-label data: one multinomial model; scores are its class probabilities;
* multi-label data: one binary model per class (a class with one value in training gets that value as its score).

Metrics are :func:`audiossl.tasks.metrics.classification_metrics` of the scores (``accuracy``, ``mAP``, ``mAUC``,
``d_prime``), so they are comparable with ``audiossl evaluate``. ``temporal=True`` adds time statistics to the
features (per-band standard deviation, mean absolute frame difference, modulation energy, a time-frequency tilt):
a linear model that sees some time structure.

    python -m audiossl.tasks.logreg_baseline DIR [--temporal]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from audiossl.errors import DatasetError


def fbank_features(fb: torch.Tensor, temporal: bool = False) -> torch.Tensor:
    """One clip's log-mel ``[T, F]`` (float64) -> its feature vector: ``[F]`` mean (plus time statistics)."""
    row = [fb.mean(0)]
    if temporal:
        act = (fb - fb.median(0).values).clamp_min(0)  # energy above each band's floor [T, F]
        row += [fb.std(0), (fb[1:] - fb[:-1]).abs().mean(0)]
        # modulation energy per 16-band group at 2-8, 8-18, 18-40 Hz (frame rate 100 Hz)
        spec = torch.fft.rfft(act - act.mean(0), dim=0).abs() ** 2  # [T/2+1, F]
        hz = torch.fft.rfftfreq(act.shape[0], 0.01)
        groups = max(1, fb.shape[1] // 16)
        for lo, hi in ((2, 8), (8, 18), (18, 40)):
            band = spec[(hz >= lo) & (hz < hi)].sum(0)  # [F]
            row.append(torch.log1p(band[: groups * 16].view(groups, -1).sum(1)))
        t = torch.arange(act.shape[0], dtype=torch.float64)[:, None]
        f = torch.arange(act.shape[1], dtype=torch.float64)[None, :]
        w = act / (act.sum() + 1e-9)
        ct, cf = (w * t).sum(), (w * f).sum()
        row.append(torch.stack([((w * (t - ct) * (f - cf)).sum()) / 100.0]))  # time-frequency tilt
    return torch.cat(row)


def clip_features(root: str, split: str, temporal: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per clip of ``split``: features ``[N, D]``, multi-hot targets ``[N, C]`` and the sample keys."""
    from audiossl.frontend import audio
    from audiossl.data.manifest import read_manifest
    from audiossl.data.pipeline import read_shard
    from audiossl.frontend.features import kaldi_fbank, num_frames

    m = read_manifest(root)
    rate = m.sample_rate or 16000
    feats, targets, keys = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-clip ops: threads only add overhead (and crawl on a busy machine)
    try:
        for shard in m.split(split).shards:
            for key, _, members in read_shard(f"{root}/{shard.path}"):
                wave = audio.load(members["flac"], rate)
                if num_frames(wave.shape[-1], rate) < 2:
                    raise DatasetError(f"{root}: clip {key} of split {split!r} is shorter than two fbank frames")
                fb = kaldi_fbank(wave, rate).double()  # [T, 128]
                feats.append(fbank_features(fb, temporal).numpy())
                y = np.zeros(m.num_classes, dtype=np.float32)
                y[json.loads(members["json"])["label_idx"]] = 1
                targets.append(y)
                keys.append(key)
    finally:
        torch.set_num_threads(threads)
    if not feats:
        raise DatasetError(f"{root}: split {split!r} holds no clips")
    return np.stack(feats), np.stack(targets), keys


def fit_and_score(xtr: np.ndarray, ytr: np.ndarray, xev: np.ndarray, multi_label: bool, seed: int = 0,
                  C: float = 1.0) -> np.ndarray:
    """Standardise, fit logistic regression on (``xtr [N, D]``, multi-hot ``ytr [N, C]``), return eval scores
    ``[M, C]`` (probabilities)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    xtr, xev = scaler.transform(xtr), scaler.transform(xev)
    num_classes = ytr.shape[1]
    if not multi_label:
        labels = ytr.argmax(1)
        clf = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(xtr, labels)
        scores = np.zeros((len(xev), num_classes))
        scores[:, clf.classes_] = clf.predict_proba(xev)  # classes absent from training keep score 0
        return scores
    scores = np.zeros((len(xev), num_classes))
    for c in range(num_classes):
        if ytr[:, c].min() == ytr[:, c].max():
            scores[:, c] = ytr[0, c]
            continue
        clf = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(xtr, ytr[:, c])
        scores[:, c] = clf.predict_proba(xev)[:, 1]
    return scores


def logreg_baseline(root: str, train_split: str = "train", eval_split: str | None = None, temporal: bool = False,
                    seed: int = 0, C: float = 1.0) -> dict:
    """Logistic regression on mean log-mel (``temporal``: plus time statistics), fit on ``train_split`` and scored on
    ``eval_split`` (default: the manifest's evaluation split). Returns ``{"accuracy", "mAP", "mAUC", "d_prime",
    "per_class_ap": {name: AP}, "features", "num_train", "num_eval", "multi_label", "seconds"}``."""
    import time

    from audiossl.data.manifest import read_manifest
    from audiossl.tasks.metrics import classification_metrics

    t0 = time.perf_counter()
    m = read_manifest(root)
    eval_split = eval_split or m.evaluation_split()
    if eval_split is None:
        raise DatasetError(f"{root} has no evaluation split; give eval_split")
    xtr, ytr, _ = clip_features(root, train_split, temporal)
    xev, yev, _ = clip_features(root, eval_split, temporal)
    scores = fit_and_score(xtr, ytr, xev, m.multi_label, seed, C)
    targets = torch.from_numpy(yev) if m.multi_label else torch.from_numpy(yev.argmax(1))
    r = classification_metrics(torch.from_numpy(scores), targets)
    names = m.labels.names
    return {
        "accuracy": r["accuracy"],
        "mAP": r["mAP"],
        "mAUC": r["mAUC"],
        "d_prime": r["d_prime"],
        "per_class_ap": {names[c]: ap for c, ap in enumerate(r["per_class_ap"]) if ap == ap},
        "features": "mean log-mel + time statistics" if temporal else "mean log-mel",
        "multi_label": bool(m.multi_label),
        "num_train": int(len(xtr)),
        "num_eval": int(len(xev)),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m audiossl.tasks.logreg_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="a prepared dataset folder (manifest.json + shards)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default=None)
    p.add_argument("--temporal", action="store_true", help="add time statistics to the features")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    r = logreg_baseline(args.root, args.train_split, args.eval_split, args.temporal, args.seed)
    print(json.dumps({k: v for k, v in r.items() if k != "per_class_ap"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
