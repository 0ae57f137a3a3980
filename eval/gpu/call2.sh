#!/usr/bin/env bash
# Device call 2 of 2: reassemble the SmolLM2 GGUF (piece 1 from call 1 in $LANDMARK_STORE, piece 2
# carried in .gpu/c2), install gguf from the carried wheel, make the base model with the
# project's own conversion, smoke-check CUDA, then train recipes/embedder/configs/
# gpu_smollm2_4l.json and bring back the adapter. Everything after the piece check keeps going
# to the packing step, so whatever was trained comes back. See eval/gpu/README.md.
#
# Knobs (for the dry run on a CPU machine): LANDMARK_STORE (default /root/landmark-store),
# OUT (required), LANDMARK_DEVICE (default cuda), LANDMARK_CALL_BUDGET_S (whole script, default
# 540), LANDMARK_SKIP_SMOKE (non-empty: skip it), LANDMARK_TRAIN_ARGS (extra arguments for recipes.embedder.train), LANDMARK_PYTHON,
# LANDMARK_PIP.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
: "${OUT:?OUT must name the folder whose files come back}"
mkdir -p "$OUT"
exec 3>&1 4>&2 > >(tee "$OUT/call2.log") 2>&1
TEE_PID=$!
# On exit, let tee write out the end of the log before the command returns.
trap 'exec 1>&3 2>&4; wait "$TEE_PID" 2>/dev/null' EXIT
STORE=${LANDMARK_STORE:-/root/landmark-store}
DEVICE=${LANDMARK_DEVICE:-cuda}
BUDGET=${LANDMARK_CALL_BUDGET_S:-540}
PY=${LANDMARK_PYTHON:-python3}
C2=.gpu/c2
say() { echo "[call2 +${SECONDS}s] $*"; }

# ---------------------------------------------------------------- 1. the GGUF, fail fast
if [ ! -s "$STORE/gguf.part1" ]; then
    say "FATAL: $STORE/gguf.part1 (call 1's piece) is not here: this is not the machine call 1"
    say "ran on (it went back, or call 1 failed). Run call 1 again, then call 2 at once."
    exit 3
fi
if [ ! -s "$C2/gguf.part2" ] || [ ! -s "$C2/expected.json" ]; then
    say "FATAL: $C2 was not carried (carry must name .gpu/c2)"; exit 3
fi
(cd "$C2" && sha256sum -c --quiet SHA256SUMS) || { say "FATAL: carried files corrupt"; exit 3; }
GGUF_NAME=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["gguf_name"])' "$C2/expected.json")
WANT_SHA=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["gguf_sha256"])' "$C2/expected.json")
GGUF="$STORE/$GGUF_NAME"
cat "$STORE/gguf.part1" "$C2/gguf.part2" > "$GGUF.tmp" && mv "$GGUF.tmp" "$GGUF"
GOT_SHA=$(sha256sum "$GGUF" | cut -d' ' -f1)
if [ "$GOT_SHA" != "$WANT_SHA" ]; then
    say "FATAL: reassembled GGUF sha256 $GOT_SHA != expected $WANT_SHA"; exit 3
fi
say "GGUF reassembled: $GGUF ($(stat -c %s "$GGUF") bytes, sha256 ok)"

# ---------------------------------------------------------------- 2. packages, data, imports
rm -rf /tmp/landmark-site && mkdir -p /tmp/landmark-site
${LANDMARK_PIP:-$PY -m pip} install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/landmark-site "$C2"/gguf-*.whl || { say "FATAL: gguf wheel install failed"; exit 4; }
mkdir -p /tmp/landmark-shim && ln -sfn "$REPO/plugin" /tmp/landmark-shim/vllm_landmark
export PYTHONPATH="/tmp/landmark-shim:/tmp/landmark-site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export VLLM_LANDMARK_CACHE="$STORE/cache" VLLM_LANDMARK_SMOLLM2_GGUF="$GGUF"
DATA="$STORE/data"
rm -rf "$DATA" && mkdir -p "$DATA"
$PY -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$C2/data.tar.xz" "$DATA" || { say "FATAL: data unpack failed"; exit 4; }
say "gguf $($PY -c 'import gguf, importlib.metadata as m; print(m.version("gguf"), gguf.__file__)')"
say "data: $(ls -la "$DATA" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
nvidia-smi 2>/dev/null || say "(no nvidia-smi)"

# ---------------------------------------------------------------- 3. base model + smoke check
timeout -k 10 240 $PY eval/gpu/device_check.py --expected "$C2/expected.json" --out "$OUT" \
    --device "$DEVICE" ${LANDMARK_SKIP_SMOKE:+--skip-smoke}
rc=$?
if [ $rc -ne 0 ]; then
    say "FATAL: device check exited $rc (no base model, no training)"; exit 5
fi
BASE="$STORE/cache/models/SmolLM2-135M-Instruct"

# ---------------------------------------------------------------- 4. training
RUN="$STORE/run"
PACK_S=40      # final evaluation/save after the loop, packing, transfers
INIT_S=45      # imports, model and data loading before the loop starts
LEFT=$((BUDGET - SECONDS - PACK_S))
# The loop gets what is left after loading; fit_minutes ends the schedule 0.6 min before
# max_minutes, the backstop (stop with a checkpoint, final/ written all the same).
read -r MAX_MIN FIT_MIN < <($PY -c "
mx = max(0.5, min(6.25, ($LEFT - $INIT_S) / 60))
print(round(mx, 2), round(max(0.3, min(5.5, mx - 0.6)), 2))")
say "training: ${LEFT}s left for it; max_minutes $MAX_MIN, fit_minutes $FIT_MIN"
set -x
timeout -s INT -k 20 "$LEFT" $PY -m recipes.embedder.train \
    --config recipes/embedder/configs/gpu_smollm2_4l.json \
    --base-model "$BASE" --data-dir "$DATA" --output-dir "$RUN" --device "$DEVICE" \
    --max-minutes "$MAX_MIN" --fit-minutes "$FIT_MIN" --final-on-stop \
    ${LANDMARK_TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log"
rc=$?
set +x
say "training exited $rc"

# ---------------------------------------------------------------- 5. bring back
if [ ! -f "$RUN/final/embedder_config.json" ]; then
    last=$(ls -d "$RUN"/checkpoints/step-* 2>/dev/null | sort | tail -1)
    if [ -n "$last" ]; then
        say "no final/: exporting the newest checkpoint $last"
        cp -r "$last/embedder" "$RUN/final"
    fi
fi
[ -f "$RUN/metrics.jsonl" ] && cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl"
if [ -f "$RUN/final/embedder_config.json" ]; then
    tar -C "$RUN" -cf "$OUT/embedder-final.tar" final
    say "embedder-final.tar: $(stat -c %s "$OUT/embedder-final.tar") bytes"
fi
last=$(ls -d "$RUN"/checkpoints/step-* 2>/dev/null | sort | tail -1)
if [ -n "$last" ]; then
    tar -C "$RUN" -cf "$OUT/checkpoint-last.tar" "checkpoints/$(basename "$last")"
    size=$(stat -c %s "$OUT/checkpoint-last.tar")
    if [ "$size" -gt $((15 * 1024 * 1024)) ]; then
        say "checkpoint-last.tar is $size bytes, over 15 MiB: dropped"; rm -f "$OUT/checkpoint-last.tar"
    else
        say "checkpoint-last.tar ($(basename "$last"), to resume elsewhere): $size bytes"
    fi
fi
$PY - "$RUN" "$OUT" <<'PY'
import json, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
config = run / "final" / "embedder_config.json"
if config.exists():
    data = json.loads(config.read_text())
    training = data.get("training", {})
    summary = {
        "base_model": data.get("base_model"),
        "steps": training.get("steps"),
        "total_steps": training.get("total_steps"),
        "stopped_early": training.get("stopped_early", False),
        "samples_seen": training.get("samples_seen"),
        "elapsed_s": training.get("elapsed_s"),
        "stages": training.get("config", {}).get("stages"),
    }
evals = []
if (run / "metrics.jsonl").exists():
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "eval":
            evals.append({"step": record["step"], **record["heldout_loss"]})
summary["heldout_loss"] = evals
print(json.dumps(summary, indent=1))
PY
ls -la "$OUT"
say "call 2 done (training rc $rc)"
exit $rc
