"""Attaching GDB to a rig: a GDB Remote Serial Protocol server over TCP.

- protocol: packet framing, checksums, escaping, hex (pure);
- targets: the register layout and target description XML per arch (pure);
- controller: one rig's Session driven stop by stop (breakpoints, steps, the end);
- server: the TCP server speaking to gdb, and `kvmrig debug` / `--gdb-on-fail`.
"""
