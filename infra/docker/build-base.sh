#!/usr/bin/env bash
# Build a Debian bookworm base image without any container registry: debootstrap a minimal rootfs from a Debian
# mirror, then `docker import` it. Use it where `docker pull` is impossible (air-gapped or registry-less hosts):
#
#   sudo BASE_IMAGE=relevance-base:bookworm infra/docker/build-base.sh
#   IMAGE=relevance:dev BASE_IMAGE=relevance-base:bookworm infra/docker/build.sh
#
# The result has Debian's python3 (3.11, /usr/bin/python3), python3-venv, python3-pip, ca-certificates and libgomp1.
# Debian's python3 is "externally managed" (PEP 668): `pip install` into it is refused. The Dockerfile therefore
# always installs into a virtual environment, /opt/venv, first on PATH; it does the same FROM python:3.11-slim, so
# one Dockerfile serves both bases.
#
# Needs: root, debootstrap (apt-get install debootstrap), a reachable Debian mirror, a running docker daemon.
# Environment:
#   BASE_IMAGE  name:tag of the imported image          (default relevance-base:bookworm)
#   SUITE       Debian suite                            (default bookworm; keep it: python3 must be 3.11)
#   MIRROR      Debian mirror                           (default http://deb.debian.org/debian)
#   ARCH        dpkg architecture                       (default: this host's)
#   WORKDIR     where the rootfs is built (then deleted) (default: a fresh dir under ${TMPDIR:-/tmp})
#   PUSH=1      also `docker push "$BASE_IMAGE"`
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-relevance-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ARCH=${ARCH:-$(dpkg --print-architecture)}
PACKAGES=python3,python3.11,python3-venv,python3-pip,ca-certificates,libgomp1,passwd

[[ $(id -u) == 0 ]] || { echo "build-base.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-base.sh: needs debootstrap (apt-get install -y debootstrap)" >&2; exit 1; }
command -v docker >/dev/null || { echo "build-base.sh: needs the docker CLI and a running daemon" >&2; exit 1; }

work=${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/relevance-rootfs.XXXXXX")}
rootfs="$work/rootfs"
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT

echo ">> debootstrap $SUITE ($ARCH, minbase) from $MIRROR into $rootfs"
debootstrap --variant=minbase --arch="$ARCH" --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"

# Slim it down and make it behave like a container base: no apt caches or lists, no docs, C.UTF-8 locale.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/tmp/*
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete   # keep the licence files
printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://security.debian.org/debian-security %s-security main\n' \
    "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" > "$rootfs/etc/apt/sources.list"
: > "$rootfs/etc/hostname"
: > "$rootfs/etc/resolv.conf"   # docker bind-mounts its own at run time

echo ">> docker import -> $BASE_IMAGE"
tar --numeric-owner --xattrs -C "$rootfs" -c . | docker import \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["/bin/bash"]' \
    -m "debootstrap --variant=minbase $SUITE + $PACKAGES" \
    - "$BASE_IMAGE"

docker run --rm --network none "$BASE_IMAGE" python3 --version
docker image ls "$BASE_IMAGE"
if [[ ${PUSH:-0} == 1 ]]; then docker push "$BASE_IMAGE"; fi
