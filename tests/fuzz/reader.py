"""Turning one fuzzer input into structured choices, deterministically.

A fuzz target gets a single ``bytes``; ``Reader`` consumes it front to back to
pick options, integers, strings and chunk boundaries. The same input always
makes the same choices, so a crash file replays exactly without atheris, and
an exhausted input yields zeros and empty strings rather than failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Reader:
    """Consumes an input from the front; what is left is ``rest()``."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        """The next byte, or 0 at the end."""
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def uint(self, size: int) -> int:
        """A big-endian unsigned integer of ``size`` bytes."""
        value = 0
        for _ in range(size):
            value = value << 8 | self.byte()
        return value

    def pick(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes."""
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def blob(self, max_len: int = 255) -> bytes:
        """A length byte (capped at ``max_len``), then that many bytes."""
        return self.take(min(self.byte(), max_len))

    def text(self, max_len: int = 255) -> str:
        return self.blob(max_len).decode("latin-1")

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out

    def chunked(self) -> list[bytes]:
        """The rest of the input in pieces: up to 8 size bytes first (0 meaning "all the rest"),
        then the data they cut, so a target sees one body fed in arbitrary chunks."""
        sizes = self.blob(8)
        data = self.rest()
        out = []
        pos = 0
        for size in sizes:
            if pos >= len(data):
                break
            end = len(data) if size == 0 else pos + size
            out.append(data[pos:end])
            pos = end
        if pos < len(data):
            out.append(data[pos:])
        return out
