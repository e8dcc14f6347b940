"""One registry for every kind of named plug-in (solver methods, training methods, models)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names mapped to entries; a name is registered once, and an unknown one is an error
    that lists the valid names.

    Parameters
    ----------
    kind : str
        What the entries are, for messages (``"method"``, ``"model_name"``).

    Examples
    --------
    >>> methods = Registry("method")
    >>> @methods.register("twice")
    ... def twice(x):
    ...     return 2 * x
    >>> methods["twice"](3), methods.names()
    (6, ['twice'])
    >>> methods["thrice"]
    Traceback (most recent call last):
    ValueError: method must be one of ['twice'], got 'thrice'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` (``ValueError`` if the name is taken)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"{self.kind} must be one of {self.names()}, got {name!r}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        return [(name, self._entries[name]) for name in self.names()]
