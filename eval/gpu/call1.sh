#!/usr/bin/env bash
# Device call 1 of 2 (seconds): keep the first piece of the SmolLM2 GGUF, carried in .gpu/c1,
# outside the repository copy, where call 2 (eval/gpu/call2.sh) finds it on the same warm machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE=${LANDMARK_STORE:-/root/landmark-store}
mkdir -p "$STORE"
(cd .gpu/c1 && sha256sum -c SHA256SUMS)
cp .gpu/c1/gguf.part1 "$STORE/gguf.part1.tmp"
mv "$STORE/gguf.part1.tmp" "$STORE/gguf.part1"
cp .gpu/c1/SHA256SUMS "$STORE/part1.SHA256SUMS"
(cd "$STORE" && sha256sum gguf.part1 | cut -d' ' -f1) > "$STORE/part1.sha256"
ls -la "$STORE"
df -h "$STORE" | tail -1
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi here)"
echo "call 1 done: piece 1 stored in $STORE; fire call 2 now (eval/gpu/call2.sh)"
