#!/usr/bin/env bash
# Replay both public traces through the real gateway and scaler (sim backend) under
# wakegate's policy and the three baselines; writes bench/out/<trace>/{table.md,*.png,*.json}.
#   bench/compare_policies.sh            # both traces, speed 10
#   SPEED=5 COOLDOWN=120 bench/compare_policies.sh --max-replicas 12
set -euo pipefail
cd "$(dirname "$0")/.."
TRACES=${TRACES:-../shared/data/traces}
SPEED=${SPEED:-10}
COOLDOWN=${COOLDOWN:-60}
WAKEGATE=${WAKEGATE:-.venv/bin/wakegate}
for trace in azure2023_code.csv mooncake_conversation.jsonl; do
  "$WAKEGATE" replay "$TRACES/$trace" --speed "$SPEED" --cooldown-s "$COOLDOWN" \
    --policy wakegate --policy knative --policy ray --policy always-on \
    --out "bench/out/${trace%%.*}-cooldown${COOLDOWN}" "$@"
done
