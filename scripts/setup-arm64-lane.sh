#!/bin/sh
# Set up the host for kvmrig's arm64 lane (kvmrig.invm):
#   * qemu-system-aarch64 (Debian package qemu-system-arm), which boots an
#     arm64 Debian kernel under TCG with virtualization=on, so the guest has
#     its own /dev/kvm;
#   * the arm64 dpkg architecture and its package lists, so that
#     kvmrig.invm.image can `apt-get download` arm64 packages (python3.11,
#     busybox-static, the cloud kernel, ...) and unpack them with `dpkg -x`.
#     No arm64 code ever runs on the host.
#
# Idempotent and quiet: when everything is already in place it does no
# network access and returns in well under a second.  Needs root (uses sudo
# when run as another user and sudo exists).
set -eu

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -n "$0" "$@"
    fi
    echo "setup-arm64-lane.sh: must run as root (apt-get, dpkg)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

LOG=$(mktemp /tmp/setup-arm64-lane.XXXXXX)
trap 'rm -f "$LOG"' EXIT

have_arm64_lists() {
    # Debian's arm64 package lists (fetched by apt-get update once arm64 is a
    # foreign architecture).  A file test: apt-cache costs ~1 s a call here.
    for f in /var/lib/apt/lists/*_main_binary-arm64_Packages*; do
        [ -e "$f" ] && return 0
    done
    return 1
}

apt_update() {
    # Third-party sources configured on the host may be unreachable; apt then
    # warns (or fails) but the Debian lists we need are still updated.  Judge
    # success by what we need, not by apt-get's exit status.
    apt-get update -qq >"$LOG" 2>&1 || apt-get update -qq >"$LOG" 2>&1 || true
}

apt_install() {
    if ! apt-get install -y -qq --no-install-recommends "$@" >"$LOG" 2>&1; then
        return 1
    fi
}

updated=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi

if ! command -v qemu-system-aarch64 >/dev/null 2>&1; then
    if ! have_arm64_lists; then
        apt_update
        updated=1
    fi
    if ! apt_install qemu-system-arm; then
        if [ "$updated" -eq 0 ]; then
            apt_update
            updated=1
        fi
        if ! apt_install qemu-system-arm; then
            cat "$LOG" >&2
            echo "setup-arm64-lane.sh: could not install qemu-system-arm" >&2
            exit 1
        fi
    fi
fi

if ! have_arm64_lists; then
    if [ "$updated" -eq 0 ]; then
        apt_update
        updated=1
    fi
    if ! have_arm64_lists; then
        cat "$LOG" >&2
        echo "setup-arm64-lane.sh: apt-get update did not bring arm64 package lists" >&2
        echo "  (is Debian's bookworm main reachable?)" >&2
        exit 1
    fi
fi

if ! command -v qemu-system-aarch64 >/dev/null 2>&1; then
    echo "setup-arm64-lane.sh: qemu-system-aarch64 still missing after install" >&2
    exit 1
fi
exit 0
