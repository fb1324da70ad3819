"""Golden snapshots: "the final state must not change" without writing every
register by hand.

A golden file holds the exit, the final registers (all general-purpose and
control registers, minus VOLATILE and the rig's `ignore:`), the console, and a
SHA-256 of every RAM region. `kvmrig run --update-golden` writes or refreshes
it and says what changed; a plain run compares and fails on any difference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kvmrig.arch.arm64.reset import never_written
from kvmrig.atomic import write_atomic
from kvmrig.errors import RigError
from kvmrig.machine.outcome import Failure, Outcome, num
from kvmrig.rig import hostfiles
from kvmrig.rig.model import Golden, Rig
from kvmrig.rig.yamlmarks import load_yaml

# Registers that differ between hosts or KVM versions for the same guest:
# not part of the snapshot (documented in docs/rig-format.md).
VOLATILE = {
    "x86_64": {"cr8", "cs_base"},
    "arm64": {"midr_el1", "mpidr_el1"},
}
FORMAT = 1


def _snapshot_regs(rig: Rig, golden: Golden, regs: dict[str, int]) -> dict[str, int]:
    """The registers a snapshot holds: all but VOLATILE, the rig's `ignore:`,
    arm64's vector registers, and arm64 registers UNKNOWN at reset that the
    guest never wrote (their value says which backend ran, not what the guest did)."""
    skip = VOLATILE.get(rig.arch, set()) | set(golden.ignore)
    if rig.arch == "arm64":
        skip |= {k for k, v in regs.items() if never_written(k, v) or (k.startswith("v") and k[1:].isdigit())}
    return {k: v for k, v in regs.items() if k not in skip}


def digests(rig: Rig, read) -> list[dict]:
    out = []
    for region in sorted(rig.memory, key=lambda r: r.at):
        if region.rom:
            continue
        h = hashlib.sha256(read(region.at, region.size)).hexdigest()
        out.append({"at": f"{region.at:#x}", "size": f"{region.size:#x}", "sha256": h})
    return out


def snapshot(rig: Rig, golden: Golden, outcome: Outcome, read) -> dict:
    return {
        "kvmrig_golden": FORMAT,
        "exit": outcome.exit,
        "exit_code": outcome.exit_code,
        "regs": {k: f"{v:#x}" for k, v in _snapshot_regs(rig, golden, outcome.regs).items()},
        "console": outcome.console.decode("utf-8", errors="replace"),
        "memory": digests(rig, read),
    }


# The largest golden file read: a snapshot is registers, digests and a console
# that the run already bounds (machine/devices.py CONSOLE_KEEP).
MAX_GOLDEN_BYTES = 16 << 20


def _load(path: Path) -> dict | None:
    """The snapshot, None if there is none, or {"_error": why} — read with the
    rig loader's limits (size, depth, alias expansion, UTF-8), never raising."""
    try:
        raw = hostfiles.read_regular(path, MAX_GOLDEN_BYTES, "golden file")
    except hostfiles.HostFileProblem as e:
        if not path.exists() and not path.is_symlink():
            return None
        return {"_error": str(e)}
    try:
        data, _marks = load_yaml(raw.decode("utf-8"), str(path))
    except UnicodeDecodeError as e:
        return {"_error": f"not UTF-8 text (bad byte at offset {e.start})"}
    except RigError as e:
        return {"_error": str(e)}
    return data if isinstance(data, dict) else {"_error": "not a mapping"}


def _differences(old: dict, new: dict) -> list[tuple[str, str, str]]:
    """(what, golden, now) for every difference."""
    diffs = []
    for key in ("exit", "exit_code"):
        if old.get(key) != new[key]:
            diffs.append((key, str(old.get(key)), str(new[key])))
    old_regs, new_regs = old.get("regs") or {}, new["regs"]
    for name in sorted(set(old_regs) | set(new_regs)):
        a, b = old_regs.get(name), new_regs.get(name)
        if _as_int(a) != _as_int(b):
            diffs.append((f"register {name}", _show(a), _show(b)))
    if (old.get("console") or "") != new["console"]:
        diffs.append(("console", repr(_tail(old.get("console") or "")), repr(_tail(new["console"]))))
    old_mem = {(m.get("at"), m.get("size")): m.get("sha256") for m in old.get("memory") or [] if isinstance(m, dict)}
    for m in new["memory"]:
        was = old_mem.get((m["at"], m["size"]))
        if was != m["sha256"]:
            diffs.append((f"RAM digest {m['at']}+{m['size']}", str(was)[:16], m["sha256"][:16]))
    return diffs


def _as_int(v) -> int | None:
    if v is None:
        return None
    try:
        return int(v, 0) if isinstance(v, str) else int(v)
    except (TypeError, ValueError):
        return None


def _show(v) -> str:
    n = _as_int(v)
    return "absent" if n is None else num(n)


def _tail(text: str) -> str:
    return text if len(text) <= 120 else "..." + text[-120:]


def check(rig: Rig, golden: Golden, outcome: Outcome, read) -> list[Failure]:
    old = _load(golden.file)
    if old is None:
        return [Failure("golden", f"the snapshot in {golden.file}",
                        "no such file; create it with `kvmrig run --update-golden`", golden.mark)]
    if "_error" in old:
        return [Failure("golden", f"a readable snapshot in {golden.file}", old["_error"], golden.mark)]
    return [Failure(f"golden {what}", was, now, golden.mark)
            for what, was, now in _differences(old, snapshot(rig, golden, outcome, read))]


def update(rig: Rig, golden: Golden, outcome: Outcome, read) -> list[str]:
    """Write the snapshot; return notes saying what changed."""
    new = snapshot(rig, golden, outcome, read)
    old = _load(golden.file)
    if old is not None and "_error" not in old:
        diffs = _differences(old, new)
        if not diffs:
            return [f"golden {golden.file.name}: unchanged"]
        notes = [f"golden {golden.file.name}: {what} {was} -> {now}" for what, was, now in diffs]
    else:
        notes = [f"golden {golden.file.name}: created"]
    header = f"# kvmrig golden snapshot for {rig.path.name}: written by `kvmrig run --update-golden`\n"
    import yaml   # here: only --update-golden writes YAML, and PyYAML costs every run ~10 ms to import
    text = header + yaml.safe_dump(new, sort_keys=False, allow_unicode=True, width=100)
    try:
        hostfiles.check_allowed(golden.file)
    except hostfiles.HostFileProblem as e:
        return [f"golden {golden.file.name}: not written: {e}"]
    write_atomic(golden.file, text, prefix=".golden-")
    return notes
