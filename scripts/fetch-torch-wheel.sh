#!/usr/bin/env bash
# Put the CPU wheel of torch 2.13.0 for the image's Python (3.11, manylinux x86_64) into wheels/.
# On these machines pip's configuration already points at a local copy; elsewhere PyTorch's CPU index serves it.
set -euo pipefail
cd "$(dirname "$0")/.."
ls wheels/torch-2.13.0*.whl >/dev/null 2>&1 && exit 0
python3 -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d wheels "torch==2.13.0" \
    ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
ls wheels/torch-2.13.0*.whl
