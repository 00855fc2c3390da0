#!/usr/bin/env bash
# Plays a newcomer on a bare Debian 12: a podman container with only python3 (+venv), make, git,
# curl and sudo, a user with sudo rights, a clone of this repository's HEAD, the README's two
# commands and nothing else. Prints how long each took; the container's output goes to $LOG.
# One tier cannot run there: podman does not nest inside this unprivileged container, so the
# container tests skip themselves with that reason (they run on the host, and CI=true makes them
# fail rather than skip). TEST_PORT_BASE, when set, moves the tests' ports (the container shares
# the host's network: a test run on the host at the same time would hold the default ones).
#   CIFAR10_DATA=../shared/data/cifar10-jpeg.tar.gz setup/fresh-machine-check.sh
# Needs podman and debootstrap on the host (Debian packages). Only HEAD is cloned: commit first.
set -euo pipefail

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
data=$(realpath "${CIFAR10_DATA:?set CIFAR10_DATA to the local CIFAR-10 copy}")
image=localhost/cifar10-newcomer:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOG=${LOG:-$repo/reports/fresh-machine.log}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/deploy/docker/containers.conf}  # podman without systemd

if ! podman image exists "$image"; then
  echo "making $image with debootstrap from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,make,git,curl,sudo,ca-certificates \
    bookworm "$work/rootfs" "$mirror" >/dev/null
  tar -C "$work/rootfs" -c . | podman import --change 'CMD ["bash"]' - "$image" >/dev/null
fi

# The newcomer's machine reaches the package registries the way this host does: through its CA
# bundle (TLS is intercepted here). That is the host's network, not the project's setup.
ca=/etc/ssl/certs/ca-certificates.crt
mkdir -p "$(dirname "$LOG")"
echo "clone of $(git -C "$repo" rev-parse --short HEAD) in a fresh $image; output in $LOG"
podman run --rm --network host \
  -v "$repo:/src:ro" -v "$data:/srv/shared/data/cifar10-jpeg.tar.gz:ro" -v "$ca:$ca:ro" \
  -e PIP_CERT="$ca" -e SSL_CERT_FILE="$ca" -e REQUESTS_CA_BUNDLE="$ca" -e TEST_PORT_BASE="${TEST_PORT_BASE:-18080}" \
  "$image" bash -euo pipefail -c '
    useradd --create-home --shell /bin/bash newcomer
    ln -s /srv/shared /home/newcomer/shared  # the data copy beside the clone, as on the project machines
    git clone -q --bare /src /srv/cifar10.git && chown -R newcomer /srv/cifar10.git  # the "remote"
    echo "newcomer ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/newcomer
    su newcomer -c "
      set -euo pipefail
      cd ~ && git clone -q /srv/cifar10.git cifar10 && cd cifar10
      start=\$(date +%s)
      make serve CIFAR10_DATA=../shared/data/cifar10-jpeg.tar.gz
      echo \"FRESH-MACHINE make serve: \$(( \$(date +%s) - start )) s\"
      make stop
      start=\$(date +%s)
      TEST_PORT_BASE=\$TEST_PORT_BASE make test
      echo \"FRESH-MACHINE make test: \$(( \$(date +%s) - start )) s\"
    "
  ' 2>&1 | tee "$LOG" | grep -E "^FRESH-MACHINE|error|passed|failed" || true
grep -q "FRESH-MACHINE make test" "$LOG"
