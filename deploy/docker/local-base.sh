#!/usr/bin/env bash
# A Python 3.11 base image made from Debian packages, for machines that cannot pull the official
# python image (no registry reachable). The images' Dockerfiles take it as
# `--build-arg PYTHON_IMAGE=<the name this prints>`; deploy/docker/build.sh does that by itself:
#
#   deploy/docker/local-base.sh [--debian] BUILD-COMMAND...   e.g. podman build --network host
#
# Two images: a minimal Debian bookworm with its CA store (debootstrap --variant=minbase, imported
# as an image; with --debian, only this one is made and its name printed: the slim serving image's
# base), then Debian's python3.11 in a virtual environment at /usr/local/python, first on
# PATH (python, pip), as the official image has them in /usr/local/bin, with a pip that verifies
# TLS against the system's CA store (pip >= 24.2, as in the official image; Debian's pip 23 uses
# its own bundle).
# Made once; removing the images remakes them. DEBIAN_MIRROR picks the mirror (default: the first
# one apt uses on this machine). debootstrap needs root: a normal user's run asks sudo for it (and
# for reading and removing the root-owned tree it writes); the images stay the user's (rootless podman).
set -euo pipefail

debian_only=false
if [ "${1:-}" = --debian ]; then
  debian_only=true
  shift
fi
[ $# -ge 2 ] || { echo "usage: $0 [--debian] BUILD-COMMAND... (e.g. podman build --network host)" >&2; exit 2; }
engine=$1
debian_image=localhost/cifar10-debian:bookworm-minbase
python_image=localhost/cifar10-python:3.11-bookworm

if [ "$debian_only" = false ] && "$engine" image inspect "$python_image" >/dev/null 2>&1; then
  echo "$python_image"
  exit 0
fi

apt_mirror() {
  # deb822 sources (URIs: ...) first, then one-line sources (deb URL suite ...).
  local files=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  local url
  url=$(grep -hsE '^URIs:.*/debian/?$' "${files[@]}" | head -n 1 | awk '{print $2}')
  [ -n "$url" ] || url=$(grep -hsE '^deb .*/debian/? bookworm' "${files[@]}" | head -n 1 | awk '{print $2}')
  echo "${url:-http://deb.debian.org/debian}"
}

if ! "$engine" image inspect "$debian_image" >/dev/null 2>&1; then
  # Debian installs debootstrap in /usr/sbin, which a normal user's PATH lacks.
  debootstrap=$(PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap) || {
    echo "local-base.sh needs debootstrap: sudo apt-get install -y debootstrap" >&2
    exit 2
  }
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
  rootfs=$(mktemp -d)
  trap '"${as_root[@]}" rm -rf "$rootfs"' EXIT
  echo "debootstrap bookworm from $mirror${as_root[*]:+ (with sudo: debootstrap needs root)}" >&2
  "${as_root[@]}" "$debootstrap" --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >&2
  # As the official Debian images: the release, its updates and security updates.
  "${as_root[@]}" tee "$rootfs/etc/apt/sources.list" >/dev/null <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian*}/debian-security bookworm-security main
EOF
  # shellcheck disable=SC2016 # $1 is expanded by that sh
  "${as_root[@]}" sh -c 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' sh "$rootfs"
  "${as_root[@]}" tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["bash"]' - "$debian_image" >&2
fi
if [ "$debian_only" = true ]; then
  echo "$debian_image"
  exit 0
fi

# The build command may mount this machine's CA bundle over the system's (build.sh does where
# pip needs it): Debian's pip is pointed at the system's bundle to fetch the newer pip.
"$@" --tag "$python_image" --build-arg "DEBIAN_IMAGE=$debian_image" - >&2 <<'EOF'
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /usr/local/python \
 && /usr/local/python/bin/pip install --no-cache-dir --cert /etc/ssl/certs/ca-certificates.crt pip==25.3
ENV PATH=/usr/local/python/bin:$PATH LANG=C.UTF-8
CMD ["python"]
EOF
echo "$python_image"
