#!/bin/sh
# Set up the x86 Linux guest rig (debian-cloud.yaml in the cache): Debian's own
# cloud kernel (linux-image-cloud-amd64) and busybox-static, fetched with
# `apt-get download` and unpacked with `dpkg -x` into ~/.cache/kvmrig/linux-x86
# (or $KVMRIG_LINUX_CACHE), never installed as the host's kernel; the vmlinux
# is taken out of the bzImage and a busybox initramfs is built beside it
# (python3 -m kvmrig.linuxguest), and linked into rigs-kvm/linux-x86_64/build/
# for the example rig there. Also installs the `lz4` tool the cloud
# kernel's payload needs. Prints the rig's path.
#
# Idempotent: when the cache is complete it does no network access.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KVMRIG_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmrig/linux-x86}

if [ ! -f "$cache/vmlinuz" ] || [ ! -f "$cache/debian-cloud.yaml" ] || [ ! -f "$cache/kallsyms.txt" ]; then
    if ! command -v lz4 >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "setup-linux-guest.sh: needs root once to install lz4 (apt-get install lz4)" >&2
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q lz4 >/dev/null
    fi
    PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" python3 -m kvmrig.linuxguest "$cache" >/dev/null
fi
# The example rig rigs-kvm/linux-x86_64/debian-x86_64.yaml reaches them through
# links in its build/ (a file someone put there instead is left alone).
rigbuild="$here/rigs-kvm/linux-x86_64/build"
mkdir -p "$rigbuild"
for f in vmlinux initramfs.cpio; do
    if [ -L "$rigbuild/$f" ] || [ ! -e "$rigbuild/$f" ]; then
        ln -sfn "$cache/$f" "$rigbuild/$f"
    fi
done
echo "$cache/debian-cloud.yaml"
