# paraserve: one image per model variant (VARIANT=int8-calibrated|openvino-int8|int8|fp32), the verified artifact baked in,
# or (target `repository`) several models and a cascade in one server.
#   docker build --network host --build-arg VARIANT=int8-calibrated -t paraserve:int8 .
# torch comes from wheels/ when it holds torch-2.13.0 (scripts/fetch-torch-wheel.sh puts the CPU wheel there),
# otherwise from PyTorch's CPU wheel index. A plain `pip install torch` would bring a multi-GB CUDA build.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY wheels/ /wheels/
# hadolint ignore=SC2015
RUN python -m venv /opt/venv \
 && { ls /wheels/torch-2.13.0*.whl >/dev/null 2>&1 \
      && pip install /wheels/torch-2.13.0*.whl \
      || pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; } \
 && python -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.cuda.is_available()"
COPY pyproject.toml README.md ./
COPY artifact/ artifact/
COPY app/ app/
# What serves and nothing else: no model_build (training, transformers), no tests, tools or load generator.
# torch==2.13.0 is already satisfied, so this adds only the pure-Python stack, tokenizers and the OpenTelemetry
# exporter (the `tracing` extra, off unless OTEL_* configures it), gRPC (the `grpc` extra, off unless
# PARASERVE_GRPC_PORT is set) and OpenVINO (the `openvino` extra: it runs an openvino-int8 artifact; NNCF, which
# builds one, stays out); versions are pyproject.toml's.
# hadolint ignore=DL3013
RUN pip install ".[tracing,grpc,openvino]" && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---- the load generator of the compose `loadtest` profile --------------------------------------------------
FROM builder AS loadtest
# The load run from the checkout's tools (loadtest/, the test harness, the build's MRPC reader and progress bars),
# with the versions pinned in pyproject.toml's `load` extra.
COPY model_build/ /work/model_build/
COPY loadtest/ /work/loadtest/
COPY tests/__init__.py /work/tests/__init__.py
COPY tests/harness/ /work/tests/harness/
# hadolint ignore=DL3013
RUN pip install ".[load]"
WORKDIR /work
ENTRYPOINT ["python", "-m", "loadtest.compare"]

# ---- what every serving image shares: the venv, an unprivileged user, one thread per worker -----------------------
FROM ${PYTHON_IMAGE} AS serving
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin paraserve
COPY --from=builder /opt/venv /opt/venv
# One torch/OMP thread: fastest for one 8x128 batch on a 2-core host; raise PARASERVE_TORCH_THREADS with cores.
# (DL3064 is a false positive: TOKENIZERS_PARALLELISM holds no secret.)
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PARASERVE_HOST=0.0.0.0 \
    PARASERVE_PORT=8000 \
    PARASERVE_TORCH_THREADS=1 \
    PARASERVE_JSON_LOGS=true \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    TOKENIZERS_PARALLELISM=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001
EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]

# ---- the service: one variant (compose's int8, fp32 and openvino services) ----------------------------------------
FROM serving AS runtime
ARG VARIANT=int8-calibrated
# A folder of the build context holding <variant>/ artifact folders (default: the README's run command's cache).
ARG ARTIFACTS=model-cache/default/artifacts
COPY ${ARTIFACTS}/${VARIANT}/ /models/${VARIANT}/
ENV PARASERVE_ARTIFACT_DIR=/models/${VARIANT}
LABEL org.opencontainers.image.title="paraserve" \
      org.opencontainers.image.description="Paraphrase detection (GLUE MRPC) over HTTP, OIP v2 REST and gRPC" \
      paraserve.variant="${VARIANT}"

# ---- several models and the cascade in one server (compose's `repository`) ---------------------------------------
# Last, so that building `runtime` never builds it: docker-compose 1.29's classic builder builds every stage before
# its target, and this one needs the accurate model's artifacts, which the default set-up does not make.
FROM serving AS repository
# Folders of the build context: each model's artifacts root (its served variants only) and the cascade's folder.
ARG FAST=model-cache/default/artifacts
ARG ACCURATE=model-cache/mpnet-base/artifacts
ARG CASCADE=model-cache/cascade
COPY ${FAST}/int8-calibrated/ /models/fast/int8-calibrated/
COPY ${FAST}/openvino-int8/ /models/fast/openvino-int8/
COPY ${ACCURATE}/int8-calibrated/ /models/accurate/int8-calibrated/
COPY ${ACCURATE}/openvino-int8/ /models/accurate/openvino-int8/
COPY ${CASCADE}/cascade.json /models/cascade/cascade.json
ENV PARASERVE_MODELS=fast=/models/fast,accurate=/models/accurate,cascade=/models/cascade
LABEL org.opencontainers.image.title="paraserve" \
      org.opencontainers.image.description="Paraphrase detection (GLUE MRPC): a fast and an accurate model and the cascade over them" \
      paraserve.variant="repository"
