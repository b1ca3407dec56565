"""One registry helper for every ``name -> thing`` table: methods, tasks, datasets, data sources, formats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from facerep.runtime.errors import FacerepError

T = TypeVar("T")


class UnknownNameError(FacerepError):
    """A name that is not in a registry; the message lists the names that are."""


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    ``kind`` words the error for an unknown name: ``unknown method 'simclr'; available: mae, mcf``;
    ``error`` is its type (a :class:`FacerepError`, so the command line prints it as one line).
    """

    def __init__(self, kind: str, error: type[FacerepError] = UnknownNameError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry named ``name``, or a one-line error listing the known names."""
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())
