#!/usr/bin/env bash
# Prepares what a bare GPU machine lacks for `make gpu-check` (no Java, no TorchServe, no wrk, no
# network there) in .gpu-bundle/, split into parts that each fit one call's 64 MiB carry limit:
#   part1: a Java 17 runtime made with jlink (xz), the small wheels (py-spy too), the wrk .debs, the data copy
#   part2: the torchserve wheel (42 MB alone)
# Usage: benchmarks/gpu/bundle.sh [OUT_DIR]   (make gpu-check-bundle; CIFAR10_DATA names the data)
# Needs here: jlink (openjdk-17-jdk-headless), pip, apt-get (wrk .debs), the data copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-.gpu-bundle}"
data="${CIFAR10_DATA:-../shared/data/cifar10-jpeg.tar.gz}"
pip="${PIP:-.venv/bin/pip}"
limit_mib="${PART_LIMIT_MIB:-60}" # 64 MiB per call, less the repository itself (about 1 MiB) and margin

# Python 3.12 wheels for the GPU machine (x86-64, manylinux). Its image already holds torch,
# torchvision, numpy, pillow, pyyaml, psutil, requests, tqdm, matplotlib, pytest (docs/gpu.md).
small_wheels=(torch-model-archiver==0.12.0 enum-compat==0.0.3 py-spy==0.4.3)
big_wheels=(torchserve==0.12.0)
jre_modules=java.base,java.logging,java.management,java.naming,java.sql,java.xml,java.desktop,java.net.http,java.security.jgss,java.scripting,java.instrument,jdk.unsupported,jdk.crypto.ec,jdk.management,jdk.zipfs

command -v jlink >/dev/null || { echo "bundle needs jlink: apt-get install -y openjdk-17-jdk-headless" >&2; exit 2; }
[ -f "$data" ] || { echo "bundle needs the data copy: set CIFAR10_DATA (not found: $data)" >&2; exit 2; }
jlink_major=$(jlink --version | cut -d. -f1)
[ "$jlink_major" = 17 ] || { echo "bundle needs jlink 17 (TorchServe 0.12's Java), found $jlink_major" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out/part1/wheels" "$out/part1/debs" "$out/part2/wheels"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

download() { # wheels for CPython 3.12 on x86-64 Linux, without their dependencies
  "$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d "$@"
}
download "$out/part1/wheels" "${small_wheels[@]}"
download "$out/part2/wheels" "${big_wheels[@]}"

echo "jlink: a Java 17 runtime with the modules TorchServe uses"
jlink --add-modules "$jre_modules" --strip-debug --no-header-files --no-man-pages --output "$scratch/jre"
tar -C "$scratch" -cf - jre | xz -9 -T0 >"$out/part1/jre.tar.xz"

echo "wrk and its LuaJIT library (.debs, unpacked there with dpkg -x)"
(cd "$out/part1/debs" && apt-get download wrk libluajit2-5.1-2 >/dev/null)

cp "$data" "$out/part1/cifar10-jpeg.tar.gz"

status=0
for part in "$out"/part*; do
  size=$(du -sb "$part" | cut -f1)
  awk -v part="$part" -v size="$size" 'BEGIN { printf "%s: %.1f MiB\n", part, size / 1048576 }'
  if [ "$size" -gt $((limit_mib * 1048576)) ]; then
    echo "  over the ${limit_mib} MiB a part may take" >&2
    status=1
  fi
done
exit $status
