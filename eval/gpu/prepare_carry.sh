#!/usr/bin/env bash
# Here (not on the device): build the two carry folders of the GPU embedder training.
#   .gpu/c1: the first 50 MiB of the SmolLM2 GGUF            (device call 1, eval/gpu/call1.sh)
#   .gpu/c2: the rest of it, the token data (tar.xz), the gguf wheel, the expected sha256 and
#            base-model fingerprint                         (device call 2, eval/gpu/call2.sh)
# .gpu/ is ignored through .git/info/exclude; see eval/gpu/README.md for the two calls.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${LANDMARK_EMBEDDER_DATA:-$HOME/.cache/vllm-landmark/embedder-data/smollm2-135m}
PIECE_BYTES=$((50 * 1024 * 1024))
GGUF_VERSION=$($PY -c 'import importlib.metadata as m; print(m.version("gguf"))')

GGUF=$(HF_HUB_OFFLINE=1 $PY -c 'from vllm_landmark.default_models import find_gguf_file; print(find_gguf_file())')
BASE=$(HF_HUB_OFFLINE=1 $PY -c 'from vllm_landmark.default_models import prepare_default_llm; print(prepare_default_llm())')
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu/c1 .gpu/c2
mkdir -p .gpu/c1 .gpu/c2
head -c "$PIECE_BYTES" "$GGUF" > .gpu/c1/gguf.part1
tail -c +"$((PIECE_BYTES + 1))" "$GGUF" > .gpu/c2/gguf.part2
# The token shards compress about 3.4x with xz (18.5 MB -> 5.5 MB).
XZ_OPT='-9 -T2' tar -C "$DATA" -cJf .gpu/c2/data.tar.xz \
    manifest.json train.tokens.npy train.docs.json heldout.tokens.npy heldout.docs.json
if ls .gpu/gguf-"$GGUF_VERSION"-*.whl >/dev/null 2>&1; then
    cp .gpu/gguf-"$GGUF_VERSION"-*.whl .gpu/c2/
else
    python3 -m pip download -q --no-deps -d .gpu/c2 "gguf==$GGUF_VERSION"
fi
(cd .gpu/c1 && sha256sum gguf.part1 > SHA256SUMS)
(cd .gpu/c2 && sha256sum gguf.part2 data.tar.xz gguf-*.whl > SHA256SUMS)
HF_HUB_OFFLINE=1 $PY - "$GGUF" "$BASE" <<'PY'
import hashlib, json, sys
from pathlib import Path
from vllm_landmark.compression.embedder import base_model_identity
gguf, base = Path(sys.argv[1]), Path(sys.argv[2])
digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
expected = {
    "gguf_name": gguf.name,
    "gguf_size": gguf.stat().st_size,
    "gguf_sha256": digest,
    "base_model_name": base.name,
    "base_model_fingerprint": base_model_identity(base).fingerprint,
}
Path(".gpu/c2/expected.json").write_text(json.dumps(expected, indent=2) + "\n")
print(json.dumps(expected, indent=2))
PY
du -b .gpu/c1/* .gpu/c2/*
echo "c1: $(du -cb .gpu/c1 | tail -1 | cut -f1) bytes, c2: $(du -cb .gpu/c2 | tail -1 | cut -f1) bytes"
