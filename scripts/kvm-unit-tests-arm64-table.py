#!/usr/bin/env python3
"""The table of docs/kvm-unit-tests-arm64.md: every arm64 test of a
kvm-unit-tests unittests.cfg, run the usual way under qemu-system-aarch64
(`-M virt,gic-version=3 -cpu max`, TCG, on this host) and as a kvmrig rig on
real arm64 KVM (the JSON results of `kvmrig run --in-vm arm64`), side by side.

    python3 -m kvmrig import kvm-unit-tests CFG FLATS -o /tmp/kut
    python3 -m kvmrig run --in-vm arm64 /tmp/kut -j 1 --json /tmp/kut.json
    scripts/kvm-unit-tests-arm64-table.py CFG FLATS /tmp/kut.json > table.md

QEMU runs one test at a time with the section's smp ($MAX_SMP = 2), -m and
-machine options, its test_args as -append, and the section's timeout (90 s
by default, at most --timeout-cap); its verdict is the `EXIT: STATUS=N` the suite prints.
kvmrig's column is the rig's status (the `verdict:` key reads the same line
and the PASS/FAIL/SKIP lines, one JUnit testcase each) with that line and
the count of checks it reported.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

from kvmrig.importers.unittests_cfg import DEFAULT_TIMEOUT, max_smp_expr

VERDICT = {1: "PASS", 77: "SKIP", 3: "FAIL", 127: "ABORT"}


def verdict(console: str) -> str:
    m = re.findall(r"EXIT: STATUS=(\d+)", console)
    if not m:
        return "no EXIT line"
    status = int(m[-1])
    summary = re.findall(r"SUMMARY: ([^\n]*)", console)
    return f"{VERDICT.get(status, 'FAIL')} ({status})" + (f", {summary[-1]}" if summary else "")


def run_qemu(sec, flats: Path, max_smp: int, cap: float) -> tuple[str, float]:
    machine = "virt,gic-version=3"
    words = shlex.split(sec.get("qemu_params", ""))
    extra: list[str] = []
    for i, w in enumerate(words):
        if w == "-machine" and i + 1 < len(words):
            machine = "virt," + words[i + 1]
        elif w == "-m" and i + 1 < len(words):
            extra += ["-m", words[i + 1]]
    if "-m" not in extra:
        extra += ["-m", "256"]
    args = sec.get("test_args", "").strip().strip("'\"")
    timeout = min(cap, float(re.sub(r"s$", "", sec.get("timeout", "").strip()) or DEFAULT_TIMEOUT))
    cmd = ["qemu-system-aarch64", "-nodefaults", "-machine", machine, "-accel", "tcg", "-cpu", "max",
           "-smp", str(max_smp_expr(sec.get("smp", "1"), max_smp)), *extra, "-display", "none",
           "-serial", "stdio", "-no-reboot", "-kernel", str(flats / sec["file"])]
    if args:
        cmd += ["-append", args]
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
        return verdict(out) if "EXIT" in out else f"no EXIT line: {(out.strip().splitlines() or ['(no output)'])[-1][:80]}", \
            time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return f"timeout ({timeout:g} s)", time.monotonic() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cfg", type=Path)
    p.add_argument("flats", type=Path)
    p.add_argument("kvmrig_json", type=Path)
    p.add_argument("--max-smp", type=int, default=2)
    p.add_argument("--timeout-cap", type=float, default=45.0, help="at most this many seconds per QEMU run")
    a = p.parse_args()
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(a.cfg)
    results = {r["name"].removeprefix("kvm-unit-tests-arm64-"): r
               for r in json.loads(a.kvmrig_json.read_text())["rigs"]}
    print("| test | QEMU TCG: verdict | time | kvmrig on arm64 KVM: verdict | time |")
    print("|---|---|---|---|---|")
    for name in cfg.sections():
        sec = cfg[name]
        if sec.get("arch", "arm64") != "arm64":
            continue
        q, qt = run_qemu(sec, a.flats, a.max_smp, a.timeout_cap)
        r = results.get(name)
        if r is None:
            k, kt = "not run", ""
        elif r["status"] == "error":
            k, kt = f"error: {r['message'][:90]}", ""
        else:
            subtests = r.get("subtests", [])
            k = f"{r['status']}: " + verdict(r.get("console", "")) + f"; {len(subtests)} testcases" + (
                "" if r["status"] in ("passed", "skipped") else f" [{r['exit']['reason']}]")
            kt = f"{r['duration']:.2f} s"
        print(f"| {name} | {q} | {qt:.2f} s | {k} | {kt} |", flush=True)


if __name__ == "__main__":
    main()
