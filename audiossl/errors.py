"""Errors in what the user asked for: a path, a file, a dataset, a setting.

Every such error derives from :class:`UserError` (and from the builtin it refines, so ``except ValueError`` and
friends keep working). The ``audiossl`` command prints a ``UserError`` as one line, ``audiossl VERB: error: ...``,
and exits with status 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the input that the message explains; shown without a traceback by the CLI."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(UserError, ValueError):
    """A setting that does not fit its config (an unknown key, text that is not the field's type)."""


class DatasetError(UserError, ValueError):
    """A dataset folder, manifest or data setting that cannot be used as asked."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset folder without a ``manifest.json``."""


class SplitNotFoundError(UserError, KeyError):
    """A split name the manifest does not have."""


class InputPathError(UserError, FileNotFoundError):
    """An input file that is missing, or a folder where a file is needed (or the other way round)."""


class OutputPathError(UserError, FileExistsError):
    """An output path that cannot be written as asked (a file where a folder is needed, an input file, ...)."""


class MissingHeadError(UserError, RuntimeError):
    """Classification asked of a model that has no classifier head (an encoder exported from pretraining)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not match the model it should rebuild."""


class ExportError(UserError, ValueError):
    """An export directory that cannot be written or read, or an ONNX graph that disagrees with PyTorch."""


def _refuse_url(path, what: str, error) -> None:
    """A URL where a local path is needed is an error, never a folder named ``s3:`` (see ``audiossl.data.storage``)."""
    from audiossl.data.storage import is_url

    if is_url(path):
        raise error(f"{what} {path} is a URL; this needs a local path (datasets may live at s3://, gs://, https:// "
                    "and pipe: URLs: `prep --out` and `--data.root` accept them)")


def input_file(path: str | Path, what: str) -> Path:
    """``path`` as an existing file; ``InputPathError`` naming ``what`` otherwise."""
    _refuse_url(path, what, InputPathError)
    path = Path(path)
    if path.is_dir():
        raise InputPathError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise InputPathError(f"{what} {path} does not exist")
    return path


def output_dir(path: str | Path, what: str = "--out", create: bool = True) -> Path:
    """``path`` as a folder to write into (created unless ``create=False``); a clear error when a file is in the way
    or ``path`` is a URL."""
    _refuse_url(path, what, OutputPathError)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file; give a folder path (it is created if missing)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"{what} {path}: {parent} is a file, not a folder")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def output_file(path: str | Path, what: str = "--out", inputs: tuple = (), create: bool = True) -> Path:
    """``path`` as a file to write (its folder created); refuses a folder, a URL and any of ``inputs``."""
    _refuse_url(path, what, OutputPathError)
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file path")
    if path.exists() and any(Path(i).exists() and path.samefile(i) for i in inputs):
        raise OutputPathError(f"{what} {path} is the input file; refusing to overwrite it")
    output_dir(path.parent, f"the folder of {what}", create)
    return path


def resolve_device(name: str = "auto"):
    """``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda``, ``cuda:N``; a clear error otherwise."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: only cpu and cuda devices are supported")
    return device
