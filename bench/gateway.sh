#!/usr/bin/env bash
# Gateway overhead side by side (bench/gateway.py): direct, nginx, LiteLLM, wakegate with 1 and
# N workers, and a streaming row. Installs what is missing: nginx-light and wrk with apt-get,
# LiteLLM into its own virtualenv (bench/.venv-litellm, git-ignored), never into the project's.
#
#   bench/gateway.sh [--quick] [--duration 8] [--workers N] [--skip-stream]
#   PYTHON=path/to/python bench/gateway.sh      # the project's interpreter (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
LITELLM_VERSION=${LITELLM_VERSION:-1.108.7}
LITELLM_VENV=bench/.venv-litellm

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
if [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
  python3 -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gateway.py --litellm "$LITELLM_VENV/bin/litellm" "$@"
