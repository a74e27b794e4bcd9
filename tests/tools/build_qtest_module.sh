#!/usr/bin/env bash
# Rebuild QEMU's qtest accelerator module (accel-qtest-x86_64.so) for the INSTALLED Debian
# qemu-system-x86 package (Debian deletes it from the package), and lay out a module
# directory that holds it next to links to the installed modules, so that
#     QEMU_MODULE_DIR=<dir> qemu-system-x86_64 -accel qtest ...
# works with the system's QEMU.
#
# QEMU only loads modules whose build stamp equals its own: sha1(VERSION, pkgversion,
# configure). We configure the exact Debian source with --with-pkgversion equal to the
# string the installed binary embeds, and check the stamp before building.
#
# Output (last stdout line): the module directory.
# Cache: ${RDV_CACHE:-$HOME/.cache/rdv}/qtest-module/<binary version>/ (build tree under
# $RDV_CACHE/build/). Env: RDV_FORCE=1 rebuilds even when the cached module is valid.
set -euo pipefail
RDV_LOG_TAG=qtest-module
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

QEMU_BIN=/usr/bin/qemu-system-x86_64
MOD=accel-qtest-x86_64.so
SYS_MODDIR=/usr/lib/x86_64-linux-gnu/qemu

ensure_pkgs qemu-system-x86
BINVER=$(dpkg-query -W -f='${Version}' qemu-system-x86)
SRCVER=$(dpkg-query -W -f='${source:Version}' qemu-system-x86)
# The pkgversion the installed binary was configured with, e.g.
# "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" -> "Debian 1:7.2+dfsg-7+deb12u18+b3"
PKGVERSION=$("$QEMU_BIN" --version | sed -n '1s/^QEMU emulator version [^ ]* (\(.*\))$/\1/p')
[ -n "$PKGVERSION" ] || PKGVERSION="Debian $BINVER"
log "installed qemu-system-x86 $BINVER (source $SRCVER), pkgversion '$PKGVERSION'"

OUT="$RDV_CACHE/qtest-module/$(printf '%s' "$BINVER" | tr -c 'A-Za-z0-9.+~-' '_')"
STAMP_INFO="binver=$BINVER pkgversion=$PKGVERSION"
script_lock "qtest-module"

# link_system_modules DIR: (re)create links to every installed module in DIR.
link_system_modules() {
    local d="$1" f
    find "$d" -maxdepth 1 -type l -name '*.so' -delete
    for f in "$SYS_MODDIR"/*.so; do
        [ -e "$f" ] || continue
        [ "$(basename "$f")" = "$MOD" ] && continue
        ln -s "$f" "$d/$(basename "$f")"
    done
}

# self_check DIR: boot a qtest machine with an ES1370 and read PCI config space.
self_check() {
    local d="$1"
    QEMU_MODULE_DIR="$d" timeout 30 python3 - "$QEMU_BIN" <<'PY' >&2
import subprocess, sys
p = subprocess.Popen([sys.argv[1], "-machine", "pc", "-accel", "qtest", "-qtest", "stdio", "-qtest-log", "/dev/null",
                      "-display", "none", "-nodefaults", "-device", "ES1370"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
def cmd(c):
    p.stdin.write(c + "\n"); p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if not line:
            sys.exit("qemu exited before answering %r (rc=%s)" % (c, p.wait()))
        if line.startswith("OK") or line.startswith("FAIL") or line.startswith("ERR"):
            return line.strip()
try:
    res = {}
    for bdf, name in ((0x80000000, "00:00.0 host bridge"), (0x80001000, "00:02.0 ES1370")):
        cmd("outl 0xcf8 0x%x" % bdf)
        r = cmd("inl 0xcfc")
        print("qtest self-check: inl 0xcfc (%s) -> %s" % (name, r))
        res[bdf] = int(r.split()[1], 16) if r.startswith("OK ") else None
finally:
    p.kill(); p.wait()
if res[0x80000000] != 0x12378086 or res[0x80001000] != 0x50001274:
    sys.exit("qtest self-check FAILED: expected 0x12378086 and 0x50001274")
print("qtest self-check: OK")
PY
}

if [ "${RDV_FORCE:-0}" != 1 ] && [ -f "$OUT/$MOD" ] && [ "$(cat "$OUT/.rdv-stamp" 2>/dev/null)" = "$STAMP_INFO" ]; then
    log "cached module $OUT/$MOD is for $BINVER; reusing it"
    link_system_modules "$OUT"
    self_check "$OUT" || die "cached module failed the self-check; rerun with RDV_FORCE=1"
    echo "$OUT"
    exit 0
fi

ensure_pkgs dpkg-dev xz-utils gcc libc6-dev make ninja-build meson pkgconf \
    libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev python3 debian-archive-keyring

apt_private bookworm "$(bookworm_sources "deb deb-src")"
WORK="$RDV_CACHE/build/qemu-$(printf '%s' "$SRCVER" | tr -c 'A-Za-z0-9.+~-' '_')"
SRC="$WORK/src"
fetch_source qemu "$SRCVER" "$RDV_CACHE/dl" "$SRC"

# Check before building that the stamp we will produce is the one the binary expects.
STAMP=$(python3 "$SRC/scripts/qemu-stamp.py" "$(tr -d '[:space:]' < "$SRC/VERSION")" "$PKGVERSION" -- "$SRC/configure")
if ! grep -qa "qemu_stamp$STAMP" "$QEMU_BIN"; then
    die "stamp qemu_stamp$STAMP (version $(cat "$SRC/VERSION"), pkgversion '$PKGVERSION') is not in $QEMU_BIN; a module built from this source would be refused"
fi
log "build stamp qemu_stamp$STAMP matches $QEMU_BIN"

BUILD="$SRC/build-rdv"
if [ ! -f "$BUILD/build.ninja" ] || [ "$(cat "$BUILD/.rdv-pkgversion" 2>/dev/null)" != "$PKGVERSION" ]; then
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    log "configuring (about 15 s)"
    # Only what the module needs: x86_64 system emulation with modules; all optional
    # features off (they do not affect the qtest accelerator module).
    # Debian's meson (QEMU 7.2 only accepts --python together with its bundled meson, which
    # the dfsg tarball lacks); Debian's python3 first in PATH for the build's scripts.
    (cd "$BUILD" && PATH="/usr/bin:$PATH" quiet ../configure --meson=/usr/bin/meson \
        --with-pkgversion="$PKGVERSION" \
        --prefix=/usr --libdir=/usr/lib/x86_64-linux-gnu --libexecdir=/usr/lib/qemu \
        --sysconfdir=/etc --localstatedir=/var \
        --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
        --target-list=x86_64-softmmu --disable-user --disable-linux-user \
        --without-default-features --enable-modules --enable-tcg --enable-fdt=system \
        --disable-docs --disable-werror --disable-install-blobs --disable-xen \
        --with-git-submodules=ignore) || die "configure failed (see output above)"
    printf '%s' "$PKGVERSION" > "$BUILD/.rdv-pkgversion"
fi
log "ninja -j2 $MOD (about 70 s on 2 cores)"
PATH="/usr/bin:$PATH" quiet ninja -C "$BUILD" -j2 "$MOD" || die "ninja $MOD failed"

mkdir -p "$OUT"
cp -f "$BUILD/$MOD" "$OUT/$MOD.tmp"
mv -f "$OUT/$MOD.tmp" "$OUT/$MOD"
link_system_modules "$OUT"
self_check "$OUT" || die "self-check failed for the freshly built module in $OUT"
printf '%s' "$STAMP_INFO" > "$OUT/.rdv-stamp"
log "module directory ready: $OUT"
echo "$OUT"
