"""``DictConfig``: the plain-dict round trip every serialisable config in audiossl shares."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import ClassVar, TypeVar

T = TypeVar("T", bound="DictConfig")


class DictConfig:
    """Mixin for ``@dataclass`` configs: ``to_dict()`` and ``from_dict()``, rejecting unknown keys by name."""

    kind: ClassVar[str] = "config"  # used in error messages: "unknown <kind> settings [...]"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[T], d: dict) -> T:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.kind} settings {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)
