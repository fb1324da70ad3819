#!/bin/sh
# Set up kvmrig on a fresh Debian/Ubuntu machine: the Debian packages the
# tests and the guest rebuilds use, then kvmrig itself (editable, with its test
# extra) into the current Python. Idempotent: when everything is
# in place it touches no network and returns in a couple of seconds.
#
#   scripts/setup.sh            packages + pip install
#   SKIP_APT=1 scripts/setup.sh pip install only (no root needed)
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Debian packages: assembler/linker for the x86 guests, the aarch64 binutils
# for the arm64 guests, a C compiler for the KVM ABI guard test and the
# benchmark's C limit, gdb for the debugger tests and gdb-multiarch for arm64
# guests, seabios and u-boot-qemu for the
# firmware rigs, device-tree-compiler (dtc) for the U-Boot rig's device tree,
# swig to build pylibfdt (PyPI ships it as source only) for the arm64 device trees,
# lcov for genhtml (HTML from `kvmrig run --coverage`).
PACKAGES="binutils make gcc libc6-dev binutils-aarch64-linux-gnu seabios u-boot-qemu device-tree-compiler gdb gdb-multiarch swig lcov lz4"

missing=""
for p in $PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ] && [ "${SKIP_APT:-0}" != 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; else SUDO=""; fi
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The arm64 lane: qemu-system-aarch64 and the arm64 package lists (see the script).
if [ "${SKIP_APT:-0}" != 1 ] && [ -x scripts/setup-arm64-lane.sh ]; then
    scripts/setup-arm64-lane.sh
fi

# The x86_64 lane: qemu-system-x86_64 built once from Debian's source with
# kvmrig's patch (nested SVM whose KVM runs the native x86 debug path; see the script).
if [ "${SKIP_APT:-0}" != 1 ] && [ -x scripts/setup-x86-lane.sh ]; then
    scripts/setup-x86-lane.sh
fi

# Install (editable) unless this very checkout is what the Python imports, with the test extra.
here=$(pwd -P)
installed=$(cd / && "$PYTHON" -c "import os, kvmrig, pytest, xdist, xmlschema, unicorn, capstone, elftools, pycobertura, libfdt; print(os.path.dirname(os.path.dirname(os.path.realpath(kvmrig.__file__))))" 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
    echo "setup: pip install -e '.[test]'"
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
fi
# The x86 Linux guest (Debian's cloud kernel + busybox initramfs) in its cache.
if [ "${SKIP_APT:-0}" != 1 ] && [ -x scripts/setup-linux-guest.sh ]; then
    scripts/setup-linux-guest.sh >/dev/null
fi
"$PYTHON" -m kvmrig --version
