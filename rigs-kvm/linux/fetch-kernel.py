"""Put Debian's arm64 cloud kernel (the one the --in-vm arm64 lane boots, from
kvmrig's cache; built there on first use) at build/Image for
debian-arm64.yaml. It is an uncompressed arm64 Image (header magic ARM\\x64).

    python3 rigs-kvm/linux/fetch-kernel.py
"""

import shutil
import sys
from pathlib import Path

from kvmrig.invm.image import ensure_base_image

here = Path(__file__).resolve().parent
target = here / "build" / "Image"
target.parent.mkdir(exist_ok=True)
base = ensure_base_image()
if not target.exists() or target.read_bytes() != base.kernel.read_bytes():
    shutil.copyfile(base.kernel, target)
print(f"{target}: {base.kernel_package or base.kernel.name} ({target.stat().st_size} bytes)", file=sys.stderr)
