"""Why do the shipped CPU recipes stay at chance on short speech? Measurements on the espeak-ng digit benchmark.

    PYTHONPATH=. python benchmarks/speech_diagnosis.py --work /tmp/speechdiag data      # build, prep, baseline, shards
    PYTHONPATH=. python benchmarks/speech_diagnosis.py --work /tmp/speechdiag input     # what the model sees
    PYTHONPATH=. python benchmarks/speech_diagnosis.py --work /tmp/speechdiag train [RUN ...]   # instrumented runs
    PYTHONPATH=. python benchmarks/speech_diagnosis.py --work /tmp/speechdiag report    # the tables

Nothing here changes a recipe: the runs use ``configs/pretrain/eat_tiny.yaml`` and ``configs/finetune/tiny.yaml``
as shipped (``--data.root``, ``--trainer.max_steps`` and an evaluation every 50 steps are the only overrides), plus
one-change ablations named by what they change. Every run gets :class:`TrainingProbe` (a Lightning callback): per
optimizer step the loss, the unclipped gradient norm per layer, the learning rate each layer actually gets (layer
decay x schedule) and the classes in the batch; per evaluation the accuracy and the predicted-class histogram; at
the end the relative weight change per layer. Results land in ``WORK/diagnosis.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


# --- the probe ---------------------------------------------------------------------------------------------------
def layer_of(name: str) -> str:
    """A parameter name -> its layer: patch_embed, blocks.I (encoder), norms/tokens, head, decoder, other."""
    if "teacher" in name or "ema" in name.split(".")[0]:
        return "teacher"
    m = re.search(r"encoder\.blocks\.(\d+)\.", name)
    if m:
        return f"blocks.{m.group(1)}"
    for key in ("patch_embed", "decoder", "predictor", "head"):
        if key in name:
            return key
    if re.search(r"encoder\.(prefix_tokens|pos_table|mask_token)", name):
        return "tokens"
    if re.search(r"encoder\.(pre_norm|norm)\.", name):
        return "encoder_norms"
    return "other"


class TrainingProbe(L.Callback):
    """Writes one JSON line per optimizer step (and per evaluation) to ``out``."""

    def __init__(self, out: str, lr_every: int = 10):
        self.out = out
        self.lr_every = lr_every
        self._f = None
        self._grad: dict | None = None
        self._w0: dict[str, torch.Tensor] = {}

    def _write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def _named(self, pl_module):
        return [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]

    def on_train_start(self, trainer, pl_module):
        Path(self.out).parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.out, "w")
        by_layer: dict[str, list[torch.Tensor]] = {}
        for n, p in self._named(pl_module):
            by_layer.setdefault(layer_of(n), []).append(p.detach().flatten().clone())
        self._w0 = {k: torch.cat(v) for k, v in by_layer.items()}
        self._names = {id(p): n for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        sq: dict[str, float] = {}
        for n, p in self._named(pl_module):
            if p.grad is not None:
                sq[layer_of(n)] = sq.get(layer_of(n), 0.0) + float(p.grad.detach().float().pow(2).sum())
        rec = {"grad_norm": {k: math.sqrt(v) for k, v in sq.items()}, "grad_norm_total": math.sqrt(sum(sq.values()))}
        step = trainer.global_step
        if step % self.lr_every == 0 or step < 25:
            lr: dict[str, float] = {}
            for g in optimizer.param_groups:
                for p in g["params"]:
                    layer = layer_of(self._names.get(id(p), ""))
                    lr.setdefault(layer, g["lr"])
            rec["lr"] = lr
        self._grad = rec

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        rec = {"kind": "step", "step": trainer.global_step - 1, "loss": float(loss)}
        if self._grad:
            rec.update(self._grad)
            self._grad = None
        t = batch.get("target")
        if t is not None and t.dim() == 1:
            counts = Counter(t.tolist())
            rec["batch_classes"] = len(counts)
            rec["batch_max_share"] = max(counts.values()) / len(t)
        n = batch.get("num_samples")
        if n is not None:
            rec["real_fraction"] = float((n.float() / batch["audio"].shape[1]).mean())
        self._write(rec)

    def on_validation_epoch_end(self, trainer, pl_module):
        scores = getattr(pl_module, "_scores", None)
        if not scores or self._f is None:
            return
        s = torch.cat(scores)
        t = torch.cat(pl_module._targets)
        pred = s.argmax(1)
        hist = torch.bincount(pred, minlength=s.shape[1]).tolist()
        acc = float((pred == t).float().mean()) if t.dim() == 1 else float("nan")
        self._write({"kind": "eval", "step": trainer.global_step, "accuracy": acc, "pred_hist": hist,
                     "mean_max_prob": float(s.max(1).values.mean()),
                     "prob_std_across_clips": float(s.std(0).mean())})  # ~0: the output ignores the input

    def on_train_end(self, trainer, pl_module):
        by_layer: dict[str, list[torch.Tensor]] = {}
        for n, p in self._named(pl_module):
            by_layer.setdefault(layer_of(n), []).append(p.detach().flatten())
        change = {k: float((torch.cat(v) - self._w0[k]).norm() / (self._w0[k].norm() + 1e-12))
                  for k, v in by_layer.items() if k in self._w0}
        self._write({"kind": "end", "step": trainer.global_step, "relative_weight_change": change})
        self._f.close()


# --- phase 1: data -----------------------------------------------------------------------------------------------
def _label_hist(root: Path, names: list[str]) -> list[dict]:
    from audiossl.data.manifest import read_manifest
    from audiossl.data.pipeline import read_shard

    m = read_manifest(root)
    out = []
    for shard in m.split("train").shards:
        c = Counter(json.loads(mem["json"])["labels"][0] for _, _, mem in read_shard(str(root / shard.path)))
        out.append({"shard": shard.path, "clips": sum(c.values()), "classes": {k: c[k] for k in names if c[k]}})
    return out


def phase_data(work: Path, state: dict) -> None:
    from audiossl.tasks.logreg_baseline import logreg_baseline
    from audiossl.data.stats import compute_stats
    from audiossl.data.writer import WriterOptions
    from data_prep.folder import convert
    from data_prep.speech import DIGITS, build

    bench = work / "speech"
    t0 = time.perf_counter()
    if not (bench / "clips.csv").is_file():
        build(bench)
    info = json.loads((bench / "build.json").read_text())
    state["build"], state["build_seconds"] = info["counts"], info["build_seconds"]
    rows = list(csv.DictReader(open(bench / "clips.csv")))
    sorted_csv = bench / "clips_class_sorted.csv"  # as a folder listed class by class: digit by digit, train first
    with open(sorted_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "labels", "split"])
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["split"] != "train", DIGITS.index(r["labels"]))))
    for order, path in (("shuffled", bench / "clips.csv"), ("sorted", sorted_csv)):
        convert(str(path), str(bench), str(work / f"shards_{order}"), options=WriterOptions(workers=2, progress=False))
        state.setdefault("shards", {})[order] = _label_hist(work / f"shards_{order}", list(DIGITS))
    state["prep_seconds"] = time.perf_counter() - t0
    t = time.perf_counter()
    base = logreg_baseline(str(work / "shards_shuffled"))
    state["baseline"] = {k: base[k] for k in ("accuracy", "mAP", "mAUC", "num_train", "num_eval")}
    state["baseline"]["seconds"] = time.perf_counter() - t
    st = compute_stats(work / "shards_shuffled", "train", progress=False)  # not written: runs use the shipped norm
    state["data_stats"] = {"mean": st["mean"], "std": st["std"], "frames": st["frames"], "clips": st["clips"]}
    print(json.dumps({k: state[k] for k in ("build", "baseline", "data_stats")}, indent=2))


# --- phase 2: what the model sees --------------------------------------------------------------------------------
def stream_composition(root: Path, batches: int, batch_size: int = 32, shuffle_buffer: int = 500) -> dict:
    """Classes per training batch as ``configs/finetune/tiny.yaml``'s loader streams them (one worker)."""
    from audiossl.data import AudioDataModule

    dm = AudioDataModule(str(root), batch_size=batch_size, num_workers=1, clip_seconds=2.0,
                         shuffle_buffer=shuffle_buffer, seed=0)
    dm.setup("fit")
    classes, share, first = [], [], []
    for i, b in enumerate(dm.train_dataloader()):
        if i >= batches:
            break
        c = Counter(b["target"].tolist())
        classes.append(len(c))
        share.append(max(c.values()) / len(b["target"]))
        if i < 8:
            first.append(sorted(c))
    return {"batches": len(classes), "classes_per_batch_mean": float(np.mean(classes)),
            "classes_per_batch_min": int(min(classes)), "max_class_share_mean": float(np.mean(share)),
            "first_batches_classes": first}


def phase_input(work: Path, state: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from audiossl.data import AudioDataModule
    from audiossl.frontend.features import FrontEnd, FrontEndConfig

    state["stream"] = {o: stream_composition(work / f"shards_{o}", 62) for o in ("shuffled", "sorted")}
    dm = AudioDataModule(str(work / "shards_shuffled"), batch_size=32, num_workers=0, clip_seconds=2.0, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    shipped = FrontEnd(FrontEndConfig(target_length=192))  # tiny.yaml: 192 frames, AudioSet mean/std
    ds = state["data_stats"]
    own = FrontEnd(FrontEndConfig(target_length=192, mean=ds["mean"], std=ds["std"]))
    x = shipped(batch["audio"], num_samples=batch["num_samples"])  # [B, 192, 128]
    n = batch["num_samples"]
    real_frames = torch.clamp((n - 400) // 160 + 1, min=0)  # kaldi frames of real audio
    real = torch.arange(192)[None, :] < real_frames[:, None]  # [B, 192]
    real_patches_t = torch.ceil(real_frames / 16).clamp(max=12)  # time patches touching real audio
    xo = own(batch["audio"], num_samples=batch["num_samples"])
    state["input"] = {
        "window_frames": 192, "window_seconds": 192 * 0.01 + 0.015, "clip_seconds_mean": float(n.float().mean() / 16000),
        "real_frame_fraction_mean": float(real.float().mean()),
        "real_frame_fraction_min_max": [float(real.float().mean(1).min()), float(real.float().mean(1).max())],
        "time_patches_with_audio_mean": float(real_patches_t.mean()), "time_patches": 12,
        "shipped_norm": {"mean": shipped.config.mean, "std": shipped.config.std},
        "normalised_real": {"mean": float(x[real].mean()), "std": float(x[real].std())},
        "normalised_padding_value": float(x[~real].mean()),
        "with_data_stats": {"real_mean": float(xo[real].mean()), "real_std": float(xo[real].std()),
                            "padding_value": float(xo[~real].mean())},
    }
    fig, axes = plt.subplots(2, 4, figsize=(16, 6))
    for i, ax in enumerate(axes.flat):
        im = ax.imshow(x[i].T.numpy(), origin="lower", aspect="auto", vmin=-1.5, vmax=1.5, cmap="magma")
        ax.axvline(int(real_frames[i]), color="cyan", lw=1)
        ax.set_title(f"label {dm.label_names[int(batch['target'][i])]}, {int(n[i]) / 16000:.2f} s of 1.93 s",
                     fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="normalised log-mel (shipped mean/std)")
    fig.suptitle("one training batch as finetune/tiny feeds it to the encoder (cyan: end of the real audio)")
    fig.savefig(work / "batch_fbank.png", dpi=70)
    print(json.dumps({k: state[k] for k in ("stream", "input")}, indent=2))


# --- phase 3: instrumented training runs -------------------------------------------------------------------------
FT = str(CONFIGS / "finetune" / "tiny.yaml")
EAT = str(CONFIGS / "pretrain" / "eat_tiny.yaml")

# name -> (data order, pretraining steps (0: from scratch), fine-tuning steps, extra fine-tuning arguments)
RUNS: dict[str, tuple[str, int, int, list[str]]] = {
    "scratch_sorted": ("sorted", 0, 300, []),
    "scratch_shuffled": ("shuffled", 0, 300, []),
    "eat_sorted": ("sorted", 400, 300, []),
    "eat_shuffled": ("shuffled", 400, 300, []),
    # one change each, from scratch on shuffled shards
    "abl_window96": ("shuffled", 0, 300, ["--model.front_end", "{{target_length: 96}}", "--data.clip_seconds", "0.97"]),
    "abl_data_norm": ("shuffled", 0, 300, ["--model.front_end", "{{target_length: 192, mean: {mean}, std: {std}}}"]),
    "abl_no_aug": ("shuffled", 0, 300, ["--model.mixup", "0", "--model.specaug_ratio", "0", "--model.roll", "false"]),
    "abl_mean_pool": ("shuffled", 0, 300, ["--model.pool", "mean"]),
    "abl_no_layer_decay": ("shuffled", 0, 300, ["--model.layer_decay", "1.0"]),
    "abl_pre_ln": ("shuffled", 0, 300, ["--model.encoder", "{{name: vit_tiny, depth: 4, embed_dim: 128, num_heads: 4, "
                                        "block_style: pre}}"]),
    "abl_lr3x": ("shuffled", 0, 300, ["--model.lr", "3e-3", "--model.min_lr", "3e-5"]),
    # the demo's linear-probe settings on the *randomly initialised* encoder (frozen): can the LayerNorm + Linear
    # head read what a standardised logistic regression reads from the same features (``init_probe``)?
    "probe_random_init": ("shuffled", 0, 300, ["--model.freeze_encoder", "true", "--model.pool", "mean",
                                               "--model.lr", "1e-2", "--model.mixup", "0", "--model.specaug_ratio",
                                               "0", "--model.drop_path", "0", "--model.layer_decay", "1.0"]),
    "abl_1500_steps": ("shuffled", 0, 1500, []),
}


def _probe_config(path: Path, out: Path) -> str:
    path.write_text(f"trainer:\n  callbacks:\n    - class_path: benchmarks.speech_diagnosis.TrainingProbe\n"
                    f"      init_args: {{out: {out}}}\n")
    return str(path)


def _clean(root: Path) -> None:
    import shutil

    if root.exists():
        shutil.rmtree(root)


def padding_attention(ckpt: str, data: str, batches: int = 4) -> dict:
    """CLS -> patch attention of a fine-tuned model on evaluation clips: the share that lands on patches holding no
    real audio, per layer, against the share of such patches."""
    from audiossl.hub.reader import classifier_from_checkpoint
    from audiossl.data import AudioDataModule

    model = classifier_from_checkpoint(ckpt).eval()
    enc = model.encoder
    captured: list[torch.Tensor] = []
    hooks = [blk.attn.register_forward_hook(lambda mod, inp, out: captured.append(inp[0])) for blk in enc.blocks]
    dm = AudioDataModule(data, num_workers=0, batch_size=32, clip_seconds=model.front_end.config.target_length / 100)
    dm.setup("validate")
    P = enc.num_prefix_tokens
    shares = [[] for _ in enc.blocks]
    pad_patch_share = []
    with torch.no_grad():
        for i, b in enumerate(dm.val_dataloader()):
            if i >= batches:
                break
            x = model.front_end(b["audio"], num_samples=b["num_samples"])
            captured.clear()
            model(x)
            T = x.shape[1]
            frames = torch.clamp((b["num_samples"] - 400) // 160 + 1, min=0)
            gt = T // 16
            gf = x.shape[2] // 16
            t_real = torch.ceil(frames / 16).clamp(max=gt)  # [B] time patches with audio
            pad = (torch.arange(gt)[None, :] >= t_real[:, None]).repeat_interleave(gf, dim=1)  # [B, gt*gf] time-major
            pad_patch_share.append(pad.float().mean(1))
            for li, (blk, h) in enumerate(zip(enc.blocks, captured)):
                a = blk.attn
                B, N, C = h.shape
                qkv = a.qkv(h).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
                q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
                att = torch.softmax((q[:, :, :P] @ k.transpose(-2, -1)) * a.scale, dim=-1)  # [B, H, P, N]
                cls_to_patch = att[:, :, 0, P:].mean(1)  # [B, N-P]
                shares[li].append((cls_to_patch * pad).sum(1) / cls_to_patch.sum(1))
    for h in hooks:
        h.remove()
    return {"pad_patch_share": float(torch.cat(pad_patch_share).mean()),
            "cls_attention_on_padding_per_layer": [float(torch.cat(s).mean()) for s in shares]}


def _fresh_model(pool: str = "cls", block_style: str = "post", target_length: int = 192, mean=None, std=None):
    """A freshly initialised tiny.yaml classifier (seed 0)."""
    from audiossl.frontend.features import FrontEndConfig
    from audiossl.models.classifier import AudioClassifier, HeadConfig
    from audiossl.models.encoder import encoder_config

    torch.manual_seed(0)
    fe = FrontEndConfig(target_length=target_length, **({} if mean is None else {"mean": mean, "std": std}))
    return AudioClassifier(encoder=encoder_config("vit_tiny", depth=4, embed_dim=128, num_heads=4,
                                                  block_style=block_style),
                           head=HeadConfig(num_classes=10, pool=pool), front_end=fe,
                           label_names=[str(i) for i in range(10)], multi_label=False)


def representation(model, data: str, clips: int = 128, unpadded: bool = False) -> dict:
    """How much the pooled embedding (what the head sees) depends on the input: over ``clips`` evaluation clips, the
    mean pairwise cosine similarity of the pooled embeddings, the share of their variance that lies between the
    classes, and their spread (norm of the per-feature std over the norm of the mean). ``model``: a checkpoint path
    or a classifier. ``unpadded``: each clip alone at its own length (rounded up to whole patches), no padding."""
    from audiossl.hub.reader import classifier_from_checkpoint
    from audiossl.data import AudioDataModule

    if isinstance(model, (str, Path)):
        model = classifier_from_checkpoint(model)
    model.eval()
    dm = AudioDataModule(data, num_workers=0, batch_size=clips,
                         clip_seconds=model.front_end.config.target_length / 100)
    dm.setup("validate")
    b = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        if unpadded:
            rows = []
            for wave, n in zip(b["audio"], b["num_samples"]):
                fb = model.front_end.normalize(model.front_end.fbank(wave[None, : int(n)]))  # [1, T, F]
                rows.append(model.forward_features(fb)[0])
            pooled = torch.cat(rows)
        else:
            pooled, _ = model.forward_features(model.front_end(b["audio"], num_samples=b["num_samples"]))  # [n, D]
    z = torch.nn.functional.normalize(pooled, dim=1)
    n = len(z)
    cos = float(((z @ z.T).sum() - n) / (n * (n - 1)))
    y = b["target"]
    centred = pooled - pooled.mean(0)
    total = float(centred.pow(2).sum())
    between = sum(float((y == c).sum()) * float((pooled[y == c].mean(0) - pooled.mean(0)).pow(2).sum())
                  for c in y.unique())
    return {"mean_cosine_between_clips": cos, "between_class_variance_share": between / max(total, 1e-12),
            "embedding_std_over_norm": float(pooled.std(0).norm() / pooled.mean(0).norm().clamp_min(1e-12))}


def init_probe(data: str, max_train: int = 2000, model=None) -> dict:
    """Logistic regression (standardised) on a frozen encoder's embeddings (default: freshly initialised): how much
    of the word the head could read at step 0 through each pooling: CLS, mean of all patch tokens (padding
    included), mean of the patch tokens that hold real audio."""
    from audiossl.tasks.logreg_baseline import fit_and_score
    from audiossl.data import AudioDataModule

    model = (model or _fresh_model()).eval()
    P = model.encoder.num_prefix_tokens
    feats: dict[str, dict[str, list]] = {}
    for split in ("train", "eval"):
        dm = AudioDataModule(data, num_workers=0, batch_size=100, clip_seconds=1.92, eval_split=split)
        dm.setup("validate")
        rows: dict[str, list] = {"cls": [], "mean_all": [], "mean_real": [], "y": []}
        with torch.no_grad():
            for b in dm.val_dataloader():
                x = model.front_end(b["audio"], num_samples=b["num_samples"])
                tok = model.encoder(x)  # [B, 1 + 96, D]
                frames = torch.clamp((b["num_samples"] - 400) // 160 + 1, min=0)
                t_real = torch.ceil(frames / 16).clamp(max=12)
                real = (torch.arange(12)[None, :] < t_real[:, None]).repeat_interleave(8, dim=1).float()  # [B, 96]
                rows["cls"].append(tok[:, 0])
                rows["mean_all"].append(tok[:, P:].mean(1))
                rows["mean_real"].append((tok[:, P:] * real[..., None]).sum(1) / real.sum(1, keepdim=True))
                rows["y"].append(b["target"])
                if split == "train" and sum(len(y) for y in rows["y"]) >= max_train:
                    break
        feats[split] = {k: torch.cat(v).numpy() for k, v in rows.items()}
    out = {}
    ytr = np.eye(10)[feats["train"]["y"]]
    for k in ("cls", "mean_all", "mean_real"):
        scores = fit_and_score(feats["train"][k], ytr, feats["eval"][k], multi_label=False)
        out[k] = float((scores.argmax(1) == feats["eval"]["y"]).mean())
    return out


def init_variants(data: str, stats: dict) -> dict:
    """``representation`` of freshly initialised models: as shipped, and with one thing changed."""
    return {
        "shipped (cls, post-LN, 192 frames)": representation(_fresh_model(), data),
        "no padding (each clip at its own length)": representation(_fresh_model(), data, unpadded=True),
        "96-frame window": representation(_fresh_model(target_length=96), data),
        "mean pooling": representation(_fresh_model(pool="mean"), data),
        "pre-LN blocks": representation(_fresh_model(block_style="pre"), data),
        "dataset mean/std": representation(_fresh_model(mean=stats["mean"], std=stats["std"]), data),
    }


def run_one(work: Path, name: str, state: dict) -> dict:
    from audiossl.hub.reader import classifier_from_checkpoint
    from audiossl.data import AudioDataModule
    from audiossl.tasks.evaluate import evaluate
    from audiossl.cli.train import finetune, pretrain

    order, pre_steps, ft_steps, extra = RUNS[name]
    data = str(work / f"shards_{order}")
    ds = state["data_stats"]
    extra = [a.format(mean=ds["mean"], std=ds["std"]) for a in extra]
    root = work / "runs" / name
    _clean(root)
    root.mkdir(parents=True)
    rec: dict = {"data": order, "pretrain_steps": pre_steps, "finetune_steps": ft_steps, "extra": extra}
    init = []
    if pre_steps:
        t = time.perf_counter()
        pretrain(["--config", EAT, "--config", _probe_config(root / "probe_pre.yaml", root / "pretrain.jsonl"),
                  "--data.root", data, "--trainer.max_steps", str(pre_steps), "--trainer.default_root_dir",
                  str(root / "pretrain"), "--checkpoint_every_n_steps", str(pre_steps),
                  "--trainer.enable_progress_bar", "false"])
        rec["pretrain_seconds"] = time.perf_counter() - t
        init = ["--model.init_from", str(root / "pretrain" / "checkpoints" / "last.ckpt")]
    t = time.perf_counter()
    finetune(["--config", FT, "--config", _probe_config(root / "probe_ft.yaml", root / "finetune.jsonl"),
              "--data.root", data, "--trainer.max_steps", str(ft_steps), "--trainer.val_check_interval",
              str(min(50, ft_steps) if ft_steps <= 300 else 150), "--trainer.default_root_dir", str(root / "finetune"),
              "--checkpoint_every_n_steps", str(ft_steps), "--trainer.enable_progress_bar", "false", *init, *extra])
    rec["finetune_seconds"] = time.perf_counter() - t
    ckpt = str(root / "finetune" / "checkpoints" / "last.ckpt")
    model = classifier_from_checkpoint(ckpt)
    dm = AudioDataModule(str(work / "shards_shuffled"), num_workers=0, batch_size=64,
                         clip_seconds=model.front_end.config.target_length / 100)
    m = evaluate(model, dm, root / "eval", progress=False)
    pred = np.load(root / "eval" / "predictions.npz")["scores"].argmax(1)
    rec["eval"] = {"accuracy": m["accuracy"], "mAP": m["mAP"], "mAUC": m["mAUC"],
                   "pred_hist": np.bincount(pred, minlength=10).tolist()}
    rec["attention"] = padding_attention(ckpt, str(work / "shards_shuffled"))
    print(f"{name}: accuracy {m['accuracy']:.3f} mAP {m['mAP']:.3f}; finetune {rec['finetune_seconds']:.0f} s"
          + (f", pretrain {rec['pretrain_seconds']:.0f} s" if pre_steps else ""), flush=True)
    return rec


def phase_train(work: Path, state: dict, names: list[str]) -> None:
    for name in names or list(RUNS):
        state.setdefault("runs", {})[name] = run_one(work, name, state)
        _save(work, state)


# --- phase 4: the tables -----------------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)] if path.is_file() else []


def summarise_run(work: Path, name: str) -> dict:
    out: dict = {}
    for part in ("pretrain", "finetune"):
        recs = _jsonl(work / "runs" / name / f"{part}.jsonl")
        steps = [r for r in recs if r["kind"] == "step"]
        if not steps:
            continue
        loss = np.array([r["loss"] for r in steps])
        windows = [(0, 25), (25, 50), (50, 100), (100, 200), (200, 300), (300, 600), (600, 1000), (1000, 1500)]
        s: dict = {"loss_by_window": {f"{a}-{b}": float(loss[a:b].mean()) for a, b in windows if a < len(loss)}}
        gn = [r for r in steps if "grad_norm" in r]
        layers = sorted({k for r in gn for k in r["grad_norm"]})
        for a, b in ((0, 25), (25, 100), (100, 300), (300, 1500)):
            sel = gn[a:b]
            if sel:
                s.setdefault("grad_norm_by_window", {})[f"{a}-{b}"] = {
                    k: float(np.median([r["grad_norm"].get(k, 0.0) for r in sel])) for k in layers + ["total"]
                    if k != "total"} | {"total": float(np.median([r["grad_norm_total"] for r in sel]))}
        lrs = {r["step"]: r["lr"] for r in steps if "lr" in r}
        s["lr"] = {str(k): lrs[k] for k in sorted(lrs) if k in (0, 10, 19, 20, 50, 100, 150, 200, 299, 399, 1499)}
        if "batch_classes" in steps[0]:
            s["batch_classes_mean"] = float(np.mean([r["batch_classes"] for r in steps]))
        s["real_fraction_mean"] = float(np.mean([r.get("real_fraction", float("nan")) for r in steps]))
        s["evals"] = [{k: r[k] for k in ("step", "accuracy", "pred_hist")} for r in recs if r["kind"] == "eval"]
        ends = [r for r in recs if r["kind"] == "end"]
        if ends:
            s["relative_weight_change"] = ends[0]["relative_weight_change"]
        out[part] = s
    return out


def train_accuracy(work: Path, name: str) -> float:
    """The final model's accuracy on the training clips (no augmentation): fitting vs generalising."""
    from audiossl.hub.reader import classifier_from_checkpoint
    from audiossl.data import AudioDataModule
    from audiossl.tasks.evaluate import evaluate

    model = classifier_from_checkpoint(str(work / "runs" / name / "finetune" / "checkpoints" / "last.ckpt"))
    dm = AudioDataModule(str(work / "shards_shuffled"), num_workers=0, batch_size=64, eval_split="train",
                         clip_seconds=model.front_end.config.target_length / 100)
    return float(evaluate(model, dm, work / "runs" / name / "eval_train", progress=False)["accuracy"])


def phase_report(work: Path, state: dict) -> None:
    data = str(work / "shards_shuffled")
    if "representation_at_init" not in state:
        state["representation_at_init"] = init_variants(data, state["data_stats"])
    if "linear_probe_at_init" not in state:
        state["linear_probe_at_init"] = init_probe(data)
    for name, run in state.get("runs", {}).items():
        run["summary"] = summarise_run(work, name)
        if "representation" not in run:
            run["representation"] = representation(
                str(work / "runs" / name / "finetune" / "checkpoints" / "last.ckpt"), data)
        if "train_accuracy" not in run:
            run["train_accuracy"] = train_accuracy(work, name)
        if run.get("pretrain_steps") and "pretrained_representation" not in run:
            from audiossl.hub.reader import encoder_from_checkpoint

            enc, _ = encoder_from_checkpoint(str(work / "runs" / name / "pretrain" / "checkpoints" / "last.ckpt"))
            model = _fresh_model()
            model.encoder.load_state_dict(enc.state_dict())
            run["pretrained_representation"] = representation(model, data)
            run["pretrained_linear_probe_sklearn"] = init_probe(data, model=model)
    print("| run | data | eval accuracy | mAP | train accuracy | loss 0-25 | loss 200-300 | CLS spread | minutes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in state.get("runs", {}).items():
        lw = r["summary"].get("finetune", {}).get("loss_by_window", {})
        mins = (r.get("pretrain_seconds", 0) + r["finetune_seconds"]) / 60
        print(f"| {name} | {r['data']} | {r['eval']['accuracy']:.3f} | {r['eval']['mAP']:.3f} | "
              f"{r['train_accuracy']:.3f} | {lw.get('0-25', float('nan')):.3f} | "
              f"{lw.get('200-300', float('nan')):.3f} | {r['representation']['embedding_std_over_norm']:.3f} | "
              f"{mins:.1f} |")


def _save(work: Path, state: dict) -> None:
    (work / "diagnosis.json").write_text(json.dumps(state, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/speechdiag")
    p.add_argument("phase", choices=("data", "input", "train", "report", "all"))
    p.add_argument("runs", nargs="*", help=f"train: which runs (default all): {', '.join(RUNS)}")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    state = json.loads((work / "diagnosis.json").read_text()) if (work / "diagnosis.json").is_file() else {}
    torch.set_num_threads(2)
    for phase in (("data", "input", "train", "report") if a.phase == "all" else (a.phase,)):
        t = time.perf_counter()
        {"data": lambda: phase_data(work, state), "input": lambda: phase_input(work, state),
         "train": lambda: phase_train(work, state, a.runs), "report": lambda: phase_report(work, state)}[phase]()
        state.setdefault("phase_seconds", {})[phase] = time.perf_counter() - t
        _save(work, state)


if __name__ == "__main__":
    sys.exit(main())
