#!/usr/bin/env bash
# Builds unikernel test images in Oakestra's format (a .tar.gz holding `kernel`, optionally
# `initramfs.cpio` and `files/`), offline. Used by the node engine's tests and benchmarks.
#
#   scripts/unikernel-image.sh tiny OUT.tar.gz MARKER halt|reset|exit:N
#       A PVH kernel of a few hundred bytes of 32-bit machine code: it prints MARKER, a space
#       and its kernel command line on COM1, then halts forever (`halt`), resets the machine
#       (`reset`: QEMU with -no-reboot exits 0) or writes N to isa-debug-exit at port 0xf4
#       (`exit:N`: QEMU exits 2N+1).
#
#   [FILES_DIR=DIR] [DEBIAN_KERNEL=cloud-amd64|amd64] \
#   scripts/unikernel-image.sh linux OUT.tar.gz MARKER [CACHE_DIR]
#       A Linux micro-VM: a Debian kernel (`apt-get download`, `dpkg-deb -x`, nothing
#       installed; the .deb is kept in CACHE_DIR, default $CANOPY_CACHE_DIR/debian-kernel) and
#       an initramfs from busybox-static whose /init prints MARKER and the kernel command line
#       on the console, then, by the command line's `end=`: `poweroff` (the default; QEMU exits
#       0) or `httpd` (serves /www on port 80 until QEMU is stopped; the page holds MARKER, and
#       /big is 65536 bytes, 1024 times the line `canopy` and 57 dots, larger than any MTU;
#       /mid its first 1440 bytes, one segment that fits a 1500 MTU and not a 1450 one).
#       The initramfs carries the kernel's virtio-mmio and virtio-net modules (Debian builds
#       them as modules, and its cloud kernel has no CONFIG_IP_PNP): /init loads them and, when
#       the command line has `ip=<addr>::<gateway>:<netmask>::<dev>:off` (what the node engine
#       appends for a VM on the overlay), gives <dev> <addr>/32 with <gateway> as its on-link
#       default route (a /32 like a container's, so that replies to neighbours on the worker
#       also pass the worker's routing and its service-IP translation), and prints
#       `net: <dev> <addr> via <gateway> mtu <the interface's MTU>`.
#       With FILES_DIR the archive also holds DIR as `files/` (the node engine shares it
#       read-only over 9p, tag fs0) and the initramfs the kernel's 9p modules; when the VM has
#       a virtio 9p device tagged fs0, /init mounts it once without `ro` and tries to create a
#       file in it (printing `files: fs0 refuses writes: <error>` or `files: fs0 is writable`),
#       then mounts it read-only at /www/files (httpd serves it under /files/) and prints
#       `files: <name>: <first line>` for each regular file at its top.
#       DEBIAN_KERNEL picks the kernel package: `cloud-amd64` (the default; small, but built
#       without 9p) or `amd64` (the generic kernel; the default with FILES_DIR).
#       Boot it with `console=ttyS0`; under software emulation on a busy host add
#       `tsc_early_khz=2000000 no_timer_check` (the TSC's calibration against the PIT fails
#       there and the kernel hangs).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

tiny() {
  local out=$1 marker=$2 tail=$3
  local dir
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  python3 - "$dir/kernel" "$marker" "$tail" <<'PY'
import struct, sys
out, marker, tail = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
BASE = 0x100000
HDR = 52 + 2 * 32          # ELF header + two program headers
NOTE = HDR                 # PVH note: "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY)
CODE = NOTE + 12 + 4 + 4
def build(msg_at, nl_at, zero_at, puts_at):
    c = b"\xBA\xF8\x03\x00\x00"                          # mov edx, 0x3f8 (COM1)
    def call(at):                                        # call rel32 (after c so far)
        return b"\xE8" + struct.pack("<i", at - (BASE + CODE + len(c) + 5))
    c += b"\xBE" + struct.pack("<I", msg_at); c += call(puts_at)   # marker and a space
    c += b"\x8B\x73\x18"; c += call(puts_at)             # mov esi,[ebx+24]: the command line
    c += b"\xBE" + struct.pack("<I", nl_at); c += call(puts_at)    # newline
    if tail == "reset":
        c += b"\x0F\x01\x1D" + struct.pack("<I", zero_at) + b"\xCC"  # lidt [empty]; int3
    elif tail.startswith("exit:"):
        c += b"\x66\xBA\xF4\x00" + b"\xB8" + struct.pack("<I", int(tail[5:])) + b"\xEF"
    elif tail != "halt":
        sys.exit(f"unknown ending {tail!r}: halt, reset or exit:N")
    c += b"\xFA\xF4\xEB\xFD"                             # cli; l: hlt; jmp l
    puts = b"\xAC\x84\xC0\x74\x03\xEE\xEB\xF8\xC3"       # lodsb; test al,al; jz ret; out dx,al; jmp
    return c, puts
c, puts = build(0, 0, 0, 0)
data_at = BASE + CODE + len(c) + len(puts)
msg_at, nl_at, zero_at = data_at, data_at + len(marker) + 2, data_at + len(marker) + 4
c, puts = build(msg_at, nl_at, zero_at, BASE + CODE + len(c))
body = c + puts + marker + b" \x00" + b"\n\x00" + b"\x00" * 8
size = CODE + len(body)
elf = b"\x7fELF\x01\x01\x01" + b"\x00" * 9
elf += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, BASE + CODE, 52, 0, 0, 52, 32, 2, 40, 0, 0)
elf += struct.pack("<IIIIIIII", 1, 0, BASE, BASE, size, size, 7, 0x1000)      # PT_LOAD
elf += struct.pack("<IIIIIIII", 4, NOTE, BASE + NOTE, BASE + NOTE, 20, 20, 4, 4)  # PT_NOTE
elf += struct.pack("<III", 4, 4, 18) + b"Xen\x00" + struct.pack("<I", BASE + CODE)
assert len(elf) == CODE
open(out, "wb").write(elf + body)
PY
  mkdir -p "$(dirname "$out")"
  tar -C "$dir" -czf "$out.tmp" kernel
  mv "$out.tmp" "$out"
}

# The modules /init loads, in load order, each after the modules it depends on (checked against
# each module's `depends=` below: Debian's .deb has no modules.dep, depmod writes it on install).
NET_MODULES="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio
  net/core/failover drivers/net/net_failover drivers/net/virtio_net"
P9_MODULES="fs/netfs/netfs fs/fscache/fscache net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p"

linux() {
  local out=$1 marker=$2 cache=${3:-$CANOPY_CACHE_DIR/debian-kernel}
  local files=${FILES_DIR:-}
  local flavour=${DEBIAN_KERNEL:-cloud-amd64}
  [ -n "${DEBIAN_KERNEL:-}" ] || [ -z "$files" ] || flavour=amd64
  [ -x /bin/busybox ] || die "busybox-static is not installed (apt-get install busybox-static)"
  [ -z "$files" ] || [ -d "$files" ] || die "FILES_DIR=$files is no directory"
  [ -z "$files" ] || [ "$flavour" != cloud-amd64 ] \
    || die "Debian's cloud kernel is built without 9p (CONFIG_NET_9P): use DEBIAN_KERNEL=amd64 with FILES_DIR"
  mkdir -p "$cache"
  local pkg
  pkg=$(apt-cache depends "linux-image-$flavour" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  [ -n "$pkg" ] || die "apt knows no linux-image-$flavour (run apt-get update)"
  local deb
  deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
  if [ -z "$deb" ]; then
    step "apt-get download $pkg (into $cache)"
    (cd "$cache" && apt-get download "$pkg")
    deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
    [ -n "$deb" ] || die "apt-get download $pkg left no .deb in $cache"
  fi
  local dir
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  if [ ! -f "$cache/$pkg.vmlinuz" ]; then
    step "extracting the kernel from $(basename "$deb")"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards './boot/vmlinuz-*'
    mv "$dir"/boot/vmlinuz-* "$cache/$pkg.vmlinuz.tmp"
    mv "$cache/$pkg.vmlinuz.tmp" "$cache/$pkg.vmlinuz"
  fi
  local root="$dir/root"
  mkdir -p "$root"/{bin,proc,sys,dev,www,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  local paths="$NET_MODULES" p m mods=""
  [ -z "$files" ] || paths="$paths $P9_MODULES"
  local patterns=()
  for p in $paths; do patterns+=("./lib/modules/*/kernel/$p.ko"); done
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards "${patterns[@]}" \
    || die "$(basename "$deb") lacks some of: $paths"
  for p in $paths; do
    m=${p##*/}
    find "$dir/lib/modules" -path "*/kernel/$p.ko" -exec cp {} "$root/lib/modules/" \;
    [ -f "$root/lib/modules/$m.ko" ] || die "$(basename "$deb") has no $p.ko"
    mods="$mods $m"
  done
  python3 - "$root/lib/modules" $mods <<'PY' || die "the module list above does not match $(basename "$deb")"
import struct, sys
# Each module's `depends=` (its ELF .modinfo section) must name only modules loaded before it.
where, order = sys.argv[1], sys.argv[2:]
for i, m in enumerate(order):
    b = open(f"{where}/{m}.ko", "rb").read()
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3A)
    secs = [struct.unpack_from("<IIQQQQ", b, shoff + k * shentsize) for k in range(shnum)]
    names = secs[shstrndx][4]
    info = next(b[s[4]:s[4] + s[5]] for s in secs
                if b[names + s[0]:b.index(b"\0", names + s[0])] == b".modinfo")
    deps = [d for f in info.split(b"\0") if f.startswith(b"depends=")
            for d in f[8:].decode().split(",") if d]
    late = [d for d in deps if d not in order[:i]]
    if late:
        sys.exit(f"{m} depends on {', '.join(late)}, not loaded before it")
PY
  cat >"$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "$marker \$(cat /proc/cmdline)"
for m in$mods; do insmod /lib/modules/\$m.ko 2>/dev/null; done
ip link set lo up
for a in \$(cat /proc/cmdline); do
  case "\$a" in
    ip=*)
      IFS=:; set -- \${a#ip=}; unset IFS
      addr=\$1 gw=\$3 dev=\${6:-eth0} i=0
      while [ ! -e /sys/class/net/\$dev ] && [ \$i -lt 100 ]; do usleep 100000; i=\$((i + 1)); done
      ip link set \$dev up
      ip addr add \$addr/32 dev \$dev
      ip route add \$gw dev \$dev
      ip route add default via \$gw dev \$dev
      echo "net: \$dev \$addr via \$gw mtu \$(cat /sys/class/net/\$dev/mtu)"
      ;;
  esac
done
# A virtio 9p share tagged fs0 (the node engine's files/): first mounted as the guest would
# write to it, to show the host refuses; then read-only at /www/files.
if cat /sys/bus/virtio/devices/*/mount_tag 2>/dev/null | tr '\000' '\n' | grep -qx fs0; then
  mkdir -p /www/files
  if mount -t 9p -o trans=virtio,version=9p2000.L fs0 /www/files; then
    if err=\$( { echo x >/www/files/.canopy-write-probe; } 2>&1 ); then
      echo "files: fs0 is writable"
    else
      echo "files: fs0 refuses writes: \${err##*: }"
    fi
    umount /www/files
  fi
  if mount -t 9p -o trans=virtio,version=9p2000.L,ro fs0 /www/files; then
    echo "files: fs0 mounted read-only at /www/files"
    for f in /www/files/*; do
      [ -f "\$f" ] && echo "files: \${f##*/}: \$(head -n 1 "\$f" | head -c 200)"
    done
  fi
fi
case "\$end" in
  httpd)
    echo "<h1>canopy micro-VM $marker</h1>" >/www/index.html
    yes canopy......................................................... | head -c 65536 >/www/big
    head -c 1440 /www/big >/www/mid
    httpd -p 80 -h /www
    while :; do sleep 3600; done
    ;;
esac
poweroff -f
INIT
  chmod +x "$root/init"
  python3 - "$root" "$dir/initramfs.cpio" <<'PY'
import os, stat, sys
root, out = sys.argv[1], sys.argv[2]
ino = [0]
def entry(name, mode, data=b""):
    ino[0] += 1
    h = "070701" + "".join(f"{v:08X}" for v in (ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0))
    b = h.encode() + name.encode() + b"\0"
    b += b"\0" * (-len(b) % 4) + data
    return b + b"\0" * (-len(b) % 4)
buf = b""
for d, dirs, files in os.walk(root):
    for n in sorted(dirs) + sorted(files):
        p = os.path.join(d, n); rel = os.path.relpath(p, root); st = os.lstat(p)
        data = b"" if stat.S_ISDIR(st.st_mode) else open(p, "rb").read()
        buf += entry(rel, st.st_mode, data)
buf += entry("TRAILER!!!", 0)
open(out, "wb").write(buf)
PY
  cp "$cache/$pkg.vmlinuz" "$dir/kernel"
  local parts=(kernel initramfs.cpio)
  if [ -n "$files" ]; then
    cp -r "$files" "$dir/files"
    parts+=(files)
  fi
  mkdir -p "$(dirname "$out")"
  tar -C "$dir" -czf "$out.tmp" "${parts[@]}"
  mv "$out.tmp" "$out"
}

case "${1:-}" in
  tiny) shift; tiny "$@" ;;
  linux) shift; linux "$@" ;;
  *) die "usage: $0 tiny OUT.tar.gz MARKER halt|reset|exit:N | [FILES_DIR=DIR] [DEBIAN_KERNEL=cloud-amd64|amd64] linux OUT.tar.gz MARKER [CACHE_DIR]" ;;
esac
