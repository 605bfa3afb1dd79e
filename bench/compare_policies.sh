#!/usr/bin/env bash
# Replay both public traces through the real gateway and scaler (sim backend) under
# wakegate's policy and the three baselines; writes bench/out/<trace>/{table.md,*.png,*.json}.
#   bench/compare_policies.sh            # both traces, speed 10
#   SPEED=5 COOLDOWN=120 bench/compare_policies.sh --max-replicas 12
#   POLICIES=wakegate COOLDOWN=240 bench/compare_policies.sh   # one policy, another cooldown
#   TRACE_FILES=azure2023_code.csv bench/compare_policies.sh   # one trace
# The baselines ignore cooldown_time (they have their own delays), so one run of theirs
# compares with wakegate at every cooldown.
set -euo pipefail
cd "$(dirname "$0")/.."
TRACES=${TRACES:-bench/traces}
SPEED=${SPEED:-10}
COOLDOWN=${COOLDOWN:-60}
WAKEGATE=${WAKEGATE:-.venv/bin/wakegate}
POLICIES=${POLICIES:-wakegate knative ray always-on}
policy_args=()
for p in $POLICIES; do policy_args+=(--policy "$p"); done
TRACE_FILES=${TRACE_FILES:-azure2023_code.csv mooncake_conversation.jsonl}
for trace in $TRACE_FILES; do
  "$WAKEGATE" replay "$TRACES/$trace" --speed "$SPEED" --cooldown-s "$COOLDOWN" \
    "${policy_args[@]}" \
    --out "bench/out/${trace%%.*}-cooldown${COOLDOWN}" "$@"
done
