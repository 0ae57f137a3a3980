#!/usr/bin/env bash
# Serve one model with the landmark plugin on several machines, on vLLM's own multi-node data
# parallelism: every node runs ENGINES_PER_NODE engines; the head node also runs the
# OpenAI-compatible API server, which routes each request to one of all NODES x ENGINES_PER_NODE
# engines (remote ones over ZMQ). Requests that carry the same documents go to the same engine
# (document affinity, see README "Several machines"), so a follow-up question finds the
# document's KV prefix and soft tokens in that engine's caches.
#
# On every node, with vllm-landmark installed as a package (`pip install "vllm-landmark[gpu]"`):
#   head:    NODE_RANK=0 HEAD_ADDRESS=10.0.0.1 NODES=2 recipes/deploy/multinode.sh MODEL [flags]
#   worker:  NODE_RANK=1 HEAD_ADDRESS=10.0.0.1 NODES=2 recipes/deploy/multinode.sh MODEL [flags]
# Use the same MODEL and the same --landmark-* flags on every node: each engine builds its own
# plugin configuration from them. Extra flags (e.g. --tensor-parallel-size 2) go to `vllm serve`.
#
# Environment:
#   NODE_RANK         this node's index, 0 = head (API server)         (required)
#   HEAD_ADDRESS      the head node's address, reachable by every node (required)
#   NODES             number of nodes                                  (default 2)
#   ENGINES_PER_NODE  data-parallel engines on each node               (default 1)
#   RPC_PORT          the head's data-parallel RPC port                (default 13345)
#   PORT              the API server's port on the head                (default 8000)
set -euo pipefail

: "${NODE_RANK:?set NODE_RANK (0 on the head node)}"
: "${HEAD_ADDRESS:?set HEAD_ADDRESS (the head node address)}"
NODES="${NODES:-2}"
ENGINES_PER_NODE="${ENGINES_PER_NODE:-1}"
RPC_PORT="${RPC_PORT:-13345}"
PORT="${PORT:-8000}"
if [[ $# -lt 1 ]]; then
    echo "usage: NODE_RANK=.. HEAD_ADDRESS=.. $0 MODEL [vllm and --landmark-* flags]" >&2
    exit 2
fi
MODEL="$1"
shift

common=(
    --data-parallel-size "$((NODES * ENGINES_PER_NODE))"
    --data-parallel-size-local "$ENGINES_PER_NODE"
    --data-parallel-address "$HEAD_ADDRESS"
    --data-parallel-rpc-port "$RPC_PORT"
)
if [[ "$NODE_RANK" == 0 ]]; then
    exec landmark serve "$MODEL" "${common[@]}" --port "$PORT" "$@"
fi
exec landmark serve "$MODEL" "${common[@]}" --headless \
    --data-parallel-start-rank "$((NODE_RANK * ENGINES_PER_NODE))" "$@"
