"""Registries: one table per kind of name a user can write (schedules, methods, pipelines, backends, prompts).

A registry is the single source of truth for a set of names: validation, `--help` text and docs read it,
and looking up a name it does not hold raises `ConfigError` listing the names it does hold.

    SCHEDULES = Registry("learning-rate schedule")

    @SCHEDULES.register("cosine")
    def cosine(progress: float, min_ratio: float) -> float: ...

    SCHEDULES.get("linear")   # ConfigError: unknown learning-rate schedule 'linear'; known: cosine, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mathforge.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects of one kind, in registration order; unknown names are errors."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds the decorated object under `name` (a second use of a name is a bug)."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str, where: str = "") -> T:
        """The object registered as `name`; ConfigError naming the known ones if there is none."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown {self.what} {name!r}; known: {', '.join(self._items)}") from None

    def check(self, name: str, where: str = "") -> str:
        """`name` itself when it is registered (for validating configs), else the ConfigError of `get`."""
        self.get(name, where)
        return name

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
