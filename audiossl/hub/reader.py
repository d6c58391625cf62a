"""Reading models without unpickling code: audiossl Lightning checkpoints and export directories.

A checkpoint written by an audiossl Lightning module is a dict with (at least)

    "state_dict": {"encoder.*": ...}                     pretraining: the student encoder
                  {"model.encoder.*", "model.head.*"}    fine-tuning: an AudioClassifier under ``model.``
    "audiossl":   {"format": 1, "kind": "pretrain"|"classifier", "encoder": EncoderConfig dict,
                   "front_end": FrontEndConfig dict, ...}   (+ "objective" | + "head", "label_names", "multi_label")

plus whatever Lightning adds (``optimizer_states``, ``lr_schedulers``, ``callbacks``, ``loops``, ``hyper_parameters``,
...), which is ignored here. Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from audiossl.version import __version__
from audiossl.errors import CheckpointError, ExportError
from audiossl.frontend.features import FrontEndConfig
from audiossl.models.classifier import AudioClassifier, HeadConfig
from audiossl.models.encoder import AudioEncoder, EncoderConfig

SUPPORTED_FORMAT = 1
KINDS = ("pretrain", "classifier")
# Where each kind keeps its encoder inside the Lightning state dict.
ENCODER_PREFIX = {"pretrain": "encoder.", "classifier": "model.encoder."}
CLASSIFIER_PREFIX = "model."


# The export format (``audiossl.hub.export`` writes it): a directory with these two files.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint", allow: tuple = (), mmap: bool = False):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file and, when the file
    holds Python objects beyond tensors and plain containers, which ones. ``allow``: extra classes/functions the
    unpickler may construct (data-only types such as numpy scalars), passed to ``torch.serialization.safe_globals``.
    ``mmap``: map the tensors instead of reading them (cheap for a look at the metadata of a large file)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is an empty file")
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{what} {path} is a safetensors file, not a torch checkpoint: pass the folder holding it "
                              "(an exported model) where a model folder is accepted, or use `audiossl convert`")
    not_torch = f"{what} {path} is not a torch checkpoint"
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not _starts_like_pickle(path):
        raise CheckpointError(f"{not_torch} (neither a torch zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as e:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - only used to improve the message
            names = []
        listed = f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else ""
        raise CheckpointError(
            f"{what} {path} holds Python objects{listed} that audiossl will not unpickle: it loads files with "
            f"torch.load(weights_only=True) so that opening a file cannot run code. Re-save the file with tensors "
            f"and plain containers only (e.g. torch.save({{'state_dict': sd}}, ...)) from an environment you trust."
            + (f" torch: {reason[0].strip()}" if (reason := [l for l in str(e).splitlines() if "Unsupported" in l]) else "")
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read {what} {path}: {e} (truncated or not a torch file?)") from None
    except (IndexError, KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        # the legacy (non-zip) reader fed bytes that are no pickle at all: audio, text, JSON, ...
        raise CheckpointError(f"{not_torch} (torch cannot parse it: {type(e).__name__}: {e})") from None


def _starts_like_pickle(path: Path) -> bool:
    """A pickle of protocol 2+ (torch's legacy format included) starts with the PROTO opcode ``0x80``."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load an audiossl checkpoint and check its ``audiossl`` entry; returns the whole checkpoint dict."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists():
        raise CheckpointError(f"{path} is an exported model directory, not a checkpoint: use audiossl.load_model({str(path)!r})")
    ckpt = safe_torch_load(path)
    check_checkpoint(ckpt, str(path))
    return ckpt


def check_checkpoint(ckpt, name: str = "checkpoint") -> dict:
    """Validate the structure of a loaded checkpoint; returns its ``audiossl`` entry."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{name} is not an audiossl checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    meta = ckpt.get("audiossl")
    if not isinstance(meta, dict):
        keys = ", ".join(sorted(map(str, ckpt))[:12]) or "(none)"
        raise CheckpointError(
            f"{name} is not an audiossl checkpoint (no 'audiossl' entry; top-level keys: {keys}). Published weights "
            f"(AST, EAT, SSLAM, AudioMAE) are imported with `audiossl convert`."
        )
    fmt = meta.get("format")
    if not isinstance(fmt, int) or fmt > SUPPORTED_FORMAT or fmt < 1:
        raise CheckpointError(
            f"{name} has checkpoint format {fmt!r}; this audiossl reads format {SUPPORTED_FORMAT} "
            f"(a newer audiossl wrote it? upgrade audiossl)"
        )
    kind = meta.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{name}: unknown checkpoint kind {kind!r}; expected one of {KINDS}")
    for key in ("encoder", "front_end") + (("head",) if kind == "classifier" else ()):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{name}: the 'audiossl' entry of a {kind} checkpoint lacks the {key!r} config")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{name} has no 'state_dict' (keys: {', '.join(sorted(map(str, ckpt)))})")
    return meta


def _as_checkpoint(ckpt_or_path) -> tuple[dict, str]:
    if isinstance(ckpt_or_path, dict):
        check_checkpoint(ckpt_or_path)
        return ckpt_or_path, "checkpoint"
    return read_checkpoint(ckpt_or_path), str(ckpt_or_path)


def sub_state_dict(state_dict: dict, prefix: str) -> dict:
    """Entries under ``prefix`` with the prefix removed (``torch.compile``'s ``_orig_mod.`` is dropped too)."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace("_orig_mod.", "")
        if k.startswith(prefix) and torch.is_tensor(v):
            out[k[len(prefix) :]] = v
    return out


def _top_prefixes(state_dict: dict, depth: int = 2) -> list[str]:
    return sorted({".".join(k.split(".")[:depth]) + "." for k in state_dict})


def load_weights(module: nn.Module, state_dict: dict, what: str) -> None:
    """``module.load_state_dict(state_dict)`` with one error listing every missing and unexpected key and every shape
    mismatch (key and both shapes)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_short(shapes)}")
        raise CheckpointError(f"the weights of {what} do not match its config: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def _short(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def classifier_from_checkpoint(ckpt_or_path) -> AudioClassifier:
    """An ``AudioClassifier`` (eval mode, CPU) from a fine-tuning checkpoint (``kind: classifier``)."""
    ckpt, name = _as_checkpoint(ckpt_or_path)
    meta = ckpt["audiossl"]
    if meta["kind"] != "classifier":
        raise CheckpointError(
            f"{name} is a {meta['kind']} checkpoint (an encoder without a classifier head): fine-tune it first "
            f"(`audiossl finetune --model.init_from {name}`), or `audiossl export` it as an encoder-only model for "
            f"embeddings (Python: encoder_from_checkpoint)"
        )
    try:
        model = AudioClassifier(
            encoder=EncoderConfig.from_dict(meta["encoder"]),
            head=HeadConfig.from_dict(meta["head"]),
            front_end=FrontEndConfig.from_dict(meta["front_end"]),
            label_names=meta.get("label_names"),
            multi_label=meta.get("multi_label", True),
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: its 'audiossl' config does not build a model: {e}") from None
    sd = sub_state_dict(ckpt["state_dict"], CLASSIFIER_PREFIX)
    if not sd:
        raise CheckpointError(
            f"{name} has no weights under {CLASSIFIER_PREFIX!r} (state_dict prefixes: "
            f"{_short(_top_prefixes(ckpt['state_dict']))})"
        )
    load_weights(model, sd, f"the classifier in {name}")
    return model.eval()


def encoder_from_checkpoint(ckpt_or_path, prefix: str | None = None) -> tuple[AudioEncoder, FrontEndConfig]:
    """The encoder (eval mode, CPU) and front-end config of any audiossl checkpoint.

    ``prefix`` defaults to ``encoder.`` for pretraining checkpoints and ``model.encoder.`` for classifiers; pass
    another (e.g. ``teacher.model.``, a pretraining checkpoint's EMA teacher) to pick a different copy of the encoder from the state dict. An exported or converted
    model directory (``audiossl export`` / ``audiossl convert``) works too: its encoder and front end are returned.
    """
    if not isinstance(ckpt_or_path, dict) and Path(ckpt_or_path).is_dir():
        if prefix is not None:
            raise CheckpointError(f"{ckpt_or_path} is an exported model directory; prefix={prefix!r} applies to checkpoints only")
        try:
            model = load_model(ckpt_or_path)
        except ExportError as e:
            raise CheckpointError(str(e)) from None
        return model.encoder.eval(), model.front_end.config
    ckpt, name = _as_checkpoint(ckpt_or_path)
    meta = ckpt["audiossl"]
    prefix = ENCODER_PREFIX[meta["kind"]] if prefix is None else prefix
    if prefix and not prefix.endswith("."):
        prefix += "."
    try:
        config = EncoderConfig.from_dict(meta["encoder"])
        encoder = AudioEncoder(config)
        front_end = FrontEndConfig.from_dict(meta["front_end"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: its 'audiossl' encoder/front-end config does not build: {e}") from None
    sd = sub_state_dict(ckpt["state_dict"], prefix)
    if not sd:
        raise CheckpointError(
            f"{name} ({meta['kind']} checkpoint) has no weights under {prefix!r}; state_dict prefixes: "
            f"{_short(_top_prefixes(ckpt['state_dict']))}"
        )
    load_weights(encoder, sd, f"the encoder under {prefix!r} in {name}")
    return encoder.eval(), front_end


def model_from_checkpoint(ckpt_or_path) -> AudioClassifier:
    """An ``AudioClassifier`` for either kind: a classifier, or an encoder-only model (``head=None``) for pretraining
    checkpoints (the clip embedding pools the CLS token for EAT/SSLAM-style objectives, the patch mean otherwise)."""
    ckpt, name = _as_checkpoint(ckpt_or_path)
    meta = ckpt["audiossl"]
    if meta["kind"] == "classifier":
        return classifier_from_checkpoint(ckpt)
    encoder, front_end = encoder_from_checkpoint(ckpt)
    objective = meta.get("objective", "")
    if isinstance(objective, dict):  # a config dict: its name or class path
        objective = objective.get("name") or objective.get("class_path") or ""
    utterance_cls = any(n in str(objective).lower() for n in ("eat", "sslam", "bat"))  # CLS trained as the clip summary
    pool = "cls" if encoder.num_prefix_tokens and utterance_cls else "mean"
    return AudioClassifier(encoder, head=None, front_end=front_end, pool=pool).eval()


# --- export directories ----------------------------------------------------------------------------------------
def read_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a ``.safetensors`` file; ``ExportError`` when it is damaged or not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ExportError(f"cannot read {path}: {e} (a truncated or corrupt safetensors file?)") from None


def read_config(model_dir: str | os.PathLike) -> dict:
    d = Path(model_dir)
    if not d.exists():
        raise ExportError(f"model directory {d} does not exist")
    if not d.is_dir():
        raise ExportError(f"{d} is a file, not an exported model directory (audiossl export CKPT --out DIR makes one)")
    cfg_path = d / CONFIG_FILE
    if not cfg_path.exists():
        raise ExportError(f"{d} has no {CONFIG_FILE}: not an audiossl model directory (audiossl export / convert make one)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{cfg_path} is not valid JSON: {e}") from None
    version = config.get("format_version")
    if not isinstance(version, int):
        raise ExportError(f"{cfg_path} has no integer format_version: not an audiossl export")
    if version > FORMAT_VERSION:
        raise ExportError(
            f"{cfg_path} has format_version {version}; this audiossl ({__version__}) reads up to {FORMAT_VERSION}: "
            f"upgrade audiossl"
        )
    return config


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> AudioClassifier:
    """Rebuild an exported model (eval mode) from ``DIR/config.json`` + ``DIR/model.safetensors``.

    Also accepts an audiossl checkpoint file (``.ckpt``), read with ``weights_only=True``.
    """
    path = Path(model_dir)
    if path.is_file() and path.suffix in (".ckpt", ".pt", ".pth"):
        return model_from_checkpoint(path).to(device)
    config = read_config(path)
    model_cfg = {k: v for k, v in config.items() if k not in ("format_version", "audiossl_version")}
    try:
        model = AudioClassifier.from_config_dict(model_cfg)
    except (KeyError, ValueError, TypeError) as e:
        raise ExportError(f"{path / CONFIG_FILE} does not describe a model this audiossl can build: {e}") from None
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise ExportError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    load_weights(model, read_safetensors(weights), f"the model in {path}")
    return model.eval().to(device)
