#!/usr/bin/env bash
# The air-gapped base image: Debian bookworm from the Debian archive (debootstrap --variant=minbase), imported
# into the local Docker engine as $1 (default rdv-base:bookworm-slim). For a machine that cannot pull
# debian:bookworm-slim from a registry; build the node with RDV_BASE_IMAGE set to the same name.
#   sudo deploy/base-image.sh [IMAGE] [MIRROR]
# Needs root, debootstrap and a running Docker engine. Does nothing when IMAGE already exists.
set -euo pipefail
image=${1:-rdv-base:bookworm-slim}
mirror=${2:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}
if "$docker" image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image already present"
  exit 0
fi
root=$(mktemp -d /var/tmp/rdv-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# As the registry's image: the three bookworm suites, and no package lists or .debs left behind.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# Slim as the registry's bookworm-slim: no documentation, manuals or translations, no apt caches.
cat >"$root/etc/dpkg/dpkg.cfg.d/rdv-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
SLIM
cat >"$root/etc/apt/apt.conf.d/rdv-slim" <<'SLIM'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
SLIM
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/groff/* "$root"/usr/share/info/* "$root"/usr/share/lintian/* \
  "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/var/log/apt/*
tar -C "$root" -c . | "$docker" import --change 'CMD ["bash"]' - "$image" >/dev/null
echo "base image $image imported from $mirror"
