#!/usr/bin/env bash
# Builds the serving images and the training image with the engine this machine has (what `make
# images` runs):
#
#   deploy/docker/build.sh [serve|serve-slim|train ...]       default: all three
#
# Each image is tagged <name>:<project version>-<commit> and <name>:local (the tag Compose runs):
# cifar10-serve (torch: TorchScript, GPU), cifar10-serve-slim (no torch: ONNX archives on the CPU)
# and cifar10-train (IMAGE_PREFIX=... replaces "cifar10-"). What it decides, each said on stderr:
# - engine: docker when a docker daemon answers, else podman (ENGINE=... overrides). With podman
#   and no CONTAINERS_CONF, deploy/docker/containers.conf (runc, cgroupfs: no systemd needed); for a
#   normal user and no CONTAINERS_STORAGE_CONF, deploy/docker/storage-rootless.conf (overlay, not vfs).
# - base: the Dockerfiles' pinned python image (the slim image's: a Debian image); when it can be
#   neither found nor pulled, a local one made from Debian packages by deploy/docker/local-base.sh
#   (PYTHON_IMAGE=..., DEBIAN_IMAGE=... override).
# - torch: PyTorch's CPU-only index (the Dockerfiles' default); when that index does not answer,
#   PyPI's torch, the CUDA build (several GB larger) (TORCH_INDEX_URL=... overrides).
# - TLS: when this machine's pip trusts a CA bundle of its own (PIP_CERT, or pip's global.cert),
#   podman mounts it over the image's CA bundle for the build steps only: it never ends up in an image.
# Prints "<image> built in <seconds> s" per image on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "build.sh: $*" >&2; }

if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  else
    say "no container engine: install Docker (a running daemon) or podman (Debian: sudo apt-get install -y podman buildah runc fuse-overlayfs uidmap slirp4netns debootstrap catatonit)"
    exit 2
  fi
fi
build=("$ENGINE" build)
if [ "$ENGINE" = podman ]; then
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/docker/containers.conf}
  # A normal user's podman: the overlay driver (Debian's default for it is vfs: every layer copied whole).
  if [ "$(id -u)" != 0 ]; then
    export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$PWD/deploy/docker/storage-rootless.conf}
  fi
  # Docker's image format keeps HEALTHCHECK (the OCI format drops it); host network: no CNI setup needed.
  build+=(--format docker --network host)
fi
say "engine: $ENGINE"

default_index=$(sed -nE 's/^ARG TORCH_INDEX_URL=(.*)$/\1/p' deploy/docker/serve.Dockerfile)
if [ -z "${TORCH_INDEX_URL:-}" ]; then
  if curl -sf -o /dev/null --max-time 20 "$default_index/"; then
    TORCH_INDEX_URL=$default_index
  else
    TORCH_INDEX_URL=https://pypi.org/simple
    say "$default_index does not answer: PyPI's torch instead (the CUDA build: images several GB larger)"
  fi
fi
say "torch from: $TORCH_INDEX_URL"

# pip >= 24.2 verifies TLS against the system's CA store, so mounting this machine's bundle over the
# image's for the build steps is enough: no pip.conf, no variable, and the mount point exists in the
# base image (a mount at a new path would leave an empty file behind in the image).
ca_bundle=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$ca_bundle" ]; then
  if [ "$ENGINE" = podman ]; then
    build+=(-v "$(realpath "$ca_bundle"):/etc/ssl/certs/ca-certificates.crt:ro")
    say "pip in the build trusts $ca_bundle (mounted over the image's CA bundle for the build steps only)"
  else
    say "this machine's pip trusts $ca_bundle; docker build cannot mount it: pip in the build uses the image's CA store"
  fi
fi

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(serve serve-slim train)

base_image() {  # dockerfile [local-base.sh option]: the Dockerfile's base if it can be had, else a local one
  local default
  default=$(sed -nE 's/^ARG (PYTHON|DEBIAN)_IMAGE=(.*)$/\2/p' "$1")
  if "$ENGINE" image inspect "$default" >/dev/null 2>&1 || timeout 120 "$ENGINE" pull -q "$default" >/dev/null 2>&1; then
    echo "$default"
  else
    say "cannot pull $default: making a local base from Debian packages (deploy/docker/local-base.sh)"
    deploy/docker/local-base.sh "${@:2}" "${build[@]}"
  fi
}
if [[ " ${images[*]} " =~ \ (serve|train)\  ]]; then
  PYTHON_IMAGE=${PYTHON_IMAGE:-$(base_image deploy/docker/serve.Dockerfile)}
  say "base: $PYTHON_IMAGE"
fi
if [[ " ${images[*]} " == *" serve-slim "* ]]; then
  DEBIAN_IMAGE=${DEBIAN_IMAGE:-$(base_image deploy/docker/serve-slim.Dockerfile --debian)}
  say "base of the slim image: $DEBIAN_IMAGE"
fi

version=$(sed -nE 's/^version = "(.*)"$/\1/p' pyproject.toml)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
tag="$version-$commit"

build_image() {  # name dockerfile [extra build args]
  local name=$1 dockerfile=$2 started
  shift 2
  started=$(date +%s)
  say "building $name:$tag ($dockerfile)"
  "${build[@]}" -f "$dockerfile" "$@" \
    --label "org.opencontainers.image.version=$version" --label "org.opencontainers.image.revision=$commit" \
    -t "$name:$tag" -t "$name:local" . >&2
  echo "$name:$tag built in $(($(date +%s) - started)) s"
}

torch_args=(--build-arg "PYTHON_IMAGE=${PYTHON_IMAGE:-}" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
for image in "${images[@]}"; do
  case $image in
    serve) build_image "${IMAGE_PREFIX:-cifar10-}serve" deploy/docker/serve.Dockerfile "${torch_args[@]}" ;;
    serve-slim) build_image "${IMAGE_PREFIX:-cifar10-}serve-slim" deploy/docker/serve-slim.Dockerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" ;;
    train) build_image "${IMAGE_PREFIX:-cifar10-}train" deploy/docker/train.Dockerfile --target train "${torch_args[@]}" ;;
    *) say "unknown image $image (serve, serve-slim or train)"; exit 2 ;;
  esac
done
