#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh Debian machine with the Rust toolchain and Python 3:
# a project-local virtual environment with PyPI's torch (libtorch for the student worker, pinned to
# what tch 0.24 is tested with here) and the Python packages the parity tests and benchmarks use,
# then a build of every binary. Source it or run it; it prints what it does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TORCH_VERSION=2.11.0
# transformers, peft, safetensors, tokenizers: the Qwen3 parity tests build tiny checkpoints with them.
# openai, langchain-openai: the clients tests/serve.rs points at `tracelab serve`.
PY_PACKAGES=("torch==${TORCH_VERSION}" "transformers==5.24.0" "peft==0.21.2" "safetensors==0.8.0" "tokenizers==0.23.3" "openai==3.63.0" "langchain-openai==1.8.1")

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.tracelab-packages
if [ "$(cat "$stamp" 2>/dev/null)" != "${PY_PACKAGES[*]}" ]; then
  echo "setup: installing ${PY_PACKAGES[*]} into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "${PY_PACKAGES[*]}" > "$stamp"
fi

# tch's build script finds libtorch through the venv's python; the student crate's build script
# embeds an rpath to it, so the binaries run without LD_LIBRARY_PATH.
export LIBTORCH_USE_PYTORCH=1
export PATH="$PWD/.venv/bin:$PATH"
