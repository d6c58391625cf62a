"""``DictConfig``: the plain-dict round trip every serialisable config in audiossl shares."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, fields
from typing import ClassVar, TypeVar

from audiossl.errors import ConfigError

T = TypeVar("T", bound="DictConfig")

_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def _scalar_types(hint) -> tuple:
    """The plain scalar types a field annotation allows (``int | None`` -> ``(int, NoneType)``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def coerce_text(value, hint, name: str, kind: str):
    """A number or boolean that arrived as text (a dotted command-line override of a dict-typed setting, such as
    ``--model.init_args.encoder.depth 2``) -> the field's type; anything else unchanged."""
    allowed = _scalar_types(hint)
    if not isinstance(value, str) or str in allowed:
        return value
    text = value.strip()
    if type(None) in allowed and text.lower() in ("none", "null"):
        return None
    if bool in allowed and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    for t in (int, float):
        if t in allowed:
            try:
                return t(text)
            except ValueError:
                pass
    wanted = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{kind} setting {name}={value!r} must be {wanted}")


def config_differences(ours: dict, theirs: dict, ignore: tuple = ()) -> dict[str, tuple]:
    """``{key: (ours, theirs)}`` for each setting two config dicts disagree on (a key one side lacks reads None)."""
    return {k: (ours.get(k), theirs.get(k)) for k in sorted(set(ours) | set(theirs))
            if k not in ignore and ours.get(k) != theirs.get(k)}


class DictConfig:
    """Mixin for ``@dataclass`` configs: ``to_dict()`` and ``from_dict()``, rejecting unknown keys by name and
    turning numbers/booleans given as text into the field's type."""

    kind: ClassVar[str] = "config"  # used in error messages: "unknown <kind> settings [...]"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[T], d: dict) -> T:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.kind} settings {sorted(unknown)}; valid: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: coerce_text(v, hints.get(k, typing.Any), k, cls.kind) for k, v in d.items()})
