# Shared helpers for the tests/tools/build_*.sh scripts. Source it, do not run it.
# shellcheck shell=bash

RDV_CACHE="${RDV_CACHE:-$HOME/.cache/rdv}"
RDV_DEBIAN_MIRROR="${RDV_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
RDV_DEBIAN_SECURITY_MIRROR="${RDV_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
RDV_DEBIAN_KEYRING="${RDV_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"

log() { printf '[%s] %s\n' "${RDV_LOG_TAG:-rdv}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${RDV_LOG_TAG:-rdv}" "$*" >&2; exit 1; }

# Run a command with its stdout sent to stderr (stdout is reserved for the result path).
quiet() { "$@" >&2; }

# script_lock NAME: serialise concurrent runs of the same build (held until the script exits).
script_lock() {
    mkdir -p "$RDV_CACHE/locks"
    exec 9>"$RDV_CACHE/locks/$1.lock"
    if ! flock -n 9; then
        log "another run holds $RDV_CACHE/locks/$1.lock; waiting"
        flock 9
    fi
}

# apt_lock / apt_unlock: serialise use of the private apt dirs and the source downloads.
APT_LOCK_DEPTH=0
apt_lock() {
    if [ "$APT_LOCK_DEPTH" -eq 0 ]; then
        mkdir -p "$RDV_CACHE/locks"
        exec 8>"$RDV_CACHE/locks/apt.lock"
        flock 8
    fi
    APT_LOCK_DEPTH=$((APT_LOCK_DEPTH + 1))
}
apt_unlock() {
    APT_LOCK_DEPTH=$((APT_LOCK_DEPTH - 1))
    if [ "$APT_LOCK_DEPTH" -eq 0 ]; then exec 8>&-; fi
}

# is_installed PKG: true when the Debian package is installed.
is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

# ensure_pkgs PKG...: install the missing Debian packages (root only; apt-get update first,
# only when something is missing). Fails with a clear message otherwise.
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        is_installed "$p" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
    fi
    log "installing missing Debian packages: ${missing[*]}"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || die "apt-get update failed"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
}

# apt_private NAME SOURCES_TEXT: set up a private apt configuration under
# $RDV_CACHE/apt-NAME (never touches /etc/apt) and fill the global array APT_OPTS with
# the options that select it. The index is downloaded when absent; call apt_private_update
# to refresh it.
apt_private() {
    local name="$1" text="$2"
    APT_DIR="$RDV_CACHE/apt-$name"
    mkdir -p "$APT_DIR/parts" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    local f="$APT_DIR/parts/rdv-$name.sources"
    if [ ! -f "$f" ] || [ "$(cat "$f")" != "$text" ]; then
        find "$APT_DIR/parts" -maxdepth 1 -type f -delete
        printf '%s\n' "$text" > "$f"
        rm -f "$APT_DIR/updated"
    fi
    APT_OPTS=(
        -o "Dir::Etc::SourceList=/dev/null"
        -o "Dir::Etc::SourceParts=$APT_DIR/parts"
        -o "Dir::Etc::Preferences=/dev/null"
        -o "Dir::Etc::PreferencesParts=$APT_DIR/preferences.d"
        -o "Dir::State::Lists=$APT_DIR/lists"
        -o "Dir::Cache=$APT_DIR/cache"
        -o "APT::Sandbox::User=$(id -un)"
    )
    mkdir -p "$APT_DIR/preferences.d"
    if [ ! -f "$APT_DIR/updated" ]; then
        apt_lock
        [ -f "$APT_DIR/updated" ] || apt_private_update
        apt_unlock
    fi
}

apt_private_update() {
    apt_lock
    log "apt-get update (private config $APT_DIR)"
    quiet apt-get "${APT_OPTS[@]}" -q update || die "apt-get update with the private config failed"
    touch "$APT_DIR/updated"
    apt_unlock
}

# A deb822 stanza for Debian bookworm (+ updates + security). $1 = "deb", "deb-src" or "deb deb-src".
bookworm_sources() {
    cat <<EOF
Types: $1
URIs: $RDV_DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: $RDV_DEBIAN_KEYRING

Types: $1
URIs: $RDV_DEBIAN_SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: $RDV_DEBIAN_KEYRING
EOF
}

# fetch_source PKG VERSION DLDIR SRCDIR: download a Debian source package with the private
# apt config in APT_OPTS into DLDIR/PKG_VERSION/ (kept, so other trees reuse it) and unpack it
# into SRCDIR (skipped when SRCDIR/.rdv-unpacked exists). Refreshes the index once when the
# version is not known.
fetch_source() {
    local pkg="$1" ver="$2" dl="$3/${1}_${2#*:}" src="$4"
    if [ -f "$src/.rdv-unpacked" ]; then
        log "source $pkg=$ver already unpacked in $src"
        return 0
    fi
    local dsc="$dl/${pkg}_${ver#*:}.dsc"
    apt_lock
    if [ ! -f "$dl/.rdv-complete" ]; then
        if ! apt-cache "${APT_OPTS[@]}" showsrc "$pkg" 2>/dev/null | grep -x "Version: $ver" >/dev/null; then
            apt_private_update
            apt-cache "${APT_OPTS[@]}" showsrc "$pkg" 2>/dev/null | grep -x "Version: $ver" >/dev/null \
                || die "source package $pkg=$ver is not in the index of $APT_DIR/parts: the mirror no longer carries it (Debian keeps only the newest version of a suite; upgrade the installed package, e.g. apt-get install --only-upgrade qemu-system-x86, and rerun)"
        fi
        log "downloading source $pkg=$ver into $dl"
        rm -rf "$dl"
        mkdir -p "$dl"
        if ! (cd "$dl" && quiet apt-get "${APT_OPTS[@]}" -q source --download-only "$pkg=$ver"); then
            apt_private_update    # stale index? refresh once and retry
            (cd "$dl" && quiet apt-get "${APT_OPTS[@]}" -q source --download-only "$pkg=$ver") \
                || die "apt-get source $pkg=$ver failed"
        fi
        [ -f "$dsc" ] || die "expected $dsc after download"
        touch "$dl/.rdv-complete"
    fi
    apt_unlock
    rm -rf "$src"
    mkdir -p "$(dirname "$src")"
    log "unpacking $dsc into $src"
    quiet dpkg-source -x "$dsc" "$src" || die "dpkg-source -x $dsc failed"
    touch "$src/.rdv-unpacked"
}
