#!/bin/sh
# Set up the host for kvmrig's benchmark (python bench/run.py):
#   * a C compiler and the kernel headers (linux/kvm.h) to build bench/limit.c,
#     the raw-ioctl limit (Debian: gcc, libc6-dev, linux-libc-dev);
#   * qemu-system-x86_64 (Debian: qemu-system-x86), the alternative the suite
#     rows compare against (-M microvm / -M pc, -accel kvm / tcg).
# /dev/kvm itself is the host's business: the benchmark needs it and says so.
#
# Idempotent and quiet: when everything is in place it does no network access
# and returns at once. Needs root for apt-get (uses sudo when run as another
# user and sudo exists). Profiling extras (py-spy) are optional: see bench/README.md.
set -eu

need=""
command -v cc >/dev/null 2>&1 || need="$need gcc libc6-dev"
[ -f /usr/include/linux/kvm.h ] || need="$need linux-libc-dev"
[ -f /usr/include/stdio.h ] || case "$need" in *libc6-dev*) ;; *) need="$need libc6-dev" ;; esac
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"

[ -z "$need" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -n "$0" "$@"
    fi
    echo "setup-bench.sh: must run as root to install:$need" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# A third-party source may be unreachable: judge by the install, not by update.
apt-get update -qq >/dev/null 2>&1 || true
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need >/dev/null
echo "setup-bench.sh: installed$need"
