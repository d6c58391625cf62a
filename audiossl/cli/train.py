"""The training verbs, ``audiossl pretrain`` and ``audiossl finetune``: LightningCLI over a model and ``AudioDataModule``.

    audiossl pretrain --config configs/pretrain/eat_tiny.yaml --data.root DIR \\
        --trainer.max_steps 20 --trainer.default_root_dir OUT [--ckpt_path last]

YAML config plus dotted overrides; ``--print_config`` prints the resolved config; unknown keys are errors. Every run
directory ``OUT`` gets ``OUT/checkpoints/`` (``last.ckpt`` plus one every ``--checkpoint_every_n_steps``), TensorBoard
event files and the resolved ``config.yaml``; ``--ckpt_path last`` resumes from ``OUT/checkpoints/last.ckpt``. A run
without ``--ckpt_path`` refuses a directory that already holds checkpoints (it would overwrite them).
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import inspect
import logging
import os
import pydoc
import re
import sys
import warnings
from typing import Optional

import torch
from lightning.pytorch.cli import LightningCLI

from audiossl.data import AudioDataModule
from audiossl.errors import ConfigError, UserError


def init_parameters(cls) -> list[str]:
    """Constructor parameters of ``cls`` and of the parents it forwards ``**kwargs`` to."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def explain_unknown_keys(message: str, model_class, section_classes: dict) -> str:
    """Add the list of valid keys (and the closest match) to jsonargparse's unknown-key errors."""
    extra = []
    m = re.search(r"class_path '([\w.]+)'.*?Option '(\w+)' is not accepted", message, re.S)
    if m:
        cls = pydoc.locate(m.group(1)) or model_class
        valid = init_parameters(cls)
        near = difflib.get_close_matches(m.group(2), valid, n=1)
        extra.append(f"model key {m.group(2)!r} is not an option of {m.group(1)}"
                     + (f" (did you mean {near[0]!r}?)" if near else "") + f"; valid keys: {', '.join(valid)}")
    for key in re.findall(r"--(\w+)\.([\w.]+)", message if "unrecognized arguments" in message else ""):
        section, name = key[0], key[1].split(".")[0]
        if section in section_classes:
            valid = init_parameters(section_classes[section])
            near = difflib.get_close_matches(name, valid, n=1)
            extra.append(f"{section} key {name!r} is unknown" + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; valid {section} keys: {', '.join(valid)}")
    return message + ("\n" + "\n".join(extra) if extra else "")


class AudioSSLCLI(LightningCLI):
    """LightningCLI with audiossl's run-directory conventions."""

    default_root = "runs/train"
    keep_best = False  # fine-tuning: also keep checkpoints/best.ckpt (audiossl.hub.checkpoint_writer.BestCheckpoint)

    def parse_arguments(self, parser, args) -> None:
        from jsonargparse import ArgumentError
        from lightning.pytorch import Trainer

        parser.exit_on_error = False
        try:
            self.config = parser.parse_args(args)
        except ArgumentError as e:
            sections = {"data": AudioDataModule, "trainer": Trainer, "model": self.model_class}
            print(explain_unknown_keys(str(e), self.model_class, sections), file=sys.stderr)
            print(f"tip: {parser.prog} --help lists every option", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            parser.exit_on_error = True

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="resume from this checkpoint, or 'last' for OUT/checkpoints/last.ckpt")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=1000,
                            help="keep a numbered checkpoint every N optimizer steps (last.ckpt is refreshed too)")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        t = cfg.trainer
        root = t.default_root_dir or self.default_root
        t.default_root_dir = root
        if t.logger is None or t.logger is True:
            t.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": root, "name": "", "version": ""},
            }
        callbacks = list(t.callbacks or [])
        # (a run's saved config.yaml already lists RunCheckpoint and RequeueOnSignal: not twice)
        if not any(n in str(getattr(c, "class_path", c)) for c in callbacks for n in ("ModelCheckpoint", "RunCheckpoint")):
            callbacks.append({
                "class_path": "audiossl.hub.checkpoint_writer.RunCheckpoint",
                "init_args": {
                    "dirpath": os.path.join(root, "checkpoints"),
                    "filename": "step{step:08d}",
                    "auto_insert_metric_name": False,
                    "every_n_train_steps": cfg.checkpoint_every_n_steps,
                    "save_top_k": -1,
                    "save_last": True,
                    "enable_version_counter": False,  # a resumed run refreshes last.ckpt, not last-v1.ckpt
                },
            })
        if self.keep_best and not any("BestCheckpoint" in str(getattr(c, "class_path", c)) for c in callbacks):
            callbacks.append({"class_path": "audiossl.hub.checkpoint_writer.BestCheckpoint",
                              "init_args": {"dirpath": os.path.join(root, "checkpoints")}})
        if not any("RequeueOnSignal" in str(getattr(c, "class_path", c)) for c in callbacks):
            # SIGUSR1 (SLURM's --signal=SIGUSR1@90): save hpc_ckpt_N.ckpt at the next step on all ranks, requeue, stop
            callbacks.append({"class_path": "audiossl.cli.preemption.RequeueOnSignal"})
        t.callbacks = callbacks
        plugins = t.plugins if isinstance(t.plugins, list) else ([t.plugins] if t.plugins else [])
        if not any("CheckpointIO" in str(getattr(p, "class_path", p)) for p in plugins):
            plugins.append({"class_path": "audiossl.hub.checkpoint_writer.AtomicCheckpointIO"})
        t.plugins = plugins
        if t.precision is None:
            t.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("high")


def latest_checkpoint(root: str) -> str | None:
    """The newest of ``root/checkpoints/last.ckpt`` and Lightning's SLURM requeue checkpoints ``root/hpc_ckpt_*.ckpt``."""
    candidates = [os.path.join(root, "checkpoints", "last.ckpt")] + glob.glob(os.path.join(root, "hpc_ckpt_*.ckpt"))
    candidates = [c for c in candidates if os.path.isfile(c)]
    return max(candidates, key=os.path.getmtime) if candidates else None


def _ckpt_path(cli: AudioSSLCLI) -> str | None:
    path = cli.config.ckpt_path
    if path == "last":
        last = latest_checkpoint(cli.trainer.default_root_dir)
        if last is None:
            print(f"audiossl: --ckpt_path last: nothing to resume in {cli.trainer.default_root_dir}, starting afresh",
                  file=sys.stderr)
        else:
            print(f"audiossl: resuming from {last}", file=sys.stderr)
        return last
    if path is not None and not os.path.exists(path):
        raise UserError(f"--ckpt_path {path}: no such checkpoint")
    return path


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


@contextlib.contextmanager
def _quiet_lightning(strip_argv: bool = True):
    """Silence advice that does not apply here: the product tip, and the teacher being in eval mode on purpose.

    ``strip_argv``: hide the command line while the CLI parses (we pass args explicitly; LightningCLI warns when both
    are set). Never during ``fit``: Lightning's DDP launcher starts the other ranks by re-running ``sys.argv``.
    """
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip = _DropTip()
    log.addFilter(tip)
    argv = sys.argv
    if strip_argv:
        sys.argv = sys.argv[:1]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            # pretraining overrides optimizer_step on purpose: the EMA teacher moves once per optimizer step
            warnings.filterwarnings("ignore", message=r".*the hooks will not be called on every batch.*")
            yield
    finally:
        sys.argv = argv
        log.removeFilter(tip)


def build_cli(model_class, argv: list[str], default_root: str, subclass_mode: bool,
              keep_best: bool = False) -> AudioSSLCLI:
    """Parse ``argv`` and instantiate the model, the datamodule and the Trainer (no training)."""
    cls = type("CLI", (AudioSSLCLI,), {"default_root": default_root, "keep_best": keep_best})
    with _quiet_lightning():
        return cls(
            model_class,
            AudioDataModule,
            subclass_mode_model=subclass_mode,
            run=False,
            args=argv,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": f"audiossl {default_root.split('/')[-1]}"},
        )


def check_run_dir(root: str) -> None:
    """Starting afresh (no ``--ckpt_path``) in a run directory that holds checkpoints would overwrite them: refuse."""
    found = sorted(glob.glob(os.path.join(root, "checkpoints", "*.ckpt")) + glob.glob(os.path.join(root, "hpc_ckpt_*.ckpt")))
    if found:
        names = ", ".join(os.path.relpath(f, root) for f in found[:4]) + (", ..." if len(found) > 4 else "")
        raise UserError(
            f"{root} already holds the checkpoints of an earlier run ({names}); starting afresh would overwrite them. "
            f"Resume that run with --ckpt_path last, or give a new --trainer.default_root_dir (or delete {root})"
        )


def run_encoder_config(model) -> dict | None:
    """The encoder config this run builds (``None`` where only the ``init_from`` checkpoint knows it)."""
    if getattr(model, "objective", None):
        return model.encoder.config.to_dict()
    if hasattr(model, "_encoder_config") and not model.hparams.get("init_from"):
        return model._encoder_config()[0].to_dict()
    return None


def check_resume(model, path: str, datamodule=None) -> None:
    """Fail early, in one line, when ``path`` cannot resume this run: not an audiossl checkpoint, the other verb's
    kind, another objective, another encoder or (fine-tuning) other labels than the dataset's (Lightning would print
    a long state-dict error instead)."""
    from audiossl.hub.reader import check_checkpoint, safe_torch_load
    from audiossl.config_dict import config_differences
    from audiossl.models.encoder import WEIGHT_NEUTRAL

    meta = check_checkpoint(safe_torch_load(path, mmap=True), path)
    objective = getattr(model, "objective", None)
    kind = "pretrain" if objective else "classifier"
    if meta["kind"] != kind:
        hint = (" (to fine-tune a pretrained encoder, pass it as --model.init_from)" if meta["kind"] == "pretrain"
                else " (a fine-tuned checkpoint cannot resume pretraining)")
        raise UserError(f"--ckpt_path {path} is a {meta['kind']} checkpoint; this run resumes {kind} checkpoints{hint}")
    if objective and meta.get("objective") != objective:
        raise UserError(f"--ckpt_path {path} was written by the {meta.get('objective')!r} objective; this run trains "
                        f"{objective!r} (use the config of that run)")
    if kind == "classifier" and datamodule is not None:
        theirs, ours = list(meta.get("label_names") or []), list(datamodule.label_names)
        if theirs != ours:
            raise UserError(f"--ckpt_path {path} is a classifier of {len(theirs)} labels, the dataset "
                            f"{datamodule.root} has {len(ours)} (first differences: "
                            f"{[(a, b) for a, b in zip(theirs, ours) if a != b][:3]}); resume on the run's own data")
    ours = run_encoder_config(model)
    if ours is not None:
        diffs = config_differences(ours, meta["encoder"], WEIGHT_NEUTRAL)
        if diffs:
            listed = "; ".join(f"{k}: checkpoint {b!r} vs this run {a!r}" for k, (a, b) in list(diffs.items())[:6])
            raise UserError(f"--ckpt_path {path} holds another encoder than this run builds: {listed}")


def user_error_in_chain(exc: BaseException) -> UserError | None:
    """The ``UserError`` behind ``exc``: jsonargparse re-raises what a constructor raised as its own ValueError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def check_seeds(model, datamodule) -> None:
    """The model's ``seed`` (augmentation, masks) and the data's (stream order) are both logged as ``seed``, and
    Lightning refuses two different values under one name: say so before training, with the two flags."""
    ours = getattr(model, "hparams", {}).get("seed")
    data = getattr(datamodule, "hparams", {}).get("seed") if datamodule is not None else None
    if ours is not None and data is not None and int(ours) != int(data):
        raise ConfigError(f"the data's seed ({data}) and the model's seed ({ours}) differ; Lightning logs both as "
                          "'seed' and cannot keep two values: give both the same value (--data.seed and --model.seed, "
                          "or --model.init_args.seed for pretraining)")


def run(model_class, argv: list[str], default_root: str, subclass_mode: bool, keep_best: bool = False) -> int:
    try:
        cli = build_cli(model_class, argv, default_root, subclass_mode, keep_best)
    except Exception as e:  # noqa: BLE001 - re-raised unless a user error explains it
        user = user_error_in_chain(e)
        if user is None:
            raise
        raise user from None
    check_seeds(cli.model, cli.datamodule)
    ckpt_path = _ckpt_path(cli)
    if ckpt_path is None:
        check_run_dir(cli.trainer.default_root_dir)
    else:
        check_resume(cli.model, ckpt_path, cli.datamodule)
    with _quiet_lightning(strip_argv=False):
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        except RuntimeError as e:  # a checkpoint whose weights do not fit in a way the checks above do not see
            if ckpt_path is None or "Error(s) in loading state_dict" not in str(e):
                raise
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
            raise UserError(f"--ckpt_path {ckpt_path} does not fit this run's model ({detail[:300]}"
                            f"{' ...' if len(detail) > 300 else ''}); resume with the run's own config") from None
    return 0


def pretrain(argv: list[str]) -> int:
    """``audiossl pretrain``: a ``PretrainModule`` subclass (``--model EAT|MAE|JEPA|SSLAM`` or a config's class_path)."""
    from audiossl.objectives import PretrainModule

    return run(PretrainModule, argv, "runs/pretrain", subclass_mode=True)


def finetune(argv: list[str]) -> int:
    """``audiossl finetune``: ``FinetuneModule`` on labelled data."""
    from audiossl.tasks.finetune import FinetuneModule

    return run(FinetuneModule, argv, "runs/finetune", subclass_mode=False, keep_best=True)


def probe(argv: list[str]) -> int:
    """``audiossl probe``: ``ProbeModule`` on labelled data (LightningCLI, like ``audiossl finetune``)."""
    from audiossl.tasks.probe import ProbeModule

    return run(ProbeModule, argv, "runs/probe", subclass_mode=False)
