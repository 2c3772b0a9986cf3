#!/usr/bin/env bash
# Builds unikernel test images in Oakestra's format (a .tar.gz holding `kernel`, optionally
# `initramfs.cpio` and `files/`), offline. Used by the node engine's tests and benchmarks.
#
#   scripts/unikernel-image.sh tiny OUT.tar.gz MARKER halt|reset|exit:N
#       A PVH kernel of a few hundred bytes of 32-bit machine code: it prints MARKER, a space
#       and its kernel command line on COM1, then halts forever (`halt`), resets the machine
#       (`reset`: QEMU with -no-reboot exits 0) or writes N to isa-debug-exit at port 0xf4
#       (`exit:N`: QEMU exits 2N+1).
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

case "${1:-}" in
  tiny) shift; tiny "$@" ;;
  *) die "usage: $0 tiny OUT.tar.gz MARKER halt|reset|exit:N" ;;
esac
