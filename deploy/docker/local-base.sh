#!/usr/bin/env bash
# A Python 3.11 base image made from Debian packages, for machines that cannot pull the official
# python image (no registry reachable). The images' Dockerfiles take it as
# `--build-arg PYTHON_IMAGE=<the name this prints>`; deploy/docker/build.sh does that by itself:
#
#   deploy/docker/local-base.sh BUILD-COMMAND...      e.g. podman build --network host (needs root, debootstrap)
#
# Two images: a minimal Debian bookworm with its CA store (debootstrap --variant=minbase, imported
# as an image), then Debian's python3.11 in a virtual environment at /usr/local/python, first on
# PATH (python, pip), as the official image has them in /usr/local/bin, with a pip that verifies
# TLS against the system's CA store (pip >= 24.2, as in the official image; Debian's pip 23 uses
# its own bundle).
# Made once; removing the images remakes them. DEBIAN_MIRROR picks the mirror (default: the first
# one apt uses on this machine).
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 BUILD-COMMAND... (e.g. podman build --network host)" >&2; exit 2; }
engine=$1
debian_image=localhost/cifar10-debian:bookworm-minbase
python_image=localhost/cifar10-python:3.11-bookworm

if "$engine" image inspect "$python_image" >/dev/null 2>&1; then
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
  command -v debootstrap >/dev/null || {
    echo "local-base.sh needs debootstrap: sudo apt-get install -y debootstrap" >&2
    exit 2
  }
  mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap bookworm from $mirror" >&2
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >&2
  # As the official Debian images: the release, its updates and security updates.
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian*}/debian-security bookworm-security main
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["bash"]' - "$debian_image" >&2
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
