"""Write initramfs.cpio for debian-arm64.yaml: /init (the static program
built from init.S) and /dev/console, as a newc archive the kernel unpacks.

    python3 mkinitramfs.py init initramfs.cpio
"""

import sys

from kvmrig.invm.image import CpioWriter

init, out = sys.argv[1:3]
with open(init, "rb") as f:
    program = f.read()
with open(out, "wb") as f:
    w = CpioWriter(f)
    w.mkdir("dev")
    w.chardev("dev/console", 5, 1)
    w.file("init", program, perm=0o755)
    w.close()
