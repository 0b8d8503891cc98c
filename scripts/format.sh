#!/usr/bin/env bash
# Formats every C++ and CUDA source the repository tracks with clang-format-22
# and the root .clang-format (LLVM style). With --check it changes nothing and
# fails, listing the files, when any would change.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
format=${CLANG_FORMAT:-clang-format-22}
command -v "$format" >/dev/null || { echo "format: $format not found (scripts/setup.sh installs it)"; exit 1; }
mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')
if [[ ${1:-} == --check ]]; then
  unformatted=()
  for f in "${files[@]}"; do
    "$format" --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
  done
  if ((${#unformatted[@]})); then
    echo "format: not formatted (run scripts/format.sh): ${unformatted[*]}"
    exit 1
  fi
  echo "format: ${#files[@]} files formatted"
else
  "$format" -i "${files[@]}"
fi
