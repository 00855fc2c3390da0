#!/usr/bin/env bash
# Installs the Debian packages a task needs, only those missing, before any long work starts.
#   setup/system-packages.sh serve   Java 17 (TorchServe's frontend), a JDK and ASM (libasm-java) to
#                                    build the frontend agent (frontend/), and procps (TorchServe stops
#                                    workers by running `kill`: without it scale-down answers 500)
#   setup/system-packages.sh test    the above, and the tools the test suite runs for real
# As root it installs with apt-get; otherwise with `sudo -n` where that works; else it names the
# packages to install and exits 2.
set -euo pipefail

task=${1:?usage: setup/system-packages.sh serve|test}
missing=()

java_major=$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -n 1 || true)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  missing+=(openjdk-17-jre-headless)
fi
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
[ -f /usr/share/java/asm-tree.jar ] || missing+=(libasm-java)

if [ "$task" = test ]; then
  # A real Prometheus and Alertmanager for the monitoring and alerting tests; Compose's own
  # validator, and the linters of the container and shell files; a C++ compiler for torch.compile's
  # CPU backend (train --compile).
  for pair in prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager \
              docker-compose:docker-compose shellcheck:shellcheck yamllint:yamllint g++:g++; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
fi

if [ "$task" = test ]; then
  # torch.compile's CPU backend builds C++ against Python's headers (train --compile).
  include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  [ -f "$include/Python.h" ] || missing+=(python3-dev)
  # The GPU check's serve stage and the serving benchmark drive TorchServe with wrk.
  command -v wrk >/dev/null || missing+=(wrk)
  # The pod's token gateway and the fleet drill's balancer (tests/integration/test_gateway.py,
  # tests/e2e/test_fleet_drill.py), run as programs (never as services: see below). Debian installs
  # both under /usr/sbin.
  for tool in nginx haproxy; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
  done
  # The container tier (tests/e2e/test_containers.py) builds and runs the images with podman where
  # no Docker daemon answers; debootstrap makes the local base image; catatonit is podman's --init.
  if ! { command -v docker >/dev/null && docker info >/dev/null 2>&1; }; then
    for package in podman buildah runc fuse-overlayfs uidmap slirp4netns debootstrap catatonit curl; do
      dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
  fi
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing Debian packages for '$task': ${missing[*]}"
if ! command -v apt-get >/dev/null; then
  echo "error: no apt-get here; install these (or their equivalents) and retry: ${missing[*]}" >&2
  exit 2
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "error: these packages are needed and installing them needs root:" >&2
  echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
# The tests run nginx, HAProxy and Alertmanager as programs with configurations of their own. Their
# packages would also start (and enable) the system's daemons, nginx on port 80: a policy-rc.d that forbids every
# start holds for the install (Debian's own mechanism, as in container builds), then their units
# are disabled, so that nothing starts at the next boot either.
daemons=()
for name in nginx haproxy prometheus-alertmanager; do
  [[ " ${missing[*]} " == *" $name "* ]] && daemons+=("$name")
done
if [ ${#daemons[@]} -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
  trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for name in "${daemons[@]}"; do
  if command -v systemctl >/dev/null; then
    "${sudo[@]}" systemctl disable --quiet "$name" 2>/dev/null || true  # no systemd here: nothing enabled
  fi
  "${sudo[@]}" update-rc.d "$name" disable >/dev/null 2>&1 || true  # the same for sysvinit's links
done
echo "installed: ${missing[*]}"
