#!/usr/bin/env bash
# Build a small bootable Linux test guest from Debian bookworm packages (downloaded with
# apt-get download through a private apt config, unpacked with dpkg-deb -x; nothing is
# installed into the system):
#   vmlinuz            Debian's kernel (the package linux-image-amd64 depends on)
#   initramfs.cpio.gz  busybox-static; kernel modules snd-ens1370, vmwgfx, evdev and all they
#                      depend on (resolved with modules.dep); aplay/arecord/amixer (alsa-utils)
#                      with their shared libraries and /usr/share/alsa (libasound2-data)
# Guest protocol (serial console; boot with "console=ttyS0"):
#   init mounts proc/sys/devtmpfs, loads the modules, prints "RDV-READY", runs one script,
#   prints "RDV-DONE rc=N" and powers off (poweroff -f; use QEMU's -no-reboot).
#   The script is /rdv/NAME (or /rdv/NAME.sh, or NAME itself when it is an absolute path)
#   for "rdv.script=NAME" on the kernel command line, else /rdv/run.sh when present (supply it with make_overlay.sh), else /rdv/info.sh.
#   Baked-in scripts: info.sh (driver/card info), play.sh (aplay every /rdv/*.wav on
#   $RDV_APLAY_DEVICE, default hw:0,0), shell.sh (interactive shell on the console).
#   "rdv.modules=a,b" replaces the default module list (snd-ens1370,vmwgfx,evdev);
#   "rdv.modules=" loads none.
# Output (last stdout line): the guest directory ($RDV_CACHE/guest) holding vmlinuz,
# initramfs.cpio.gz and manifest.txt (package versions).
# Self-check after a fresh build (skipped with RDV_GUEST_SELFTEST=0 or when Debian's
# qemu-system-x86_64 is absent): boots it under TCG with QEMU's ES1370 and a wav audiodev,
# plays a generated WAV with aplay -D hw:0,0 and compares the PCM QEMU wrote.
# Env: RDV_FORCE=1 rebuilds; RDV_GUEST_KERNEL_PKG=linux-image-6.1.0-NN-amd64 picks a kernel.
set -euo pipefail
RDV_LOG_TAG=guest
HERE="$(dirname "$(readlink -f "$0")")"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

OUT="$RDV_CACHE/guest"
WORK="$RDV_CACHE/build/guest"
DEFAULT_MODULES=(snd-ens1370 vmwgfx evdev)
STAMP="$(cat "$HERE/build_guest.sh" "$HERE/mkcpio.py" | sha1sum | cut -d' ' -f1)"
script_lock guest

selftest() {
    [ "${RDV_GUEST_SELFTEST:-1}" = 1 ] || { log "self-check skipped (RDV_GUEST_SELFTEST=0)"; return 0; }
    if ! command -v qemu-system-x86_64 >/dev/null; then
        log "self-check skipped: qemu-system-x86_64 is not installed"
        return 0
    fi
    local t="$WORK/selftest"
    rm -rf "$t"; mkdir -p "$t"
    python3 - "$t/tone.wav" <<'PY'
import math, struct, sys, wave
# 0.5 s stereo s16 44100 Hz: 440 Hz left, 660 Hz right, with a ramp so no two periods match
rate, n = 44100, 22050
frames = bytearray()
for i in range(n):
    amp = 4000 + 20000 * i / n
    frames += struct.pack("<hh", int(amp * math.sin(2 * math.pi * 440 * i / rate)),
                          int(amp * math.sin(2 * math.pi * 660 * i / rate)))
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(2); w.setsampwidth(2); w.setframerate(rate); w.writeframes(bytes(frames))
PY
    cat > "$t/run.sh" <<'EOF'
#!/bin/sh
cat /proc/asound/cards
# snd-ens1370 logs nothing on a successful probe: show the binding from sysfs
for d in /sys/bus/pci/drivers/snd_ens1370/0000:*; do [ -e "$d" ] && echo "snd_ens1370 bound to ${d##*/}"; done
dmesg | grep -i -e ens1370 -e audiopci
aplay -D hw:0,0 /rdv/tone.wav
EOF
    bash "$HERE/make_overlay.sh" "$t/overlay.cpio.gz" "$t/run.sh" "$t/tone.wav" >/dev/null
    cat "$OUT/initramfs.cpio.gz" "$t/overlay.cpio.gz" > "$t/initrd.cpio.gz"
    log "self-check: booting under QEMU $(qemu-system-x86_64 --version | head -1 | cut -d' ' -f4) TCG with ES1370 (timeout 120 s)"
    local start=$SECONDS rc=0
    timeout 120 qemu-system-x86_64 -machine pc -accel tcg -m 512 -nographic -no-reboot \
        -kernel "$OUT/vmlinuz" -initrd "$t/initrd.cpio.gz" \
        -append "console=ttyS0 quiet panic=-1" \
        -audiodev "wav,id=a,path=$t/out.wav,out.frequency=44100,out.channels=2,out.format=s16" \
        -device ES1370,audiodev=a </dev/null > "$t/console.log" 2>&1 || rc=$?
    log "self-check: QEMU exited rc=$rc after $((SECONDS - start)) s; console:"
    sed 's/^/    | /' "$t/console.log" | tr -d '\r' >&2
    grep -q 'RDV-READY' "$t/console.log" || die "self-check: no RDV-READY on the console"
    grep -q 'RDV-DONE rc=0' "$t/console.log" || die "self-check: no 'RDV-DONE rc=0' on the console"
    grep -q 'snd_ens1370 bound to 0000:' "$t/console.log" || die "self-check: snd_ens1370 is not bound to the ES1370"
    grep -q 'ENS1370 at 0x.*irq' "$t/console.log" || die "self-check: no ENS1370 card in /proc/asound/cards"
    python3 - "$t/tone.wav" "$t/out.wav" <<'PY' >&2 || die "self-check: QEMU's WAV does not contain the played PCM"
import sys, wave
def pcm(p):
    with wave.open(p) as w:
        return (w.getnchannels(), w.getsampwidth(), w.getframerate()), w.readframes(w.getnframes())
fin, din = pcm(sys.argv[1])
fout, dout = pcm(sys.argv[2])
print("self-check: played %d bytes %s; QEMU wrote %d bytes %s" % (len(din), fin, len(dout), fout))
off = dout.find(din)
if fin != fout or off < 0:
    sys.exit("self-check: PCM mismatch")
print("self-check: PCM found byte-exact at offset %d of QEMU's output" % off)
PY
}

if [ "${RDV_FORCE:-0}" != 1 ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio.gz" ] \
    && [ "$(cat "$OUT/.rdv-stamp" 2>/dev/null)" = "$STAMP" ]; then
    log "guest already built in $OUT"
    echo "$OUT"
    exit 0
fi

ensure_pkgs dpkg kmod python3 gzip libc-bin debian-archive-keyring
apt_private bookworm "$(bookworm_sources "deb deb-src")"

rm -rf "$WORK/x" "$WORK/root" "$WORK/out"
mkdir -p "$WORK/debs" "$WORK/x" "$WORK/root" "$WORK/out"

KPKG="${RDV_GUEST_KERNEL_PKG:-}"
if [ -z "$KPKG" ]; then
    KPKG=$(apt-cache "${APT_OPTS[@]}" show --no-all-versions linux-image-amd64 \
        | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
    [ -n "$KPKG" ] || die "cannot resolve the kernel package linux-image-amd64 depends on"
fi
PKGS=("$KPKG" busybox-static alsa-utils libasound2 libasound2-data)

# download PKG: the candidate .deb into $WORK/debs (kept; re-used while it is the candidate).
download() {
    local p="$1" v deb
    v=$(apt-cache "${APT_OPTS[@]}" policy "$p" | sed -n 's/^  Candidate: //p')
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        apt_private_update
        v=$(apt-cache "${APT_OPTS[@]}" policy "$p" | sed -n 's/^  Candidate: //p')
        { [ -n "$v" ] && [ "$v" != "(none)" ]; } || die "package $p not found in bookworm"
    fi
    # apt-get download writes an epoch "1:" as "1%3a" in the file name
    deb=$(ls "$WORK/debs/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        log "apt-get download $p=$v"
        if ! (cd "$WORK/debs" && quiet apt-get "${APT_OPTS[@]}" -q download "$p=$v"); then
            # a stale index can point at a file the mirror removed: refresh once and retry
            apt_private_update
            v=$(apt-cache "${APT_OPTS[@]}" policy "$p" | sed -n 's/^  Candidate: //p')
            log "retry: apt-get download $p=$v"
            (cd "$WORK/debs" && quiet apt-get "${APT_OPTS[@]}" -q download "$p=$v") \
                || die "apt-get download $p=$v failed"
        fi
        deb=$(ls "$WORK/debs/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
        [ -n "$deb" ] || die "downloaded .deb for $p=$v not found in $WORK/debs"
    fi
    dpkg-deb -x "$deb" "$WORK/x/$p" || die "dpkg-deb -x $deb failed"
    echo "$p $v" >> "$WORK/out/manifest.txt"
}
for p in "${PKGS[@]}"; do download "$p"; done

R="$WORK/root"
K="$WORK/x/$KPKG"
KVER=$(ls "$K/lib/modules" | head -1)
[ -n "$KVER" ] && [ -f "$K/boot/vmlinuz-$KVER" ] || die "no kernel found in $KPKG"
log "kernel $KVER"
cp "$K/boot/vmlinuz-$KVER" "$WORK/out/vmlinuz"
echo "kernel-release $KVER" >> "$WORK/out/manifest.txt"

# --- kernel modules: the closure of the default list, from the package's modules.dep
quiet depmod -b "$K" "$KVER" || die "depmod on the kernel package failed"
mods=()
while read -r kind path _; do
    [ "$kind" = insmod ] && mods+=("${path#"$K"}")
done < <(modprobe -d "$K" -S "$KVER" --show-depends -a "${DEFAULT_MODULES[@]}")
[ "${#mods[@]}" -gt 0 ] || die "no modules resolved"
for m in "${mods[@]}"; do
    mkdir -p "$R$(dirname "$m")"
    cp "$K$m" "$R$m"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
    [ -f "$K/lib/modules/$KVER/$f" ] && cp "$K/lib/modules/$KVER/$f" "$R/lib/modules/$KVER/"
done
quiet depmod -b "$R" "$KVER" || die "depmod on the initramfs tree failed"
log "modules: $(printf '%s\n' "${mods[@]}" | xargs -n1 basename | tr '\n' ' ')"

# --- busybox
B="$WORK/x/busybox-static/bin/busybox"
install -D -m 0755 "$B" "$R/bin/busybox"
while read -r applet; do
    [ -n "$applet" ] && [ ! -e "$R/$applet" ] && [ ! -L "$R/$applet" ] || continue
    mkdir -p "$R/$(dirname "$applet")"
    ln -s /bin/busybox "$R/$applet"
done < <("$B" --list-full)

# --- alsa-utils and its libraries (ldd against the unpacked packages, then the host's
# copies of the same bookworm libraries, e.g. libc6)
A="$WORK/x/alsa-utils"
LIBDIR_PKG="$WORK/x/libasound2/usr/lib/x86_64-linux-gnu"
for b in aplay amixer; do
    install -D -m 0755 "$A/usr/bin/$b" "$R/usr/bin/$b"
done
ln -sf aplay "$R/usr/bin/arecord"
lddout=$(for b in aplay amixer; do LD_LIBRARY_PATH="$LIBDIR_PKG" ldd "$A/usr/bin/$b"; done) \
    || die "ldd on alsa-utils failed"
if grep "not found" <<<"$lddout" >&2; then die "libraries of aplay/amixer not found (above)"; fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// {print $1, $3} $1 ~ /^\/.*ld-linux/ {print "INTERP", $1}' <<<"$lddout" | sort -u)
[ -n "$libs" ] || die "ldd found no libraries for aplay"
while read -r name path; do
    if [ "$name" = INTERP ]; then
        install -D -m 0755 "$(readlink -f "$path")" "$R$path"
    else
        install -D -m 0755 "$(readlink -f "$path")" "$R/lib/x86_64-linux-gnu/$name"
    fi
done <<<"$libs"
mkdir -p "$R/usr/share"
cp -a "$WORK/x/libasound2-data/usr/share/alsa" "$R/usr/share/alsa"
log "libraries: $(awk '{print $1}' <<<"$libs" | tr '\n' ' ')"

# --- init and the baked-in scripts
mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/run" "$R/root" "$R/etc" "$R/mnt" "$R/rdv"
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
echo "root:x:0:" > "$R/etc/group"
printf '%s\n' "${DEFAULT_MODULES[@]}" > "$R/rdv/default-modules"
cat > "$R/init" <<'EOF'
#!/bin/busybox sh
# rdv test guest init (built by tests/tools/build_guest.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

script= mods="$(cat /rdv/default-modules)"
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rdv.script=*) script="${arg#rdv.script=}" ;;
        rdv.modules=*) mods="$(echo "${arg#rdv.modules=}" | tr ',' ' ')" ;;
    esac
done
for m in $mods; do
    modprobe "$m" || echo "rdv-init: modprobe $m failed"
done

if [ -n "$script" ]; then
    if [ "${script#/}" != "$script" ] && [ -f "$script" ]; then :
    elif [ -f "/rdv/$script" ]; then script="/rdv/$script"
    elif [ -f "/rdv/$script.sh" ]; then script="/rdv/$script.sh"
    else echo "rdv-init: no script /rdv/$script"; script=/rdv/missing
    fi
elif [ -f /rdv/run.sh ]; then script=/rdv/run.sh
else script=/rdv/info.sh
fi

cd /rdv
printf '\nRDV-READY\n'
rc=0
if [ -f "$script" ]; then sh "$script" || rc=$?; else rc=127; fi
printf '\nRDV-DONE rc=%s\n' "$rc"
sync
poweroff -f
echo o > /proc/sysrq-trigger
while :; do sleep 3600; done
EOF
chmod 0755 "$R/init"
cat > "$R/rdv/info.sh" <<'EOF'
#!/bin/sh
# Print what the test drivers found.
echo "kernel: $(uname -r)"
echo "modules:"; cut -d' ' -f1 /proc/modules | sort | tr '\n' ' '; echo
echo "sound cards:"; cat /proc/asound/cards 2>/dev/null || echo "(none)"
echo "dri:"; ls /dev/dri 2>/dev/null || echo "(none)"
echo "fb:"; cat /proc/fb
echo "pci drivers bound:"
for d in /sys/bus/pci/drivers/snd_ens1370/0000:* /sys/bus/pci/drivers/vmwgfx/0000:*; do
    [ -e "$d" ] && echo "  $(basename "$(dirname "$d")") -> ${d##*/}"
done
echo "dmesg:"; dmesg | grep -i -e ens1370 -e vmwgfx -e 'snd' || true
EOF
cat > "$R/rdv/play.sh" <<'EOF'
#!/bin/sh
# Play every /rdv/*.wav on ${RDV_APLAY_DEVICE:-hw:0,0}.
rc=0
for f in /rdv/*.wav; do
    [ -f "$f" ] || { echo "play.sh: no /rdv/*.wav"; exit 1; }
    aplay -D "${RDV_APLAY_DEVICE:-hw:0,0}" "$f" || rc=$?
done
exit $rc
EOF
cat > "$R/rdv/shell.sh" <<'EOF'
#!/bin/sh
# Interactive shell on the console (job control via cttyhack); exit to power off.
setsid cttyhack sh -l
EOF
chmod 0755 "$R/rdv/"*.sh

python3 "$HERE/mkcpio.py" "$WORK/out/initramfs.cpio.gz" --root "$R" --node /dev/console:c:5:1:0600 \
    || die "writing the initramfs failed"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
log "initramfs $(du -h "$OUT/initramfs.cpio.gz" | cut -f1), kernel $(du -h "$OUT/vmlinuz" | cut -f1)"
selftest
echo "$STAMP" > "$OUT/.rdv-stamp"
rm -rf "$WORK/x" "$WORK/root"
echo "$OUT"
