#!/usr/bin/env bash
# Several deployments share one short pool of simulated GPUs: the Azure code trace split
# across 4 deployments (4 tenants, request by request) on 6 A10s, each deployment allowed 4
# replicas, so the sum of their peaks (16) is well above the pool. The same plan runs under
# the fair, fcfs and static allocators, each on a fresh stack; writes
# bench/results/allocators/{table.md,<allocator>.{md,png,json}}.
#   bench/compare_allocators.sh                                  # the whole trace, speed 10
#   ALLOCATORS="fair fcfs" POOL=a10_24gb=4 bench/compare_allocators.sh
#   STAGGER=0 bench/compare_allocators.sh --out bench/results/allocators-lockstep
#   bench/compare_allocators.sh --end-s 600 --stagger-s 150 --speed 20 --out bench/out/smoke  # smoke
#   bench/compare_allocators.sh --guaranteed 1                   # d1 on guaranteed capacity
# Parts of one trace dealt round-robin burst in lock-step, so all four are cold or busy at
# the same moments; STAGGER (trace seconds) moves deployment i+1's part i x STAGGER later,
# wrapped around the end, so that one bursts while another idles in its cooldown (what
# reclaiming is for). A shift by a multiple of the replayed span is none: on a short window
# give a smaller --stagger-s. A replica is sized at 6 requests (THRESHOLD, against a batch of
# 16) and idles for 120 s (COOLDOWN) before it goes. By a rough count (the trace's requests in
# flight at the simulated service times, held for the cooldown) the four then want more than
# 6 GPUs for about a sixth of the trace (a fifth without the stagger), and more in the bursts
# after an idle gap, whose requests queue through a 30 s model load.
set -euo pipefail
cd "$(dirname "$0")/.."
TRACES=${TRACES:-bench/traces}
TRACE_FILE=${TRACE_FILE:-azure2023_code.csv}
SPEED=${SPEED:-10}
DEPLOYMENTS=${DEPLOYMENTS:-4}
POOL=${POOL:-a10_24gb=6}
MAX_REPLICAS=${MAX_REPLICAS:-4}
THRESHOLD=${THRESHOLD:-6}
COOLDOWN=${COOLDOWN:-120}
STAGGER=${STAGGER:-600}
WAKEGATE=${WAKEGATE:-.venv/bin/wakegate}
ALLOCATORS=${ALLOCATORS:-fair fcfs static}
allocator_args=()
for a in $ALLOCATORS; do allocator_args+=(--allocator "$a"); done
"$WAKEGATE" replay "$TRACES/$TRACE_FILE" --speed "$SPEED" \
  --deployments "$DEPLOYMENTS" --tenants per-deployment --pool "$POOL" \
  --max-replicas "$MAX_REPLICAS" --threshold "$THRESHOLD" --cooldown-s "$COOLDOWN" \
  --stagger-s "$STAGGER" "${allocator_args[@]}" \
  --out bench/results/allocators "$@"
