#!/usr/bin/env bash
# Builds the Java agent that changes TorchServe's frontend (src/) into build/frontend-agent.jar, with ASM inside it, so
# that the jar is all the JVM needs. Needs a JDK 17 (javac, jar) and Debian's libasm-java
# (setup/system-packages.sh serve installs both), and TorchServe's own frontend jar to compile
# against (TORCHSERVE_JAR; by default the one of the torchserve package that `python3` imports).
# Usage: frontend/build.sh [OUT_JAR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build/frontend-agent.jar}
asm_dir=${ASM_DIR:-/usr/share/java}
for tool in javac jar; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found: the agent needs a JDK 17 (openjdk-17-jdk-headless)" >&2; exit 2; }
done
for lib in asm asm-tree; do
  [ -f "$asm_dir/$lib.jar" ] || { echo "error: $asm_dir/$lib.jar not found: install libasm-java" >&2; exit 2; }
done
torchserve_jar=${TORCHSERVE_JAR:-$(python3 -c 'import pathlib, ts; print(pathlib.Path(ts.__file__).parent / "frontend" / "model-server.jar")' 2>/dev/null || true)}
[ -f "$torchserve_jar" ] || { echo "error: TorchServe's model-server.jar not found (set TORCHSERVE_JAR, or install torchserve)" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/classes"
javac --release 17 -nowarn -cp "$asm_dir/asm.jar:$asm_dir/asm-tree.jar:$torchserve_jar" -d "$work/classes" \
  "$here"/src/cifar10/frontend/*.java
(cd "$work/classes" && jar xf "$asm_dir/asm.jar" org && jar xf "$asm_dir/asm-tree.jar" org)
# ASM's BSD licence travels with its classes.
mkdir -p "$work/classes/META-INF"
cp /usr/share/doc/libasm-java/copyright "$work/classes/META-INF/ASM-LICENSE" 2>/dev/null || true
printf 'Premain-Class: cifar10.frontend.Agent\n' >"$work/manifest"
jar cfm "$work/agent.jar" "$work/manifest" -C "$work/classes" .
mv "$work/agent.jar" "$out"  # whole or not at all: a TorchServe may be starting from it
echo "built $out"
