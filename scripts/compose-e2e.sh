#!/usr/bin/env bash
# End-to-end proof of docker-compose.yml: build both images, start the stack, and check answers, health,
# Prometheus scraping and metric-format validity; always tears everything down. Bounded: a few minutes once the
# base images exist. Uses the default model's artifacts when cached, else a tiny random model (fast).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROJECT=${E2E_PROJECT:-paraserve-e2e}
# Test images never take the deployable names (paraserve:int8, paraserve:fp32): a tiny random model built here must
# not be what a later `docker compose up` runs. tests/api/test_deploy_names.py checks the two differ.
export PARASERVE_IMAGE=paraserve-e2e
export INT8_PORT=${INT8_PORT:-18001} FP32_PORT=${FP32_PORT:-18002} OPENVINO_PORT=${OPENVINO_PORT:-18003} PROMETHEUS_PORT=${PROMETHEUS_PORT:-19090}
export INT8_GRPC_PORT=${INT8_GRPC_PORT:-19001} FP32_GRPC_PORT=${FP32_GRPC_PORT:-19002} OPENVINO_GRPC_PORT=${OPENVINO_GRPC_PORT:-19003}
export REPOSITORY_PORT=${REPOSITORY_PORT:-18004} REPOSITORY_GRPC_PORT=${REPOSITORY_GRPC_PORT:-19004}
SERVICES=(int8 fp32 openvino repository)
failures=()
say() { echo "[compose-e2e] $*"; }
fail() { failures+=("$*"); say "FAIL: $*"; }

if [[ -f ../shared/env/docker/start.sh ]]; then
    # That helper finds the Debian mirror by grepping /etc/apt/sources.list *and* sources.list.d under pipefail, so on
    # a machine whose apt sources are only deb822 files (sources.list.d/debian.sources) the missing file alone stops
    # it (grep exits 2). An empty sources.list is valid for apt and lets it read the mirror from debian.sources.
    if [[ ! -e /etc/apt/sources.list && -d /etc/apt/sources.list.d && $(id -u) == 0 ]]; then touch /etc/apt/sources.list; fi
    bash ../shared/env/docker/start.sh
fi
# The compose command is chosen only now: on a fresh machine the engine set-up above is what installs docker-compose,
# and `docker compose` without the plugin fails as "unknown shorthand flag: 'p'".
if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    say "FAIL: neither docker-compose nor the docker compose plugin is installed"; exit 1
fi
command -v docker >/dev/null 2>&1 || { say "FAIL: no docker client"; exit 1; }
dc() { "${compose[@]}" -p "$PROJECT" -f docker-compose.yml --profile repository "$@"; }
scripts/setup.sh
scripts/fetch-torch-wheel.sh >/dev/null

verified() { .venv/bin/python -c "from pathlib import Path; from artifact.manifest import verify_artifact; verify_artifact(Path('$1'))" 2>/dev/null; }
# tiny <family> <out> <name> <variant>...: a tiny random checkpoint of the family, built into <out> unless it verifies there.
tiny() {
    local family=$1 out=$2 name=$3 variants=(); shift 3
    for v in "$@"; do variants+=(--variant "$v"); done
    verified "$out/openvino-int8" && return
    say "building a tiny $family model ($name) into $out (calibrated on ${MRPC_DIR:-../shared/data/mrpc})"
    .venv/bin/python -m model_build --log-level WARNING init-tiny --family "$family" --out "$out-checkpoint" --force >/dev/null
    .venv/bin/python -m model_build --log-level WARNING build --model-dir "$out-checkpoint" --out "$out" "${variants[@]}" \
        --calibration-data "${MRPC_DIR:-../shared/data/mrpc}" --calibration-pairs 64 --name "$name" --force >/dev/null
}

E2E=model-cache/e2e-tiny
if verified model-cache/default/artifacts/fp32 && verified model-cache/default/artifacts/int8-calibrated \
    && verified model-cache/default/artifacts/openvino-int8; then
    export ARTIFACTS=model-cache/default/artifacts
    say "using the cached default model"
else
    export ARTIFACTS=$E2E/artifacts
fi
# The images' model (when nothing is cached), and the repository service's: a tiny BERT and a tiny MPNet (built from
# configs) and a cascade over them.
tiny bert "$E2E/artifacts" tiny-e2e fp32 int8-calibrated openvino-int8
tiny mpnet "$E2E/mpnet" tiny-mpnet-e2e int8-calibrated openvino-int8
.venv/bin/python -c "
from pathlib import Path
from artifact.cascade import CASCADE_FORMAT, CascadeBand, CascadeFile, write_cascade
write_cascade(Path('$E2E/cascade'), CascadeFile(format_version=CASCADE_FORMAT, name='cascade', fast='tiny-e2e', accurate='tiny-mpnet-e2e',
    band=CascadeBand(low=0.0, high=1.0), chosen={'note': 'every pair escalated: the e2e checks both stages answer'}))"
export FAST_ARTIFACTS=$E2E/artifacts ACCURATE_ARTIFACTS=$E2E/mpnet CASCADE_FOLDER=$E2E/cascade

cleanup() {
    local code=$?
    if ((${#failures[@]})) || ((code)); then
        say "logs of the failed run:"
        dc logs --no-color --tail 40 2>&1 | tail -120 || true
    fi
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    exit "$code"
}
trap cleanup EXIT

say "building images (ARTIFACTS=$ARTIFACTS)"
dc build "${SERVICES[@]}"
dc up -d
say "waiting for the services to be healthy"
deadline=$((SECONDS + 180))
for svc in "${SERVICES[@]}"; do
    until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q "$svc")" 2>/dev/null)" == healthy ]]; do
        ((SECONDS < deadline)) || { fail "$svc did not become healthy in 180 s"; exit 1; }
        sleep 2
    done
done

for svc in "${SERVICES[@]}"; do
    id=$(dc ps -q "$svc")
    uid=$(docker exec "$id" id -u)
    [[ "$uid" != 0 ]] || fail "$svc runs as root"
    [[ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$id")" == true ]] || fail "$svc root filesystem is writable"
    say "$svc runs as uid $uid on a read-only root filesystem"
done

pair='{"pairs":[{"sentence1":"The cat sat on the mat.","sentence2":"A cat was sitting on the mat."}]}'
for target in "int8:$INT8_PORT:${INT8_VARIANT:-int8-calibrated}" "fp32:$FP32_PORT:fp32" "openvino:$OPENVINO_PORT:openvino-int8"; do
    IFS=: read -r service port variant <<<"$target"
    body=$(curl -sS --max-time 30 -XPOST "http://127.0.0.1:$port/predict" -H 'content-type: application/json' -d "$pair") \
        || { fail "$service ($variant): /predict did not answer"; continue; }
    echo "$body" | python3 -c "
import json, sys
d = json.load(sys.stdin)
p = d['predictions']
assert len(p) == 1 and p[0]['label'] in ('paraphrase', 'not_paraphrase') and 0 <= p[0]['score'] <= 1, d
assert d['model']['variant'] == '$variant', d" || fail "$service ($variant): unexpected /predict answer: $body"
    say "$service ($variant) answered: $body"
    curl -sS --max-time 10 "http://127.0.0.1:$port/metrics" \
        | docker run --rm -i --entrypoint /bin/promtool prom/prometheus:v2.42.0 check metrics \
        || fail "$service ($variant): promtool check metrics found problems"
done

for model in fast accurate cascade; do
    body=$(curl -sS --max-time 30 -XPOST "http://127.0.0.1:$REPOSITORY_PORT/predict" -H 'content-type: application/json' \
        -d "{\"model\":\"$model\",\"pairs\":[{\"sentence1\":\"The cat sat.\",\"sentence2\":\"A cat sat.\"}]}") \
        || { fail "repository: /predict for $model did not answer"; continue; }
    echo "$body" | python3 -c "
import json, sys
d = json.load(sys.stdin)
decided = {'fast': 'fast', 'accurate': 'accurate', 'cascade': 'accurate'}['$model']
assert d['model']['name'] == '$model' and d['predictions'][0]['decided_by'] == decided, d" || fail "repository: unexpected answer for $model: $body"
    say "repository answered for $model: $body"
done
curl -sS --max-time 10 "http://127.0.0.1:$REPOSITORY_PORT/metrics" \
    | docker run --rm -i --entrypoint /bin/promtool prom/prometheus:v2.42.0 check metrics \
    || fail "repository: promtool check metrics found problems"

for target in "int8:$INT8_GRPC_PORT" "fp32:$FP32_GRPC_PORT" "openvino:$OPENVINO_GRPC_PORT" "repository:$REPOSITORY_GRPC_PORT"; do
    IFS=: read -r service port <<<"$target"
    .venv/bin/python -c "
import grpc, sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
from app.protocols.grpc_gen import open_inference_pb2 as pb, open_inference_pb2_grpc as pb_grpc
with grpc.insecure_channel('127.0.0.1:$port') as channel:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=''), timeout=10).status
    live = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10).live
sys.exit(not (status == health_pb2.HealthCheckResponse.SERVING and live))" || fail "$service: gRPC health or ServerLive failed on $port"
    say "$service answers gRPC on $port (health SERVING, ServerLive)"
done

say "waiting for Prometheus to scrape every target"
prom="http://127.0.0.1:$PROMETHEUS_PORT"
deadline=$((SECONDS + 90))
until curl -sS --max-time 5 "$prom/api/v1/targets" 2>/dev/null | python3 -c "
import json, sys
targets = [t for t in json.load(sys.stdin)['data']['activeTargets'] if t['labels']['job'] == 'paraserve']
up = sorted(t['labels']['deployment'] for t in targets if t['health'] == 'up')
sys.exit(up != ['fp32', 'int8', 'openvino', 'repository'])"; do
    ((SECONDS < deadline)) || { fail "Prometheus did not see every paraserve target up in 90 s"; break; }
    sleep 3
done
query='sum by (deployment) (paraserve_http_request_duration_seconds_count{route="/predict"})'
deadline=$((SECONDS + 60))
until curl -sS --max-time 5 -G "$prom/api/v1/query" --data-urlencode "query=$query" | python3 -c "
import json, sys
result = json.load(sys.stdin)['data']['result']
seen = sorted(r['metric']['deployment'] for r in result if float(r['value'][1]) >= 1)
print('latency histogram samples:', {r['metric']['deployment']: r['value'][1] for r in result})
sys.exit(seen != ['fp32', 'int8', 'openvino', 'repository'])"; do
    ((SECONDS < deadline)) || { fail "no latency histogram samples for every deployment in Prometheus"; break; }
    sleep 3
done

docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^$PARASERVE_IMAGE:" || true
if ((${#failures[@]})); then
    say "${#failures[@]} check(s) failed:"; printf '  - %s\n' "${failures[@]}"
    exit 1
fi
say "all checks passed"
