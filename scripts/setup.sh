#!/usr/bin/env bash
# Installs what building and testing g3moe needs on a fresh Debian 12 machine.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache
  llvm-22-dev libmlir-22-dev mlir-22-tools lld-22
  libgtest-dev flatbuffers-compiler libflatbuffers-dev nlohmann-json3-dev libcli11-dev
  python3 python3-venv sentencepiece libsentencepiece-dev
  # CPU collectives of multi-process training (runtime/dist/).
  libgloo-dev
  # The sanitizer and fuzzing builds (scripts/sanitize.sh, scripts/fuzz.sh):
  # clang with its ASan, UBSan and libFuzzer runtimes.
  clang-22 libclang-rt-22-dev
  # The formatter of .clang-format (scripts/format.sh).
  clang-format-22
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
