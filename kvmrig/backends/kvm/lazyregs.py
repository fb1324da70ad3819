"""Registers read on demand: a dict that fetches each value on first access.

Backends whose registers cost one ioctl each (arm64 ONE_REG) hand this to the
machine layer, so a breakpoint hit that checks two registers costs two
ioctls, not ninety.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvmrig.errors import BackendError


class LazyRegs(dict):
    """Registers of one stop by canonical name, each read on first access.

    `read(name)` returns the value, or None when KVM does not expose the
    register (it is then simply absent). After `detach()` (the vCPU ran
    again) reading a register not yet fetched raises: the values of a past
    stop are gone. Pickles as a plain dict.
    """

    __slots__ = ("_read", "_names", "_known", "_live", "_complete")

    def __init__(self, read: Callable[[str], int | None], names: Sequence[str]) -> None:
        super().__init__()
        self._read = read
        self._names = tuple(names)        # every register, in the order a full read lists them
        self._known = frozenset(names)
        self._live = True
        self._complete = False

    def _fetch(self, key: str):
        if not self._live:
            if self._complete:
                return None  # everything KVM has was read: this one does not exist
            raise BackendError(f"register {key} of an earlier stop was read after the vCPU ran again "
                               "(call get_regs() again)")
        value = self._read(key)
        if value is not None:
            dict.__setitem__(self, key, value)
        return value

    def __missing__(self, key):
        if key in self._known and (value := self._fetch(key)) is not None:
            return value
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        if dict.__contains__(self, key):
            return True
        return key in self._known and self._fetch(key) is not None

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def fill(self) -> "LazyRegs":
        """Read every register not read yet."""
        if self._live and not self._complete:
            for name in self._names:
                if not dict.__contains__(self, name):
                    self._fetch(name)
            self._complete = True
        return self

    def detach(self, complete: bool = False) -> None:
        """The vCPU is about to change: keep what was read (or read all first)."""
        if complete and self._live:
            self.fill()
        self._live = False

    # Whole-dict views read everything first.
    def __iter__(self):
        return dict.__iter__(self.fill())

    def __len__(self) -> int:
        return dict.__len__(self.fill())

    def keys(self):
        return dict.keys(self.fill())

    def values(self):
        return dict.values(self.fill())

    def items(self):
        return dict.items(self.fill())

    def copy(self) -> dict:
        return dict(self.items())

    def __eq__(self, other) -> bool:
        return dict(self.items()) == other

    def __repr__(self) -> str:
        return f"LazyRegs({dict.__repr__(self)}{'' if self._live else ', detached'})"

    def __reduce__(self):
        return (dict, (dict(self.items()),))
