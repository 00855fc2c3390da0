#!/usr/bin/env bash
# Installs the carried parts of a GPU check bundle (make gpu-check-bundle) into ENV_DIR, offline:
#   ENV_DIR/          a venv that sees the system Python's packages (torch) through a .pth file,
#                     with the bundle's wheels (torchserve, torch-model-archiver) installed
#   ENV_DIR/jre/      the Java runtime;  ENV_DIR/wrk/  wrk and LuaJIT, unpacked from their .debs
# Usage: benchmarks/gpu/setup_env.sh [BUNDLE_DIR] [ENV_DIR]   (SYSTEM_PYTHON: default python3)
# Parts may arrive in separate calls: what is there is installed, what was installed stays.
set -euo pipefail
bundle="${1:-.gpu-bundle}"
env="${2:-.gpu-env}"
system_python="${SYSTEM_PYTHON:-python3}"

if [ ! -x "$env/bin/python" ]; then
  "$system_python" -m venv "$env"
  site=$("$env/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$system_python" -c "import site; print(site.getsitepackages()[0])" >"$site/system-packages.pth"
fi
shopt -s nullglob
wheels=("$bundle"/part*/wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  "$env/bin/python" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check "${wheels[@]}"
fi
if [ -f "$bundle/part1/jre.tar.xz" ] && [ ! -x "$env/jre/bin/java" ]; then
  tar -C "$env" -xJf "$bundle/part1/jre.tar.xz"
fi
for deb in "$bundle"/part1/debs/*.deb; do
  dpkg -x "$deb" "$env/wrk"
done
