"""Named registries: the one way bnonly is extended (model families, what-trains terms, datasets,
optimizers, objectives, callbacks, analyses).

A :class:`Registry` maps a name to an entry (a class, a function or a small spec object) and
states its contract: what an entry must provide. Entries register themselves where they are
defined, with a decorator, so adding a new one means writing it (in bnonly or in your own code)
and nothing else::

    from bnonly.models import MODEL_FAMILIES

    @MODEL_FAMILIES.register("tiny_mlp", ...)
    def build_tiny_mlp(...): ...

A registry imports nothing from bnonly but the errors module, so any module may hold one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item: its name, the object, a one-line help text and example uses."""

    name: str
    obj: T
    help: str = ""
    examples: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> entry, in registration order. ``kind`` names the registry in messages ("model
    family", "what-trains term"); ``contract`` says what an entry must be or provide."""

    def __init__(self, kind: str, contract: str):
        self.kind, self.contract = kind, contract
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, *, help: str = "", examples: tuple[str, ...] | list[str] = (),
                 replace: bool = False, **extra) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that registers what it
        decorates. A second entry of the same name is an error unless ``replace``."""

        def add(o: T) -> T:
            if name in self._entries and not replace:
                raise ConfigError(f"{self.kind} {name!r} is already registered; pass replace=True to override it")
            self._entries[name] = Entry(name, o, help or _first_line(o), tuple(examples), dict(extra))
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries) or '(none)'}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _first_line(obj: Callable | Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
