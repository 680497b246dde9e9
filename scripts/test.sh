#!/usr/bin/env bash
# The test command: set up .venv, lint, and run the test suite (tiny random BERT; about a minute).
# Extra arguments go to pytest, e.g. scripts/test.sh -k batcher
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/hadolint Dockerfile
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
