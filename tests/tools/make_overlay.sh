#!/usr/bin/env bash
# Build a small initramfs overlay to append to the guest's base initramfs.
#
#   make_overlay.sh OUT.cpio.gz FILE...
#
# Each FILE lands in /rdv/<basename> in the guest; write SRC:/absolute/path to put a file
# elsewhere. The guest's init runs /rdv/run.sh when present (unless rdv.script=NAME is on
# the kernel command line). Combine with the base image, e.g.:
#   make_overlay.sh /tmp/ov.cpio.gz run.sh tone.wav
#   cat "$GUEST/initramfs.cpio.gz" /tmp/ov.cpio.gz > /tmp/combined.cpio.gz
#   qemu-system-x86_64 ... -kernel "$GUEST/vmlinuz" -initrd /tmp/combined.cpio.gz
# (the kernel unpacks concatenated cpio archives in order; later files replace earlier ones).
# Output (last stdout line): OUT.
set -euo pipefail
here="$(dirname "$(readlink -f "$0")")"
[ "$#" -ge 2 ] || { echo "usage: $0 OUT.cpio.gz FILE|SRC:/DEST..." >&2; exit 2; }
out="$1"; shift
args=()
for f in "$@"; do
    case "$f" in
        *:/*) args+=(--file "$f") ;;
        *) args+=(--file "$f:/rdv/$(basename "$f")") ;;
    esac
done
python3 "$here/mkcpio.py" "$out" "${args[@]}"
echo "$out"
