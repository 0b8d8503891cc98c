#!/usr/bin/env bash
# Creates (or reuses) the Python environment the comparison tests use: the real
# tools our users use, from PyPI: torch, transformers, PEFT, safetensors,
# sentencepiece, tensorboard, pytest. The product itself needs no Python.
# The environment lives outside the checkout ($G3MOE_VENV, default
# ~/.cache/g3moe/venv) so that fresh clones reuse it.
#
# The tools are the tests' oracles, so every version is pinned: the packages
# the tests import and everything they pull in (accelerate, tokenizers, Jinja2
# for the chat templates, huggingface_hub, ...), as the versions the suite
# last passed with. A new release then cannot change an oracle unnoticed; to
# move to one, change the pin here and rerun the suite. torch comes from
# PyPI's default index (its Linux wheels bring the CUDA libraries; the tests
# run it on the CPU). Changing any pin changes the stamp, which makes the next
# run install the pinned versions into the existing environment.
set -euo pipefail
venv=${G3MOE_VENV:-$HOME/.cache/g3moe/venv}
packages=(
  torch==2.15.0 transformers==5.25.0 peft==0.21.2 safetensors==0.8.0
  sentencepiece==0.2.3 tensorboard==2.21.0 pytest==9.2.0 numpy==2.4.6
)
# What the packages above depend on, as pip constraints (pinned where pip
# installs them, nothing installed for their own sake).
constraints=(
  absl-py==2.5.1 accelerate==1.16.0 annotated-doc==0.0.7 annotated-types==0.8.0
  anyio==4.16.0 click==8.5.1 cuda-bindings==13.5.0 cuda-pathfinder==1.9.1
  cuda-toolkit==13.2.2 filelock==4.3.2 fsspec==2026.9.0 grpcio==1.85.4 h11==0.16.0
  hf-xet==1.8.0 httpcore2==2.17.0 httpx2==2.17.0 huggingface_hub==2.4.0 idna==3.21
  iniconfig==2.3.1 Jinja2==3.1.6 kernels==0.19.1 Markdown==3.11.3
  markdown-it-py==4.3.0 MarkupSafe==3.0.4 mdurl==0.1.2 mpmath==1.3.0 networkx==3.6.1
  nvidia-cublas==13.4.1.3 nvidia-cuda-cccl==13.3.5.0.6 nvidia-cuda-cupti==13.2.86
  nvidia-cuda-nvrtc==13.2.86 nvidia-cuda-runtime==13.2.86 nvidia-cudnn-cu13==9.26.0.51
  nvidia-cufft==12.2.0.57 nvidia-cufile==1.17.1.22 nvidia-cusolver==12.2.0.11
  nvidia-cusparse==12.7.10.12 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7
  nvidia-nvjitlink==13.5.37 nvidia-nvshmem-cu13==3.7.2 nvidia-nvtx==13.2.86
  packaging==26.4 pillow==13.0.0 pluggy==1.7.0 protobuf==7.36.2 psutil==7.2.2
  pydantic==2.14.4 pydantic_core==2.50.5 Pygments==2.21.0 PyYAML==6.0.4
  regex==2026.12.2 rich==15.0.0 setuptools==84.2.1 shellingham==1.5.4 sympy==1.14.0
  tensorboard-data-server==0.7.2 tokenizers==0.23.3 tomlkit==0.15.3 tqdm==4.70.1
  triton==3.9.0 truststore==0.10.5 typer==0.29.2 typing-inspection==0.4.5
  typing_extensions==4.16.0 Werkzeug==3.1.9
)
pip_version=26.3
stamp="$venv/.g3moe-packages"
want="pip==$pip_version ${packages[*]} -c ${constraints[*]}"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
   "$venv/bin/python" -c "import torch, transformers, peft, safetensors, sentencepiece, tensorboard, pytest" 2>/dev/null; then
  exit 0
fi
echo "setup-python: installing the pinned tools into $venv (${packages[*]})"
python3 -m venv "$venv"
rm -f "$stamp"
printf '%s\n' "${constraints[@]}" >"$venv/g3moe-constraints.txt"
"$venv/bin/pip" install -q "pip==$pip_version"
"$venv/bin/pip" install -q -c "$venv/g3moe-constraints.txt" "${packages[@]}"
echo "$want" >"$stamp"
