#!/usr/bin/env bash
# Build the vram-exporter image from the Dockerfile with buildah, on a Debian bookworm base made from
# Debian's packages (mmdebstrap), so that no registry image is pulled. This is how CI builds it
# (tests/test_container_image.py); with a registry at hand, `docker build .` or `buildah bud .` on the
# default base (the official python:3.11-slim) is the usual way.
#
#   tools/build_image.sh [TAG]        default TAG localhost/vram-exporter:dev
#
# Environment (all optional):
#   BUILDAH_ROOT, BUILDAH_RUNROOT  buildah's storage (--root/--runroot); default: buildah's own
#   BUILDAH_STORAGE_DRIVER         default vfs (works without overlayfs or fuse, as in CI)
#   DEBIAN_MIRROR                  default: the first Debian URI apt uses on this machine
#   IMAGE_CACHE_DIR                where the base's root file system tarball is kept between runs
#                                  (default ~/.cache/vram-exporter); its name carries a hash of everything
#                                  that goes into it, so a change of packages or mirror makes a new one
#   PIP_CA_BUNDLE                  CA bundle pip trusts during the build (a TLS-intercepting proxy's CA);
#                                  default $PIP_CERT, else the system bundle; a build secret, not in the image
#
# Prints the image's tag, size and build times. Needs root, buildah and mmdebstrap (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-localhost/vram-exporter:dev}
DRIVER=${BUILDAH_STORAGE_DRIVER:-vfs}
STORAGE=(--storage-driver "$DRIVER")
[ -n "${BUILDAH_ROOT:-}" ] && STORAGE+=(--root "$BUILDAH_ROOT")
[ -n "${BUILDAH_RUNROOT:-}" ] && STORAGE+=(--runroot "$BUILDAH_RUNROOT")

for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is missing (apt-get install buildah mmdebstrap)" >&2; exit 2; }
done

apt_mirror() {
  # deb822 sources first (Debian 12's default), then the one-line format.
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -z "$uri" ] && uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${DEBIAN_MIRROR:-$(apt_mirror)}

# The base: python3 (3.11 in bookworm) with its venv module, and passwd for the Dockerfile's useradd.
# Documentation, manual pages and translations are left out: nobody reads them in an exporter's image.
SUITE=bookworm
PACKAGES=python3-venv,passwd
MMDEBSTRAP_ARGS=(--variant=minbase "--include=$PACKAGES"
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*')
KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "${MMDEBSTRAP_ARGS[@]}" | sha256sum | cut -c1-16)
CACHE_DIR=${IMAGE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vram-exporter}
ROOTFS="$CACHE_DIR/debian-$SUITE-python-$KEY.tar"
BASE="localhost/vram-exporter-base:$SUITE-$KEY"

start=$SECONDS
if [ ! -s "$ROOTFS" ]; then
  mkdir -p "$CACHE_DIR"
  echo "making the $SUITE root file system from $MIRROR (cached as $ROOTFS)"
  mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" "$SUITE" "$ROOTFS.partial" "$MIRROR"
  mv "$ROOTFS.partial" "$ROOTFS"
else
  echo "reusing the cached $SUITE root file system $ROOTFS"
fi
rootfs_s=$((SECONDS - start))

start=$SECONDS
if ! buildah "${STORAGE[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  ctr=$(buildah "${STORAGE[@]}" from scratch)
  buildah "${STORAGE[@]}" add "$ctr" "$ROOTFS" / >/dev/null
  buildah "${STORAGE[@]}" config --cmd /bin/sh "$ctr"
  buildah "${STORAGE[@]}" commit --quiet --rm "$ctr" "$BASE" >/dev/null
fi
import_s=$((SECONDS - start))

SECRET=()
CA=${PIP_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
[ -s "$CA" ] && SECRET=(--secret "id=pip-ca,src=$CA")

start=$SECONDS
buildah "${STORAGE[@]}" bud --quiet --isolation chroot --build-arg "BASE=$BASE" "${SECRET[@]}" \
  --tag "$TAG" --file Dockerfile . >/dev/null
build_s=$((SECONDS - start))

size=$(buildah "${STORAGE[@]}" images --noheading --format '{{.Size}}' "$TAG")
echo "built $TAG on $BASE: $size (root file system ${rootfs_s}s, import ${import_s}s, build ${build_s}s)"
