"""Errors in what the user asked for: a path, a file, a dataset, a setting.

Every such error derives from :class:`UserError` (and from the builtin it refines, so ``except ValueError`` and
friends keep working). The ``audiossl`` command prints a ``UserError`` as one line, ``audiossl VERB: error: ...``,
and exits with status 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations



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
