#!/usr/bin/env bash
# The main job: set up .venv, build the default model if it is not cached, and serve it on 127.0.0.1:8000.
#   MRPC_DIR=...      GLUE MRPC folder (default ../shared/data/mrpc); only needed the first time, to fine-tune
#   MODEL_DIR=...     serve this local Hugging Face BERT MRPC checkpoint instead of fine-tuning MiniLM
#   VARIANT=...       serve this variant: int8-calibrated, openvino-int8, int8 (the tutorial's dynamic int8), fp32; unset: the
#                     artifacts root, where PARASERVE_ENGINE=auto (default) times the two int8 engines and serves the faster
#   PARASERVE_*       any service setting (see README), e.g. PARASERVE_PORT=9000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
args=(--data-dir "${MRPC_DIR:-../shared/data/mrpc}" --cache "${PARASERVE_CACHE:-model-cache}")
[[ -n "${MODEL_DIR:-}" ]] && args+=(--model-dir "$MODEL_DIR")
artifacts=$(.venv/bin/python -m model_build ensure-default "${args[@]}")
# A root serves the best variant this host runs (MODEL_DIR without MRPC has nothing calibrated: dynamic int8 then).
export PARASERVE_ARTIFACT_DIR=${PARASERVE_ARTIFACT_DIR:-$artifacts${VARIANT:+/$VARIANT}}
exec .venv/bin/python -m app
