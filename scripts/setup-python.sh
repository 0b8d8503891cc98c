#!/usr/bin/env bash
# Creates (or reuses) the Python environment the comparison tests use: the real
# tools our users use, from PyPI: torch, transformers, PEFT, safetensors,
# sentencepiece, tensorboard, pytest. The product itself needs no Python.
# The environment lives outside the checkout ($G3MOE_VENV, default
# ~/.cache/g3moe/venv) so that fresh clones reuse it.
set -euo pipefail
venv=${G3MOE_VENV:-$HOME/.cache/g3moe/venv}
packages=(torch transformers peft safetensors sentencepiece tensorboard pytest numpy)
stamp="$venv/.g3moe-packages"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${packages[*]}" ]] &&
   "$venv/bin/python" -c "import torch, transformers, peft, safetensors, sentencepiece, tensorboard, pytest" 2>/dev/null; then
  exit 0
fi
echo "setup-python: creating $venv (${packages[*]})"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "${packages[@]}"
echo "${packages[*]}" > "$stamp"
