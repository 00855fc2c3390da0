#!/usr/bin/env bash
# make gpu-check: benchmarks/gpu_check.py on this machine, with what it needs. Arguments go to it.
# A machine with Java 17, wrk and a Python that has torch (CUDA) and torchserve: runs with
# GPU_PYTHON (default .venv/bin/python, else python3). A bare GPU machine (no Java, no TorchServe,
# no network): the parts of .gpu-bundle/ carried there (make gpu-check-bundle) are installed first
# into .gpu-env/: a venv that sees the system's torch, the wheels, the Java runtime, wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=.gpu-bundle
env=.gpu-env

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: make gpu-check needs a machine with an NVIDIA GPU; nvidia-smi finds none here (docs/gpu.md)." >&2
  exit 2
fi

python="${GPU_PYTHON:-}"
if [ -z "$python" ] && { [ -d "$bundle" ] || [ -d "$env" ]; }; then
  benchmarks/gpu/setup_env.sh "$bundle" "$env"
  python="$env/bin/python"
  export PATH="$PWD/$env/jre/bin:$PWD/$env/wrk/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$PWD/$env/wrk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -z "$python" ]; then
  python=.venv/bin/python
  [ -x "$python" ] || python=python3
fi
if [ -z "${CIFAR10_DATA:-}" ]; then
  for candidate in "$bundle/part1/cifar10-jpeg.tar.gz" ../shared/data/cifar10-jpeg.tar.gz; do
    if [ -f "$candidate" ]; then
      export CIFAR10_DATA="$PWD/$candidate"
      break
    fi
  done
fi
export PYTHONUNBUFFERED=1
exec "$python" -m benchmarks.gpu_check "$@"
