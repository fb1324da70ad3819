"""The order a run hands rigs out in: parents before the rigs that start from
their snapshot points.

A child (`from: parent.yaml#point`) is ready once its parent has run and
passed; a parent that failed, errored or was skipped makes each child an
error that says so (never a failure of its own). A parent the run did not
list is added, and runs once like any other rig. Rigs that are parents go
out first, so their children can fan out over the workers early.
"""

from __future__ import annotations

from pathlib import Path

from kvmrig.rig.model import Rig


class Schedule:
    def __init__(self, rigs: list[Rig]):
        self.rigs = list(rigs)
        by_path: dict[Path, int] = {}
        if any(r.start is not None and r.start.parent is not None for r in self.rigs):
            by_path = {r.path.resolve(): i for i, r in enumerate(self.rigs)}
        self.parent: dict[int, int] = {}
        i = 0
        while i < len(self.rigs):   # parents of parents too
            start = self.rigs[i].start
            if start is not None and start.parent is not None:
                j = by_path.get(start.parent)
                if j is None:
                    j = by_path[start.parent] = len(self.rigs)
                    from kvmrig.rig.load import load_rig   # here: a cached run never imports the loader
                    self.rigs.append(load_rig(start.parent))   # it loaded once already, for the child
                self.parent[i] = j
            i += 1
        parents = set(self.parent.values())
        self.has_points = bool(self.parent)
        self.pending = [i for i in range(len(self.rigs)) if i in parents] + \
                       [i for i in range(len(self.rigs)) if i not in parents]
        self.finished: dict[int, tuple[bool, object]] = {}

    def done(self, index: int, ok: bool, result: object) -> None:
        self.finished[index] = (ok, result)

    def waiting(self) -> int:
        """Rigs not handed out yet (ready or not)."""
        return len(self.pending)

    def put_back(self, indices: list[int]) -> None:
        """Rigs handed out but never started (their worker died): first in line again."""
        self.pending[:0] = indices

    def next_ready(self) -> tuple[int | None, str | None]:
        """(index, None): hand this rig out; (index, message): record it as an
        error (its parent failed); (None, None): nothing ready now."""
        for k, index in enumerate(self.pending):
            parent = self.parent.get(index)
            if parent is not None and parent not in self.finished:
                continue
            del self.pending[k]
            if parent is not None and not self.finished[parent][0]:
                return index, self._blocked(index, parent)
            return index, None
        return None, None

    def _blocked(self, index: int, parent: int) -> str:
        rig, up = self.rigs[index], self.rigs[parent]
        result = self.finished[parent][1]
        status = getattr(result, "status", "did not pass")
        why = getattr(result, "message", "") or "; ".join(str(f) for f in getattr(
            getattr(result, "outcome", None), "failures", [])[:3])
        return (f"{rig.path}: not run: it starts from {rig.start}, and that rig ({Path(up.path).name}, "
                f"{up.name}) {status}" + (f": {why}" if why else ""))
