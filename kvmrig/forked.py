"""A forked child process, and the messages on the pipes between it and its parent.

The runner's workers are plain fork(2) children: multiprocessing would do the
same fork, but importing it (with socket, subprocess and its connection
module) costs every `kvmrig run` ~7 ms before its first rig, and its Process
adds work per worker that a run of trivial rigs pays on its clock.

A child ends through os._exit: it never runs the parent's atexit handlers
(reports, temporary folders) nor flushes the parent's buffered output twice.
Its end is seen as the end of file on a sentinel pipe only it holds (closed on
exec, so a program it starts does not keep it open), as multiprocessing does.

Messages are length-prefixed pickles: 4 bytes (little-endian) then the pickle.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Callable


class Forked:
    """A child process running `target(*args)`."""

    def __init__(self, target: Callable[..., object], args: tuple = ()):
        readable, writable = os.pipe()
        for stream in (sys.stdout, sys.stderr):   # else the child writes the parent's buffered text again
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            pid = os.fork()
        except BaseException:
            os.close(readable)
            os.close(writable)
            raise
        if pid == 0:   # the child
            code = 1
            try:
                os.close(readable)
                target(*args)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            except KeyboardInterrupt:
                code = 130
            except BaseException:   # a bug in the child: say it where the parent's stderr goes
                import traceback
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError, AttributeError):
                        pass
                os._exit(code)
        os.close(writable)
        self.pid = pid
        self.sentinel = readable     # readable (end of file) once the child is gone
        self.exitcode: int | None = None   # as multiprocessing's: -N for a death from signal N

    def _reap(self, flags: int) -> bool:
        if self.exitcode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:   # reaped elsewhere: gone, status unknown
                self.exitcode = 255
            else:
                if pid == 0:
                    return False
                self.exitcode = os.waitstatus_to_exitcode(status)
        return True

    def is_alive(self) -> bool:
        return not self._reap(os.WNOHANG)

    def join(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` seconds (None: for ever) for the child to end."""
        if self.exitcode is not None:
            return
        if timeout is not None:
            import select
            poller = select.poll()
            poller.register(self.sentinel, select.POLLIN)
            if not poller.poll(max(0.0, timeout) * 1000):
                return
        self._reap(0)

    def kill(self) -> None:
        if self.exitcode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Forget the sentinel (the child must be reaped or killed first)."""
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def frame(obj: object) -> bytes:
    """One message: its pickle's length (4 bytes), then the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(4, "little") + data


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (a signal, such as a rig's timer, may cut a write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


CHUNK = 1 << 16


class Frames:
    """The messages arriving on a pipe, cut from what its reads return."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()

    def _whole(self) -> int:
        """The end of the first whole message in the buffer, or 0."""
        if len(self.buf) < 4:
            return 0
        end = 4 + int.from_bytes(self.buf[:4], "little")
        return end if end <= len(self.buf) else 0

    def next(self) -> object:
        """The next message, waiting for it (EOFError at end of file)."""
        while not (end := self._whole()):
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                raise EOFError
            self.buf += chunk
        msg = pickle.loads(self.buf[4:end])
        del self.buf[:end]
        return msg

    def waiting(self) -> tuple[list, bool]:
        """Every whole message readable now, without waiting (the fd must be
        non-blocking), and whether a read found the end of file (the writer
        gone). A read shorter than CHUNK ends the call, so an end of file
        right behind the data shows at the next call."""
        eof = False
        while True:
            try:
                chunk = os.read(self.fd, CHUNK)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
            if len(chunk) < CHUNK:
                break
        out = []
        while end := self._whole():
            out.append(pickle.loads(self.buf[4:end]))
            del self.buf[:end]
        return out, eof
