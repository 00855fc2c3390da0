#!/usr/bin/env bash
# Builds the serving and the training image with the engine this machine has (what `make images` runs):
#
#   deploy/docker/build.sh [serve|train ...]       default: both
#
# Each image is tagged <name>:<project version>-<commit> and <name>:local (the tag Compose runs):
# cifar10-serve and cifar10-train (IMAGE_PREFIX=... replaces "cifar10-"). What it decides, each
# said on stderr:
# - engine: docker when a docker daemon answers, else podman (ENGINE=... overrides). With podman
#   and no CONTAINERS_CONF, deploy/docker/containers.conf (runc, cgroupfs: no systemd needed).
# - base: the Dockerfiles' pinned python image; when it can be neither found nor pulled, a local one
#   made from Debian packages by deploy/docker/local-base.sh (PYTHON_IMAGE=... overrides).
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

default_base=$(sed -nE 's/^ARG PYTHON_IMAGE=(.*)$/\1/p' deploy/docker/serve.Dockerfile)
if [ -z "${PYTHON_IMAGE:-}" ]; then
  if "$ENGINE" image inspect "$default_base" >/dev/null 2>&1 || timeout 120 "$ENGINE" pull -q "$default_base" >/dev/null 2>&1; then
    PYTHON_IMAGE=$default_base
  else
    say "cannot pull $default_base: making a local base from Debian packages (deploy/docker/local-base.sh)"
    PYTHON_IMAGE=$(deploy/docker/local-base.sh "${build[@]}")
  fi
fi
say "base: $PYTHON_IMAGE"

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
    --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" \
    --label "org.opencontainers.image.version=$version" --label "org.opencontainers.image.revision=$commit" \
    -t "$name:$tag" -t "$name:local" . >&2
  echo "$name:$tag built in $(($(date +%s) - started)) s"
}

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(serve train)
for image in "${images[@]}"; do
  case $image in
    serve) build_image "${IMAGE_PREFIX:-cifar10-}serve" deploy/docker/serve.Dockerfile ;;
    train) build_image "${IMAGE_PREFIX:-cifar10-}train" deploy/docker/train.Dockerfile --target train ;;
    *) say "unknown image $image (serve or train)"; exit 2 ;;
  esac
done
