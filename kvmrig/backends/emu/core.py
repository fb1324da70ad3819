"""What both emulator backends share: memory, the emulation thread, MMIO,
ROM writes, breakpoints, watchpoints, single-step and the timeout.

The emulation thread
--------------------
Unicorn calls back into Python from inside an instruction, and some answers
must be given right there: the value an `in` or an MMIO load returns. The
Backend interface, though, hands every access to the machine layer as an
Event from run() and gets the answer through complete_read() before the
next run(). So `emu_start` runs on a worker thread of this backend:

* a *blocking* hook (port I/O, MMIO) posts its Event to run(), which
  returns it, and waits; the next run() resumes it with the answer. The
  instruction then completes exactly as on KVM, with the device's value.
  KVM reports a *write* (OUT, an MMIO store) with the instruction already
  complete (the pc after it); so when the machine reads registers while a
  write waits, the backend first completes that instruction (`_settle`):
  an OUT just runs on to the next instruction; an MMIO store, which unicorn
  would restart, is run once more with device writes muted and the loads it
  made before answered again from a log, so the device sees each access once.
* a *stopping* hook (breakpoint, watchpoint, exception, PSCI) records its
  Event and calls emu_stop; run() returns it once emu_start has returned,
  so the machine layer may change registers and memory (breakpoint patches,
  `set`) while no translated code is running.

An exception raised in a hook does not cross the C boundary: every hook is
wrapped by `_guard`, which records the exception, stops the emulator, and
run() re-raises it once emu_start has returned.

Every emu_start is given an instruction count (1 for a single-step, else a
practically infinite budget), so unicorn's own counting hook is in every
translated block from the start (unicorn does not flush translations when
counting is switched on later, and an uncounted block would ignore count=1).

Unicorn checks for a stop request right after every memory access and then
restarts the instruction from its beginning; so no hook that sees an access
may call emu_stop, or the instruction would run twice. A watchpoint's
memory hook only records the hit; while watchpoints are armed a code hook
on every instruction reports it before the next instruction starts, so the
hit is seen after the access with the next pc, as a data breakpoint trap is
on KVM (this makes the emulator slower while watchpoints are armed).

Translated code is flushed whenever it may be stale: after breakpoints or
watchpoints change (unicorn bakes code hooks into translated blocks) and
after every debug stop, when the machine layer may have lifted or planted a
breakpoint instruction or written memory with `set`.

Memory
------
RAM and ROM are the machine layer's own buffers, mapped with mem_map_ptr, so
images, checks and breakpoint patches see the one copy the guest runs on.
ROM is mapped read+exec: a guest write raises unicorn's write-protection
hook, which stops the emulator before the store; that one instruction is
then run again with the ROM page writable and the page's bytes put back
right after it, and the MMIO write event is reported: the store is not
applied and the instruction has completed, as with KVM_MEM_READONLY. Any other address is MMIO: the first access to an
unmapped page maps that page with unicorn's MMIO callbacks (lazily, so no
map of the whole physical space is needed), and every access to it becomes
an MMIO event; a load gets the machine's complete_read() answer.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections.abc import Collection
from typing import Any

from unicorn import UcError
from unicorn import unicorn_const as U

from kvmrig.arch.traits import traits
from kvmrig.backends.base import Backend, HwSlot
from kvmrig.backends.events import Event, Halt, HwBreak, Mmio, PortIO, Step, SwBreak, Timeout, Unhandled, WatchHit
from kvmrig.errors import BackendError

BUDGET = 1 << 62          # "run until something happens" as an instruction count
STOP_RETRY = 0.01         # seconds between emu_stop calls once the deadline passed
ACCESS_SPAN = 15          # widest access unicorn reports at once is 16 bytes: hook ranges start this far early
REHOOK_MIN = 1000         # coverage: block-hook calls between re-hookings
MAX_BLOCK_HOOKS = 4096    # coverage: block hooks over the code not yet seen, at most
_QUIT = object()
_ABORT = object()

# Unicorn errors that mean the guest did something the emulator cannot go on
# from, with what to tell the user. (A test checks every key is a unicorn
# error code; nothing can catch a key written twice in this literal.)
ERROR_TEXT = {
    U.UC_ERR_FETCH_UNMAPPED: "the guest jumped to {addr}, where no RAM or ROM region is "
                             "(instructions cannot be fetched from MMIO)",
    U.UC_ERR_FETCH_PROT: "the guest fetched an instruction from {addr}, which is not executable",
    U.UC_ERR_READ_UNMAPPED: "the guest read {addr}, which the emulator could not map as MMIO",
    U.UC_ERR_WRITE_UNMAPPED: "the guest wrote {addr}, which the emulator could not map as MMIO",
    U.UC_ERR_READ_PROT: "the guest read {addr}, which is mapped without read permission",
    U.UC_ERR_MAP: "the emulator lost the mapping of {addr} during an access",
    U.UC_ERR_EXCEPTION: "the CPU raised an exception the emulator backend does not handle",
    U.UC_ERR_INSN_INVALID: "the guest executed an invalid instruction",
}


class _Aborted(Exception):
    """The run is over while a hook waited for an answer: unwind quietly."""


class EmuBackendBase(Backend):
    """Unicorn with the machine's memory, on a worker thread; arch subclasses
    add registers, the boot state, port I/O and exceptions."""

    name = "emu"
    PC_REG = 0   # unicorn's id of the pc register (arch subclasses)

    def __init__(self) -> None:
        self.uc = self._create()
        self.page = self.uc.ctl_get_page_size()
        self._views: list[Any] = []                 # ctypes arrays pinning the machine's buffers
        self._regions: list[tuple[int, int, bool, Any]] = []   # (start, end, rom, view)
        self._mmio_pages: set[int] = set()
        self._mmio_hooks: list[int] = []
        # The worker thread and what passes between it and run().
        self._thread: threading.Thread | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()    # to the worker
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()   # to run()
        self._in_hook: str | None = None   # the worker waits in a blocking hook: "read" | "write"
        self._hook_src = ""                # what waits: "port" | "mmio"
        self._answers: list[tuple[int, bytes]] = []   # (pc, data) of recent reads, for _settle
        self._mute = False                 # _settle's rerun: device accesses are not events
        self._running = False          # an emu_start is under way (in a hook or not)
        self._answer = b""
        self._closed = False
        # What stopped the emulator.
        self._stop_event: Event | None = None
        self._hook_error: BaseException | None = None
        self._timed_out = False
        self._rom_write: tuple[int, int] | None = None      # (addr, size) of the last ROM store
        self._replay: list[tuple[int, bytes]] | None = None  # ROM pages to put back after a replay
        self._rom_event: Event | None = None
        self._replayed = False
        # Watch hits of the running instruction, one per slot: (slot, watched address, access size, write).
        self._watch_pending: list[tuple[int, int, int, bool]] = []
        self._pending: list[Event] = []
        # Debug state.
        self._single_step = False
        self._exec_at: dict[int, list[int]] = {}    # address -> exec slot indexes
        self._sw: frozenset[int] = frozenset()
        self._sw_insn = self.sw_break_insn()
        self._watches: list[tuple[int, HwSlot]] = []
        self._code_hooks: list[int] = []
        self._watch_hooks: list[int] = []
        self._debug_key: tuple = ((), frozenset(), ())
        self._skip: tuple[int, frozenset] | None = None      # (pc, reported at pc) for the next start
        self._just_hit: tuple[int, frozenset] | None = None
        self._flush = False
        # Coverage (record_blocks): blocks seen, and the hooks over code not yet seen.
        self._cov_sink = None
        self._cov_seen: dict[int, int] = {}
        self._cov_gaps: dict[tuple[int, int], int] = {}   # hooked [begin, end] -> hook handle
        self._cov_calls = 0
        self._cov_limit = REHOOK_MIN
        self._cov_pause = False
        self._cov_new: list[tuple[int, int]] = []   # blocks first seen since the last re-hooking
        self._cov_last: tuple[int, int, int] | None = None  # a new block (addr, size, epoch), reported
        #                                                      once control leaves it
        self._cov_restart = False  # the next hook of the pending block is a restart (_on_unmapped)
        self._cov_epoch = 0        # emu_start calls so far
        self._install_base_hooks()

    # Arch hooks ----------------------------------------------------------
    def _create(self):
        raise NotImplementedError

    def _linear_pc(self) -> int:
        """The address of the next instruction as hooks see it."""
        return self.get_pc()

    def _start_pc(self) -> int:
        """The `begin` argument of emu_start that resumes where the CPU is."""
        return self.get_pc()

    def _natural_stop(self) -> Event:
        """emu_start returned for no reason of ours (x86 HLT, arm64 WFI)."""
        return Halt(self.get_pc())

    def _error_event(self, err: UcError) -> Event | None:
        """An emulation error as an event (None: handled, run on)."""
        code = err.errno
        addr = self._fault_addr
        text = ERROR_TEXT.get(code)
        if text is None:
            text = f"unicorn error {code} ({err})"
        where = f"{addr:#x}" if addr is not None else "an unknown address"
        return Unhandled(self.get_pc(), f"{text.format(addr=where)} (pc {self.get_pc():#x}; emulator backend)", code)

    def _on_interrupt(self, intno: int) -> None:
        """UC_HOOK_INTR, on the worker thread: record a stop event and emu_stop."""
        raise NotImplementedError

    # Memory ----------------------------------------------------------------
    def map_memory(self, gpa: int, buf, rom: bool) -> None:
        size = len(buf)
        if gpa % self.page or size % self.page:
            raise BackendError(f"memory region {gpa:#x}+{size:#x} is not aligned to the emulator's "
                               f"{self.page:#x}-byte pages")
        view = (ctypes.c_char * size).from_buffer(buf)
        if any(start == gpa and end == gpa + size and r == rom and ctypes.addressof(v) == ctypes.addressof(view)
               for start, end, r, v in self._regions):
            return  # a reused emulator: this buffer backs this range already
        self._views.append(view)
        perms = U.UC_PROT_READ | U.UC_PROT_EXEC if rom else U.UC_PROT_ALL
        self.uc.mem_map_ptr(gpa, size, perms, ctypes.addressof(view))
        self._regions.append((gpa, gpa + size, rom, view))

    def peek(self, gpa: int, length: int) -> bytes | None:
        """Guest-physical bytes straight from the machine's buffers (None outside RAM/ROM)."""
        for start, end, _rom, view in self._regions:
            if start <= gpa and gpa + length <= end:
                off = gpa - start
                return bytes(view[off:off + length])
        return None

    def poke(self, gpa: int, data: bytes) -> bool:
        for start, end, _rom, view in self._regions:
            if start <= gpa and gpa + len(data) <= end:
                off = gpa - start
                view[off:off + len(data)] = data
                return True
        return False

    # Hooks every run has -----------------------------------------------------
    def _guard(self, fn, default=None):
        """Wrap a hook: an exception is recorded and stops the emulator
        (it cannot cross unicorn's C frames); run() re-raises it."""
        def hook(uc, *args):
            try:
                return fn(*args)
            except _Aborted:
                uc.emu_stop()
                return default
            except BaseException as e:  # noqa: BLE001 - re-raised by run()
                if self._hook_error is None:
                    self._hook_error = e
                uc.emu_stop()
                return default
        return hook

    def _install_base_hooks(self) -> None:
        uc = self.uc
        self._fault_addr: int | None = None
        uc.hook_add(U.UC_HOOK_MEM_READ_UNMAPPED | U.UC_HOOK_MEM_WRITE_UNMAPPED,
                    self._guard(self._on_unmapped, False))
        uc.hook_add(U.UC_HOOK_MEM_FETCH_UNMAPPED | U.UC_HOOK_MEM_FETCH_PROT | U.UC_HOOK_MEM_READ_PROT,
                    self._guard(self._on_bad_access, False))
        uc.hook_add(U.UC_HOOK_MEM_WRITE_PROT, self._guard(self._on_rom_write, False))
        uc.hook_add(U.UC_HOOK_INTR, self._guard(self._on_interrupt))

    def _block(self, event: PortIO | Mmio, src: str) -> bytes:
        """On the worker thread: hand `event` to run() and wait for the next run()
        (for a read, its answer). While _settle reruns an instruction, nothing
        is handed over: writes are dropped, reads answered from the log."""
        pc = self.uc.reg_read(self.PC_REG)
        if self._mute:
            if not event.write:
                for i, (at, data) in enumerate(self._answers):
                    if at == pc:
                        del self._answers[i]
                        return data
            return b""
        if self._closed:
            raise _Aborted
        self._outbox.put(("event", event, src))
        reply = self._inbox.get()
        if reply is _ABORT:
            raise _Aborted
        if not event.write:
            self._answers = [a for a in self._answers[-3:] if a[0] == pc] + [(pc, reply)]
        return reply

    def _on_unmapped(self, access: int, addr: int, size: int, value: int, _ud=None) -> bool:
        """First touch of a page no region backs: make it an MMIO page and retry."""
        page = addr & ~(self.page - 1)
        if page in self._mmio_pages:
            self._fault_addr = addr
            return False
        try:
            self.uc.mmio_map(page, self.page, self._guard(self._mmio_read, 0), page,
                             self._guard(self._mmio_write), page)
        except UcError:
            self._fault_addr = addr
            return False
        self._mmio_pages.add(page)
        # A memory hook on the page makes unicorn sync the pc before each
        # access, so the registers of an MMIO event show the accessing instruction.
        self._mmio_hooks.append(self.uc.hook_add(U.UC_HOOK_MEM_READ | U.UC_HOOK_MEM_WRITE, _noop_mem,
                                                 begin=page, end=page + self.page - 1))
        self._cov_restart = True   # unicorn runs the block again from its start: not a second pass
        return True

    def _mmio_read(self, offset: int, size: int, page: int) -> int:
        data = self._block(Mmio(page + offset, size, False), "mmio")
        return int.from_bytes(data[:size].ljust(size, b"\xff"), "little")

    def _mmio_write(self, offset: int, size: int, value: int, page: int) -> None:
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._block(Mmio(page + offset, size, True, data), "mmio")

    def _on_rom_write(self, access: int, addr: int, size: int, value: int, _ud=None) -> bool:
        """A store to ROM: stop before it; the event follows the rerun (module doc)."""
        if self._stop_event is None:
            data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            self._stop_event = Mmio(addr, size, True, data)
            self._rom_write = (addr, size)
        return False  # declined: unicorn stops and restarts the instruction later

    def _on_bad_access(self, access: int, addr: int, size: int, value: int, _ud=None) -> bool:
        self._fault_addr = addr
        return False

    # Debug ---------------------------------------------------------------------
    def hw_debug_slots(self) -> tuple[int, int, bool]:
        return traits(self.arch).hw_slots

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: Collection[int]) -> None:
        self._single_step = single_step
        exec_at: dict[int, list[int]] = {}
        watches = []
        for i, s in enumerate(slots):
            if s.kind == "exec":
                exec_at.setdefault(s.addr, []).append(i)
            else:
                watches.append((i, s))
        sw = frozenset(sw_breakpoints or ())
        key = (tuple(sorted((a, tuple(v)) for a, v in exec_at.items())), sw, tuple(watches))
        if key == self._debug_key:
            return
        self._debug_key = key
        self._exec_at, self._sw, self._watches = exec_at, sw, watches
        uc = self.uc
        for h in self._code_hooks + self._watch_hooks:
            uc.hook_del(h)
        self._code_hooks, self._watch_hooks = [], []
        if watches:  # first in the list: a pending watch hit is reported before a breakpoint there
            self._code_hooks.append(uc.hook_add(U.UC_HOOK_CODE, self._guard(self._on_every_insn), begin=1, end=0))
        on_code = self._guard(self._on_code)
        for addr in sorted(set(exec_at) | sw):
            self._code_hooks.append(uc.hook_add(U.UC_HOOK_CODE, on_code, begin=addr, end=addr))
        for i, s in watches:
            kinds = {"read": U.UC_HOOK_MEM_READ, "write": U.UC_HOOK_MEM_WRITE,
                     "access": U.UC_HOOK_MEM_READ | U.UC_HOOK_MEM_WRITE}[s.kind]
            self._watch_hooks.append(uc.hook_add(kinds, self._guard(self._make_watch(i, s)),
                                                 begin=max(s.addr - ACCESS_SPAN, 0),
                                                 end=s.addr + s.length - 1))
        self._flush = True  # code hooks live in translated blocks

    # Coverage ------------------------------------------------------------------
    # A block hook reports each executed block. Calling Python at every block
    # would cost firmware loops dearly, so the hooks cover only code not seen
    # yet: after REHOOK_MIN calls the hook stops the emulator at the start of
    # a block (nothing of it has run: unicorn checks the stop request before
    # the block's first instruction), the hooks are re-laid over the gaps
    # between the blocks seen, the newly seen blocks are translated again, and the run resumes
    # where it stopped, invisibly to the machine layer.
    def record_blocks(self, sink) -> bool:
        self._cov_sink = sink
        self._cov_gaps = {(0, (1 << 64) - 1): self.uc.hook_add(U.UC_HOOK_BLOCK, self._on_block,
                                                               begin=0, end=(1 << 64) - 1)}
        self._flush = True  # blocks translated before this have no hook in them
        return True

    def _on_block(self, _uc, addr: int, size: int, _ud=None) -> None:
        if self._mute:
            return            # _settle completing an instruction that already ran
        last = self._cov_last
        restart, self._cov_restart = self._cov_restart, False
        if last is not None and last[0] == addr and (restart or last[2] != self._cov_epoch):
            # The pending block starts over in a new emu_start (the last one ended before it
            # ran, e.g. a single-step's count) or after a retried access: still pending.
            self._cov_last = (addr, size, self._cov_epoch)
            return
        if last is not None:   # control left it: it ran to here, or to its end
            self._cov_last = None
            pa, ps, _ = last
            self._cov_commit(pa, addr - pa if pa < addr < pa + ps else ps)
        self._cov_calls += 1
        if self._cov_calls >= self._cov_limit and not self._single_step and not self._cov_pause:
            self._cov_pause = True
            self.uc.emu_stop()
            return            # nothing of this block runs now; its hook fires again at the restart
        if self._cov_seen.get(addr, 0) < size:
            self._cov_last = (addr, size, self._cov_epoch)

    def _cov_commit(self, addr: int, size: int) -> None:
        if self._cov_seen.get(addr, 0) < size:
            self._cov_seen[addr] = size
            self._cov_new.append((addr, size))
            self._cov_sink(addr, size)

    def blocks_done(self, stop: int | None) -> None:
        """The run is over: report the new block it ended in, up to where it stopped
        (a block's hook fires before it runs, so its end is known only now)."""
        last, self._cov_last = self._cov_last, None
        if last is None:
            return
        addr, size, _ = last
        if stop is None:
            self._settle()
            stop = self._linear_pc()
        end = stop if addr <= stop < addr + size else addr + size
        if end > addr:
            self._cov_commit(addr, end - addr)

    def _rehook_blocks(self) -> None:
        """Lay the block hooks over the gaps between the blocks seen (outside emu_start)."""
        self._cov_pause = False
        seen: list[list[int]] = []
        for lo, hi in sorted((a, a + s) for a, s in self._cov_seen.items()):
            if seen and lo <= seen[-1][1]:
                seen[-1][1] = max(seen[-1][1], hi)
            else:
                seen.append([lo, hi])
        # Keep the hook count bounded: leave only the largest seen ranges out.
        skip = sorted(sorted(seen, key=lambda r: r[0] - r[1])[:MAX_BLOCK_HOOKS - 1])
        gaps, at = [], 0
        for lo, hi in skip + [[1 << 64, 1 << 64]]:
            if lo > at:
                gaps.append((at, lo - 1))
            at = hi
        # Adding a hook costs tens of microseconds in the binding: change only the
        # gaps the new blocks split, keep the hooks of the others.
        uc, old = self.uc, self._cov_gaps
        for gap in set(old) - set(gaps):
            uc.hook_del(old.pop(gap))
        for gap in gaps:
            if gap not in old:
                old[gap] = uc.hook_add(U.UC_HOOK_BLOCK, self._on_block, begin=gap[0], end=gap[1])
        self._cov_limit = self._cov_calls + REHOOK_MIN
        # Only the blocks seen since the last time carry a hook call they no longer
        # need: translate them again; the rest of the translations stay right.
        new, self._cov_new = self._cov_new, []
        for addr, size in new:
            uc.ctl_remove_cache(addr, addr + size)

    def _on_code(self, addr: int, size: int, _ud=None) -> None:
        """A breakpoint address is about to execute: report each point there once."""
        done: frozenset = frozenset()
        skip = self._skip
        if skip is not None:
            self._skip = None
            if skip[0] == addr:
                done = skip[1]
        for slot in self._exec_at.get(addr, ()):
            if ("hw", slot) not in done:
                self._hit(HwBreak(addr, slot), done | {("hw", slot)})
                return
        if addr in self._sw and "sw" not in done and self.peek(addr, len(self._sw_insn)) == self._sw_insn:
            self._hit(SwBreak(addr), done | {"sw"})

    def _hit(self, event: HwBreak | SwBreak, reported: frozenset) -> None:
        if self._stop_event is None:
            self._stop_event = event
            self._just_hit = (event.pc, reported)
        self.uc.emu_stop()

    def _make_watch(self, index: int, slot: HwSlot):
        lo, hi = slot.addr, slot.addr + slot.length

        def on_access(access: int, addr: int, size: int, value: int, _ud=None) -> None:
            pending = self._watch_pending
            if addr < hi and lo < addr + size and all(p[0] != index for p in pending):
                # Only recorded: reported before the next instruction (module doc).
                pending.append((index, lo, size, access == U.UC_MEM_WRITE))
        return on_access

    def _on_every_insn(self, addr: int, size: int, _ud=None) -> None:
        if self._watch_pending and self._stop_event is None:
            self._stop_event = self._take_watches(addr)
            self.uc.emu_stop()

    def _take_watches(self, pc: int) -> WatchHit:
        """One event for the watch hits of an instruction: every slot that
        fired, the first one's address, access size and direction."""
        hits, self._watch_pending = self._watch_pending, []
        _slot, addr, size, write = hits[0]
        return WatchHit(pc, addr, tuple(h[0] for h in hits), size, write)

    # Running -------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job = self._inbox.get()
            if job is _QUIT:
                return
            if job is _ABORT:  # a stale abort for a hook that has already returned
                continue
            begin, count = job
            self._cov_epoch += 1
            err = None
            try:
                self.uc.emu_start(begin, 0, count=count)
            except UcError as e:
                err = e
            except BaseException as e:  # noqa: BLE001 - a hook error the binding re-raised
                if self._hook_error is None:
                    self._hook_error = e
            self._outbox.put(("done", err))

    def _launch(self) -> None:
        if self._thread is None:
            uc = self.uc
            uc.ctl_exits_enabled(True)   # `until` means nothing: stops are ours alone
            uc.ctl_set_exits([])
            self._thread = threading.Thread(target=self._worker, name="kvmrig-emu", daemon=True)
            self._thread.start()
        if self._flush:
            self.uc.ctl_flush_tb()
            self._flush = False
        hit, self._just_hit = self._just_hit, None
        self._skip = hit if hit is not None and hit[0] == self._linear_pc() else None
        self._stop_event = None
        self._fault_addr = None
        self._timed_out = False
        self._running = True
        self._inbox.put((self._start_pc(), 1 if self._single_step else BUDGET))

    def _rom_pages(self, addr: int, size: int) -> list[tuple[int, int]]:
        first, last = addr & ~(self.page - 1), (addr + size - 1) & ~(self.page - 1)
        return [(p, self.page) for p in range(first, last + self.page, self.page)
                if any(s <= p < e and rom for s, e, rom, _v in self._regions)]

    def _begin_replay(self, addr: int, size: int) -> None:
        """Run the ROM-writing instruction once with its page(s) writable; _end_replay undoes the store."""
        pages = self._rom_pages(addr, size)
        self._replay = [(p, self.peek(p, n) or b"") for p, n in pages]
        for p, n in pages:
            self.uc.mem_protect(p, n, U.UC_PROT_ALL)

    def _end_replay(self) -> None:
        saved, self._replay = self._replay, None
        for p, data in saved or ():
            self.poke(p, data)
            self.uc.mem_protect(p, len(data), U.UC_PROT_READ | U.UC_PROT_EXEC)
            self.uc.ctl_remove_cache(p, p + len(data))

    def run(self, deadline: float) -> Event:
        if self._closed:
            raise BackendError("the emulator backend was closed")
        if self._in_hook:
            self._in_hook = None
            answer, self._answer = self._answer, b""
            self._running = True
            self._inbox.put(answer)
        else:
            if self._pending:
                return self._pending.pop(0)
            if time.monotonic() >= deadline:
                return Timeout(self.get_pc())
            self._launch()
        return self._wait(deadline)

    def _wait(self, deadline: float) -> Event:
        stopping = False
        while True:
            wait = STOP_RETRY if stopping else max(deadline - time.monotonic(), 0.0)
            try:
                kind, payload, *src = self._outbox.get(timeout=wait)
            except queue.Empty:
                # Past the deadline: stop the emulator (again, in case a stop
                # landed between two emu_starts and was reset by the second).
                stopping = self._timed_out = True
                self.uc.emu_stop()
                continue
            if kind == "event":
                self._in_hook = "write" if payload.write else "read"
                self._hook_src = src[0]
                return payload
            self._running = False
            if self._replay is not None:   # the ROM-writing instruction has run again: report its write
                self._end_replay()
                rom_event, self._rom_event = self._rom_event, None
                self._replayed = True
                try:
                    event = self._finished(payload)
                finally:
                    self._replayed = False
                if event is not None:   # the single-step that ran it, or what the next instruction did
                    self._pending.append(event)
                return rom_event
            event = self._finished(payload)
            if type(event) is Mmio and self._rom_write is not None:
                # Stopped before a ROM store: run that instruction with the page
                # writable, put the bytes back, then report the write.
                self._rom_event = event
                self._begin_replay(*self._rom_write)
                self._rom_write = None
                self._running = True
                self._inbox.put((self._start_pc(), 1))
                continue
            if event is not None:
                return event
            if time.monotonic() >= deadline:
                return Timeout(self.get_pc())
            self._running = True
            self._stop_event = None
            self._inbox.put((self._start_pc(), 1 if self._single_step else BUDGET))

    def _finished(self, err: UcError | None) -> Event | None:
        """emu_start returned: the event that ends this run(), or None to go on."""
        if self._hook_error is not None:
            e, self._hook_error = self._hook_error, None
            raise BackendError(f"the emulator backend failed in a hook: {type(e).__name__}: {e}") from e
        self._flush = True  # the machine may write memory or registers before the next start
        paused = self._cov_pause
        if paused:
            self._rehook_blocks()   # the coverage hook stopped the emulator (record_blocks)
        event, self._stop_event = self._stop_event, None
        if event is None and self._watch_pending:   # a single-step ended first
            event = self._take_watches(self._linear_pc())
        if event is not None:
            return self._stopped(event)
        if self._timed_out:
            return Timeout(self.get_pc())
        if err is not None:
            return self._error_event(err)
        if self._replayed:   # the ROM-writing instruction ran (count 1)
            return Step(self._linear_pc()) if self._single_step else None
        if self._single_step:
            return Step(self._linear_pc())
        if paused:
            return None    # run on from the block the coverage hook stopped at
        return self._natural_stop()

    def _stopped(self, event: Event) -> Event | None:
        """A hook's stop event (arch hook: e.g. an exception handled in place → None)."""
        return event

    def complete_read(self, data: bytes) -> None:
        self._answer = bytes(data)

    def _settle(self) -> None:
        """Complete the instruction whose write waits in a hook (module doc),
        so registers read now are those KVM shows at a write exit."""
        if self._in_hook != "write" or self._closed:
            return
        self._in_hook = None
        self.uc.emu_stop()       # stop at the next check: after the OUT; right after the store (restarted)
        self._inbox.put(b"")
        self._drain()
        if self._hook_src == "mmio":
            self._mute = True
            try:
                self._running = True
                self._inbox.put((self._start_pc(), 1))
                self._drain()
            finally:
                self._mute = False
        self._flush = True

    def _drain(self) -> None:
        """Wait for the worker's emu_start to return (used where no event may pass)."""
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                kind, *_ = self._outbox.get(timeout=STOP_RETRY)
            except queue.Empty:
                continue
            if kind == "done":
                self._running = False
                self._stop_event = None
                self._watch_pending = []
                self._hook_error = None
                return
            self._inbox.put(b"")   # an access the muted rerun could not avoid: let it pass
        raise BackendError("the emulator did not stop while completing an instruction")

    def _abort_run(self) -> bool:
        """End an emu_start that is still under way (a hook waiting for an
        answer is aborted, a running guest stopped until it returns); the
        worker thread stays. False if it would not stop."""
        if not self._running or self._thread is None:
            return True
        self._timed_out = True
        self.uc.emu_stop()
        if self._in_hook:
            self._inbox.put(_ABORT)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                kind, *_ = self._outbox.get(timeout=STOP_RETRY)
            except queue.Empty:
                self.uc.emu_stop()
                continue
            if kind == "done":
                self._running = False
                return True
            self._inbox.put(_ABORT)
        return False

    # Reuse: unicorn's context save/restore ---------------------------------------
    def keep_pristine(self) -> None:
        """Remember the CPU as created (unicorn context), for reset()."""
        self._pristine = self.uc.context_save()

    def track_dirty(self) -> None:
        """Unicorn keeps no dirty log: dirty_ranges() says so and the machine
        gives every region fresh zero pages."""

    def dirty_ranges(self) -> list[tuple[int, int]] | None:
        return None

    def park(self) -> None:
        """Nothing runs between rigs: the emulator's timeout lives in run()."""

    def reusable(self) -> bool:
        # A run that ended mid-instruction (a UART `idle:` point, a timeout)
        # is still reusable: reset() ends it first, and a VM that would not
        # stop makes reset() raise, so the pool closes it instead.
        return not self._closed and (self._thread is None or self._thread.is_alive())

    def reset(self) -> None:
        """The CPU back to its created context; MMIO pages, hooks and every
        record of the last run gone, translations flushed."""
        if not self._abort_run():
            raise BackendError("the emulator did not stop, so it cannot be reset")
        if self._replay is not None:
            self._end_replay()
        uc = self.uc
        uc.context_restore(self._pristine)
        for h in self._mmio_hooks:
            uc.hook_del(h)
        for page in self._mmio_pages:
            uc.mem_unmap(page, self.page)
        self._mmio_pages, self._mmio_hooks = set(), []
        self.set_debug([], False, ())
        self._debug_key = ((), frozenset(), ())
        self._in_hook, self._hook_src, self._answers, self._mute = None, "", [], False
        self._running, self._answer = False, b""
        self._stop_event, self._hook_error, self._timed_out = None, None, False
        self._rom_write, self._rom_event, self._replayed = None, None, False
        self._watch_pending, self._pending = [], []
        self._single_step, self._skip, self._just_hit = False, None, None
        self._forget_arch()
        uc.ctl_flush_tb()
        self._flush = False

    def export_cpu(self) -> dict:
        """The CPU as text: registers by name (to read) and unicorn's context
        (to load; only the same unicorn version can)."""
        import pickle
        import unicorn
        self._settle()
        text = {"regs": {k: hex(v) for k, v in self.get_regs().items()}, "unicorn": unicorn.__version__,
                "context": pickle.dumps(self.uc.context_save()).hex()}
        arch = self._arch_text()
        if arch is not None:
            text["arch"] = arch   # the neutral form KVM loads
        return text

    def _arch_text(self) -> dict | None:
        """Arch hook: the CPU in the arch's neutral form (a KVM backend loads
        it), or None where the arch has none."""
        return None

    def import_arch(self, text: dict) -> None:
        """Load the neutral state a KVM backend took; BackendError naming what
        the emulator cannot hold."""
        if not self._abort_run():
            raise BackendError("the emulator did not stop, so it cannot load a state")
        self._load_arch(text)
        self.uc.ctl_flush_tb()

    def _load_arch(self, text: dict) -> None:
        raise BackendError(f"the {self.arch} emulator cannot load another backend's CPU state")

    def import_cpu(self, text: dict) -> None:
        import pickle
        import unicorn
        if text.get("unicorn") != unicorn.__version__:
            raise BackendError(f"the saved emulator state is from unicorn {text.get('unicorn')}; this is "
                               f"unicorn {unicorn.__version__}, which cannot load its context")
        try:
            ctx = pickle.loads(bytes.fromhex(text["context"]))
        except Exception as e:  # noqa: BLE001 - any damage is the file's
            raise BackendError(f"the saved emulator context is malformed ({type(e).__name__})") from None
        if not self._abort_run():
            raise BackendError("the emulator did not stop, so it cannot load a state")
        self.uc.context_restore(ctx)
        self.uc.ctl_flush_tb()

    def _forget_arch(self) -> None:
        """Arch hook: drop what the arch subclass remembers of the last run."""

    # Closing ------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._abort_run()
            self._inbox.put(_QUIT)
            thread.join(5)
            self._thread = None
        self._running = False
        self._in_hook = None
        uc, self.uc = self.uc, None
        if uc is not None and (thread is None or not thread.is_alive()):
            try:
                for start, end, _rom, _view in self._regions:
                    uc.mem_unmap(start, end - start)
            except UcError:
                pass
            del uc
        # Drop our views so the machine can close its mmaps.
        self._regions = []
        self._views = []


def _noop_mem(uc, access, addr, size, value, user_data) -> None:
    """A memory hook whose only job is to make unicorn sync the pc first."""
