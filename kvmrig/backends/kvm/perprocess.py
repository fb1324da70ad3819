"""A value kept once per process: what /dev/kvm answered, or an open fd.

Workers are forked from the parent (runner.py), and a fork inherits module
globals: a cached answer is still right, but an fd shared with the parent is
not the worker's own. Every such cache is one PerProcess, keyed by the pid, so
a forked child always computes its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`get(make)` returns what `make()` gave in this process, calling it once."""

    def __init__(self) -> None:
        self.pid = 0
        self.value: T | None = None

    def get(self, make: Callable[[], T]) -> T:
        pid = os.getpid()
        if self.pid != pid:
            self.value, self.pid = make(), pid
        return self.value  # type: ignore[return-value]

    def known(self) -> bool:
        """Whether this process has computed the value already."""
        return self.pid == os.getpid()

    def clear(self) -> None:
        """Forget the value (tests that change what it depends on)."""
        self.pid, self.value = 0, None
