#!/usr/bin/env bash
# Device call: the 32K TTFT proxy (eval/gpu/bench_32k.py), no carry needed.
#   bash eval/gpu/call_bench.sh
# Writes $OUT/bench_32k.json (rewritten after every row, so a cut run still leaves its rows) and
# $OUT/bench_32k.log. Knobs: OUT (default /tmp/bench-out), BENCH_ARGS (extra arguments, e.g.
# "--device cpu --tokens 2048 --runs 1" for a dry run on a CPU machine), BENCH_TIMEOUT_S
# (default 230), BENCH_NICE (e.g. 10 for the dry run), LANDMARK_PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
PY=${LANDMARK_PYTHON:-python3}
WORK=$(mktemp -d /tmp/bench32k-work.XXXXXX)
# vllm_landmark importable without installing it (and without vllm): a symlink shim of plugin/,
# private to this run so that no other shim on the machine is touched.
mkdir -p "$WORK/shim" && ln -sfn "$REPO/plugin" "$WORK/shim/vllm_landmark"
export PYTHONPATH="$WORK/shim:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi here)"
NICE=()
[ -n "${BENCH_NICE:-}" ] && NICE=(nice -n "$BENCH_NICE")
# The script's own guard (--max-seconds 200 by default) stops adding rows well before this.
# shellcheck disable=SC2086
timeout -k 10 "${BENCH_TIMEOUT_S:-230}" "${NICE[@]}" "$PY" eval/gpu/bench_32k.py \
    --out "$WORK/bench_32k.json" --workdir "$WORK" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_32k.log"
rc=${PIPESTATUS[0]}
if [ -f "$WORK/bench_32k.json" ]; then
    cp "$WORK/bench_32k.json" "$OUT/bench_32k.json"
else
    echo "no bench_32k.json was written"
fi
rm -rf "$WORK"
ls -la "$OUT"
echo "bench_32k exited $rc"
exit "$rc"
