#!/usr/bin/env bash
# Build QEMU 10.2.2 (the vfio-user client was merged in 10.1) from Debian sid's SOURCE
# package qemu=1:10.2.2+ds-1 for x86_64 system emulation. Nothing from sid is installed: only
# the source is fetched, through a private apt configuration under the cache.
#
# Usage: build_qemu_vfio_user.sh [--unaligned-io]     (or env RDV_QEMU_UNALIGNED=1)
#   default:         $RDV_CACHE/qemu-10.2.2/build/qemu-system-x86_64
#   --unaligned-io:  $RDV_CACHE/qemu-10.2.2-unaligned/build/qemu-system-x86_64, a TEST-ONLY
#                    variant whose vfio region ops accept unaligned accesses (see below).
# Output (last stdout line): the path of the qemu-system-x86_64 binary.
# Cache: ${RDV_CACHE:-$HOME/.cache/rdv}; the source tree and the build tree stay inside the
# variant's directory, so re-runs are fast; a finished binary makes the script exit at once.
# Runtime needs Debian's seabios and qemu-system-data (firmware), installed here too.
set -euo pipefail
RDV_LOG_TAG=qemu-vfio-user
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

QEMU_SRCVER="1:10.2.2+ds-1"     # pinned: newer sid versions were 404 on the mirror
MESON_WHEEL_VERSION="1.9.0"     # the +ds repack drops QEMU's bundled meson wheel

UNALIGNED="${RDV_QEMU_UNALIGNED:-0}"
for arg in "$@"; do
    case "$arg" in
        --unaligned-io) UNALIGNED=1 ;;
        -h|--help) sed -n '2,14p' "$0" >&2; exit 0 ;;
        *) die "unknown argument: $arg (only --unaligned-io)" ;;
    esac
done
case "$UNALIGNED" in 1|true|yes) UNALIGNED=1 ;; *) UNALIGNED=0 ;; esac

if [ "$UNALIGNED" = 1 ]; then
    OUT="$RDV_CACHE/qemu-10.2.2-unaligned"
else
    OUT="$RDV_CACHE/qemu-10.2.2"
fi
SRC="$OUT/src"
BUILD="$OUT/build"
BIN="$BUILD/qemu-system-x86_64"
script_lock "$(basename "$OUT")"

if [ -x "$BIN" ] && [ -f "$OUT/.rdv-done" ]; then
    log "already built: $BIN"
    echo "$BIN"
    exit 0
fi

ensure_pkgs dpkg-dev xz-utils gcc libc6-dev make ninja-build pkgconf libglib2.0-dev \
    libpixman-1-dev zlib1g-dev libfdt-dev python3 python3-venv python3-pip \
    debian-archive-keyring seabios qemu-system-data

# Source only: a deb-src entry for sid in a private apt config (never a deb entry).
apt_private sid-src "$(cat <<EOF
Types: deb-src
URIs: $RDV_DEBIAN_MIRROR
Suites: sid
Components: main
Signed-By: $RDV_DEBIAN_KEYRING
EOF
)"
fetch_source qemu "$QEMU_SRCVER" "$RDV_CACHE/dl" "$SRC"

# meson wheel for QEMU's configure-time venv (python/wheels/ is where mkvenv looks).
WHEEL_DIR="$RDV_CACHE/wheels"
if ! ls "$WHEEL_DIR"/meson-"$MESON_WHEEL_VERSION"-*.whl >/dev/null 2>&1; then
    log "pip download meson==$MESON_WHEEL_VERSION"
    mkdir -p "$WHEEL_DIR"
    quiet /usr/bin/python3 -m pip download -q --no-deps --only-binary=:all: \
        -d "$WHEEL_DIR" "meson==$MESON_WHEEL_VERSION" || die "pip download meson==$MESON_WHEEL_VERSION failed"
fi
mkdir -p "$SRC/python/wheels"
cp -f "$WHEEL_DIR"/meson-"$MESON_WHEEL_VERSION"-*.whl "$SRC/python/wheels/"

if [ "$UNALIGNED" = 1 ] && [ ! -f "$SRC/.rdv-unaligned-patched" ]; then
    # TEST-ONLY CHANGE. The vmwgfx driver reads/writes the SVGA VALUE port (BAR0 + 1) with
    # 32-bit inl/outl, an unaligned access. Under TCG, stock QEMU 10.2.2's vfio region ops
    # reject it ("Invalid read at addr 0x1, size 4 ... reason: unaligned"), so the guest
    # driver fails at once ("Unsupported SVGA ID 0x0"). Under KVM the memory core would
    # split the access instead. Marking the region ops' .valid as .unaligned = true lets the
    # 4-byte access reach the vfio-user server as one REGION_READ/WRITE at offset 1. This is
    # only for our TCG-based tests; it is not a fix proposed for QEMU.
    f="$SRC/hw/vfio/region.c"
    [ -f "$f" ] || die "$f not found"
    # Insert ".unaligned = true," after the ".max_access_size = 8," line inside the
    # ".valid = { ... }" block of vfio_region_ops.
    python3 - "$f" <<'PY' || die "could not apply the unaligned-access change to $f"
import re, sys
path = sys.argv[1]
text = open(path).read()
m = re.search(r"(const MemoryRegionOps vfio_region_ops = \{.*?\.valid = \{)(.*?)(\n\s*\},)", text, re.S)
if not m or ".unaligned" in m.group(2):
    sys.exit("vfio_region_ops .valid block not found (or already has .unaligned)")
body = m.group(2)
indent = re.search(r"\n(\s*)\.", body).group(1)
new = m.group(1) + body + "\n" + indent + ".unaligned = true, /* rdv test-only: TCG + vmwgfx inl/outl at BAR0+1 */" + m.group(3)
open(path, "w").write(text[:m.start()] + new + text[m.end():])
PY
    touch "$SRC/.rdv-unaligned-patched"
    log "applied the test-only '.unaligned = true' change to $f:"
    grep -n -B4 -A2 'rdv test-only' "$f" >&2
fi

if [ ! -f "$BUILD/build.ninja" ]; then
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    log "configuring (about 15 s)"
    # The vfio-user client is built by default (no configure flag needed).
    (cd "$BUILD" && quiet "$SRC/configure" \
        --python=/usr/bin/python3 \
        --target-list=x86_64-softmmu \
        --disable-docs --disable-werror \
        --disable-gtk --disable-sdl --disable-vnc --disable-spice --disable-opengl \
        --disable-virglrenderer --disable-xen \
        --audio-drv-list= \
        --disable-install-blobs --disable-download \
        --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu) \
        || die "configure failed (see output above)"
fi
log "ninja -j2 qemu-system-x86_64 (about 3 min on 2 cores)"
quiet ninja -C "$BUILD" -j2 qemu-system-x86_64 || die "ninja qemu-system-x86_64 failed"

# A binary run from the build tree resolves its firmware path inside build/qemu-bundle/
# (get_relocated_path), not in the configured --firmwarepath: link Debian's firmware
# directories (seabios, qemu-system-data, ipxe-qemu) there.
for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
    mkdir -p "$BUILD/qemu-bundle$(dirname "$d")"
    ln -sfn "$d" "$BUILD/qemu-bundle$d"
done

log "self-check: $BIN -device help lists vfio-user-pci"
help=$(timeout 60 "$BIN" -nodefaults -machine none -display none -device help 2>&1) \
    || die "$BIN -device help failed: $help"
line=$(printf '%s\n' "$help" | grep '"vfio-user-pci"') || die "vfio-user-pci is not in '$BIN -device help'"
log "self-check: $line"
"$BIN" --version | head -1 >&2
log "self-check: a pc machine starts (finds its BIOS) and answers QMP"
qmp=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-status"}' '{"execute":"quit"}' \
    | timeout 60 "$BIN" -machine pc -accel tcg -display none -nodefaults -S -qmp stdio 2>&1) \
    || die "$BIN could not start a pc machine: $qmp"
grep -q '"status": "prelaunch"' <<<"$qmp" || die "unexpected QMP answer: $qmp"
log "self-check: QMP query-status -> prelaunch, OK"
touch "$OUT/.rdv-done"
echo "$BIN"
