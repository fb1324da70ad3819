#!/bin/sh
# /init of the initramfs of kvmrig's VM lanes (busybox sh).  Built into the
# base image by kvmrig/invm/image.py; each run's overlay carries a fresh copy.
#
# Protocol with kvmrig/invm/qemu.py (all on the serial console, T = the run's
# random token from /kvmrig/conf):
#   T:BEGIN <uptime>               the command starts; its stdout+stderr follow
#   \nT:END <status> <uptime>      the command ended (the \n is not output)
#   T:FILE <size> <path>           then base64 lines, then T:ENDFILE
#   T:NOFILE <path>                a requested result file does not exist
#   T:EXIT <status>                last line; then the machine powers off
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONUNBUFFERED=1 PYTHONPATH=/opt/kvmrig

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# every busybox applet as a command (the image links only the common ones; ~10 ms)
/bin/busybox --install -s /bin 2>/dev/null
# kernel modules the lane needs (x86_64: irqbypass, kvm, kvm-amd -> /dev/kvm)
if [ -f /etc/kvmrig-modules ]; then
    while IFS= read -r m; do
        [ -n "$m" ] && { insmod "$m" || echo "kvmrig: insmod $m failed" >&2; }
    done </etc/kvmrig-modules
fi
# kernel messages (a KVM warning, say) must not land in the command's output
dmesg -n 1 2>/dev/null
# the console is raw from here on: command output reaches the host byte for byte
stty -opost 2>/dev/null

halt() {
    poweroff -f
    echo o > /proc/sysrq-trigger
    sleep 5
}

if [ ! -f /kvmrig/conf ]; then
    echo "kvmrig base image: no /kvmrig/conf (no run overlay); here is a shell"
    stty opost 2>/dev/null
    /bin/sh
    halt
fi
. /kvmrig/conf
T=$KVMRIG_TOKEN
mkdir -p "$KVMRIG_WORKDIR"
cd "$KVMRIG_WORKDIR" || halt

read up _ </proc/uptime
echo "$T:BEGIN $up"
/bin/sh /kvmrig/run.sh </dev/null 2>&1
st=$?
read up _ </proc/uptime
printf '\n%s:END %s %s\n' "$T" "$st" "$up"

emit() {
    if [ -r "$1" ]; then
        echo "$T:FILE $(wc -c <"$1") $1"
        base64 "$1"
        echo "$T:ENDFILE"
    else
        echo "$T:NOFILE $1"
    fi
}
if [ -f /kvmrig/fetch ]; then
    while IFS= read -r p; do
        [ -n "$p" ] || continue
        if [ -d "$p" ]; then
            find "$p" -type f | sort | while IFS= read -r f; do emit "$f"; done
        else
            emit "$p"
        fi
    done </kvmrig/fetch
fi
echo "$T:EXIT $st"
halt
