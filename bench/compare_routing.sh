#!/usr/bin/env bash
# Replay the Mooncake conversation trace (its hash_ids give shared prompt prefixes) through the
# real gateway on a fixed, warm pool of simulated replicas with a prefix cache, under
# prefix-aware, least-loaded and random routing; writes
# bench/out/mooncake-routing/{table.md,*.png,*.json}.
set -euo pipefail
cd "$(dirname "$0")/.."
TRACES=${TRACES:-bench/traces}
SPEED=${SPEED:-10}
WAKEGATE=${WAKEGATE:-.venv/bin/wakegate}
"$WAKEGATE" replay "$TRACES/mooncake_conversation.jsonl" --speed "$SPEED" \
  --policy always-on --max-replicas "${REPLICAS:-4}" --cache-blocks "${CACHE_BLOCKS:-256}" \
  --routing prefix --routing least-loaded --routing random --warm \
  --out bench/out/mooncake-routing "$@"
