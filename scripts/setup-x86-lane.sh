#!/bin/sh
# Set up the host for kvmrig's x86_64 lane (kvmrig.invm, `kvmrig run --in-vm
# x86_64`): Debian's amd64 cloud kernel booted under qemu-system-x86_64 with
# TCG and -cpu max (nested SVM), whose own KVM (kvm_amd) intercepts INT3 and
# raises DR0-DR3 breakpoints -- the native x86 debug path that kvm_pvm and
# other software KVMs cannot run.
#
# Debian's QEMU 7.2 binary lacks two things that path needs (see
# scripts/qemu/svm-nested-debug.patch), so this script:
#   1. (root) adds deb-src lines mirroring the Debian deb lines when apt has
#      none, and installs the build dependencies of a QEMU with only the
#      x86_64-softmmu target, plus SeaBIOS and QEMU's option ROMs;
#   2. (the calling user) fetches Debian's QEMU source (`apt-get source`),
#      applies the patch and builds qemu-system-x86_64 once into
#      ${XDG_CACHE_HOME:-~/.cache}/kvmrig/qemu-x86_64/, with build.json naming
#      the source version and the patch's SHA-256 (kvmrig refuses a binary
#      built with another patch). ~5 min on 2 idle cores; `nice`d.
#
# Idempotent: when the binary for this source version and patch is in place
# it does no network access and returns in well under a second.
#   KVMRIG_QEMU_JOBS=N   parallel compile jobs (default: all cores)
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
PATCH="$ROOT/scripts/qemu/svm-nested-debug.patch"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kvmrig/qemu-x86_64"
# configure flags are part of the build key
CONFIGURE="--target-list=x86_64-softmmu --without-default-features --enable-tcg --enable-fdt=system --disable-docs --disable-werror --disable-install-blobs"
BUILD_DEPS="dpkg-dev gcc make meson ninja-build pkg-config python3 flex bison libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev xz-utils patch"
RUN_DEPS="seabios qemu-system-data"

if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; else SUDO=""; fi
export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp /tmp/setup-x86-lane.XXXXXX)
trap 'rm -f "$LOG"' EXIT

say() { echo "setup-x86-lane: $*" >&2; }

have_source() {
    apt-cache showsrc qemu 2>/dev/null | grep -q '^Version:'
}

source_version() {
    # the version `apt-get source qemu` fetches: the candidate's source version
    apt-cache showsrc --only-source qemu 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -1
}

patch_sha=$(sha256sum "$PATCH" | cut -d' ' -f1)
key() { printf '%s\n%s\n%s\n' "$1" "$patch_sha" "$CONFIGURE" | sha256sum | cut -c1-16; }

# Fast path: the binary for the current source version and patch exists.
if [ -x "$CACHE/qemu-system-x86_64" ] && [ -f "$CACHE/build.json" ] && have_source; then
    if grep -q "\"key\": \"$(key "$(source_version)")\"" "$CACHE/build.json"; then
        exit 0
    fi
fi

# 1. packages (root)
missing=""
for p in $BUILD_DEPS $RUN_DEPS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if ! have_source; then
    say "adding deb-src lines for Debian's sources"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
            $SUDO tee /etc/apt/sources.list.d/kvmrig-deb-src.sources >/dev/null
    else
        grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | sed 's/^deb /deb-src /' |
            $SUDO tee /etc/apt/sources.list.d/kvmrig-deb-src.list >/dev/null
    fi
    $SUDO apt-get update -qq >"$LOG" 2>&1 || true
    if ! have_source; then
        cat "$LOG" >&2
        say "apt knows no source package qemu even with deb-src lines (is Debian's main reachable?)"
        exit 1
    fi
fi
if [ -n "$missing" ]; then
    say "installing:$missing"
    # shellcheck disable=SC2086
    if ! $SUDO apt-get install -y -qq --no-install-recommends $missing >"$LOG" 2>&1; then
        $SUDO apt-get update -qq >"$LOG" 2>&1 || true
        # shellcheck disable=SC2086
        $SUDO apt-get install -y -qq --no-install-recommends $missing >"$LOG" 2>&1 || {
            cat "$LOG" >&2; say "could not install:$missing"; exit 1; }
    fi
fi

# 2. the patched QEMU (the calling user)
version=$(source_version)
k=$(key "$version")
if [ -x "$CACHE/qemu-system-x86_64" ] && grep -q "\"key\": \"$k\"" "$CACHE/build.json" 2>/dev/null; then
    exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$CACHE/qemu-system-x86_64" ] && grep -q "\"key\": \"$k\"" "$CACHE/build.json" 2>/dev/null; then
    exit 0  # another process built it meanwhile
fi
work=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -f "$LOG"; rm -rf "$work"' EXIT
start=$(date +%s)
say "building qemu-system-x86_64 from Debian's qemu $version with kvmrig's patch (once; ~5-15 min)"
(
    cd "$work"
    apt-get source -qq --download-only "qemu=$version" >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
    dpkg-source -x qemu_*.dsc src >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
    (cd src && patch -p1 -s <"$PATCH")
    mkdir build
    cd build
    # shellcheck disable=SC2086
    nice -n 10 ../src/configure $CONFIGURE >"$LOG" 2>&1 || { tail -30 "$LOG" >&2; exit 1; }
    nice -n 10 ninja -j "${KVMRIG_QEMU_JOBS:-$(nproc)}" qemu-system-x86_64 >"$LOG" 2>&1 || { tail -40 "$LOG" >&2; exit 1; }
)
cp "$work/build/qemu-system-x86_64" "$CACHE/qemu-system-x86_64.new"
mv -f "$CACHE/qemu-system-x86_64.new" "$CACHE/qemu-system-x86_64"
seconds=$(( $(date +%s) - start ))
cat >"$CACHE/build.json.new" <<JSON
{
 "key": "$k",
 "source": "qemu $version",
 "patch": "scripts/qemu/svm-nested-debug.patch",
 "patch_sha256": "$patch_sha",
 "configure": "$CONFIGURE",
 "build_seconds": $seconds
}
JSON
mv -f "$CACHE/build.json.new" "$CACHE/build.json"
say "built $CACHE/qemu-system-x86_64 in ${seconds}s"
"$CACHE/qemu-system-x86_64" --version | head -1 >&2
