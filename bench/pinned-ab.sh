#!/bin/bash
# Pinned A/B of two connector builds (or `relay`, the glommio byte relay) on one hop: the
# target alone on core 1, fulfiller and sender on core 0, alternating rounds, medians.
# Besides the load row it reads the target's user and system CPU from /proc/<pid>/stat around
# each run (divided by the measured packets, warm-up included: compare them only with each
# other), and the median over rounds of each round's B/A ratio. This 2-vCPU VM drifts by
# ~20 % within minutes, so compare builds only within one invocation.
#
#   bash bench/pinned-ab.sh <binary|relay> <binary|relay> <rounds> [ilp-bench load args]
#   (default load args: --concurrency 64 --duration 3)
set -euo pipefail
A=$1 B=$2 N=$3
shift 3
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--concurrency 64 --duration 3)
BENCH=$(dirname "$0")/../target/release/ilp-bench
. "$(dirname "$0")/one-hop.sh"

one() { # one <binary|relay>: prints "<name> <load row> usr_ns N sys_ns N"
  local bin=$1 d fp cp port
  d=$(mktemp -d)
  if [ "$bin" = relay ]; then
    taskset -c 0 "$BENCH" fulfiller --user sender --token bench-token >"$d/f" & fp=$!
  else
    taskset -c 0 "$BENCH" fulfiller --user connector-a --token secret-r >"$d/f" & fp=$!
  fi
  for _ in $(seq 50); do grep -q '[0-9]' "$d/f" 2>/dev/null && break; sleep 0.1; done
  local fport; fport=$(head -1 "$d/f" | grep -o '[0-9]*$')
  if [ "$bin" = relay ]; then
    taskset -c 1 "$BENCH" relay --to "ws://127.0.0.1:$fport" >"$d/out" 2>&1 & cp=$!
  else
    one_hop_config "$d/a.yaml" "$fport"
    taskset -c 1 "$bin" run --config "$d/a.yaml" >"$d/out" 2>&1 & cp=$!
  fi
  port=$(listen_port "$d/out")
  sleep 1
  local u0 s0 u1 s1 row pk
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$cp/stat")
  row=$(taskset -c 0 "$BENCH" load --url "ws://127.0.0.1:$port" --user sender --token bench-token \
    --destination test.a.receiver.bench --pid "$cp" --warmup 1 "${ARGS[@]}" | grep -E "^load ")
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$cp/stat")
  pk=$(echo "$row" | awk '{print $5}')
  echo "$(basename "$bin") $row usr_ns $(((u1 - u0) * 10000000 / pk)) sys_ns $(((s1 - s0) * 10000000 / pk))"
  kill "$cp" "$fp" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$d"
}

OUT=$(mktemp)
for _ in $(seq "$N"); do
  for bin in "$A" "$B"; do one "$bin" | tee -a "$OUT"; done
done
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for bin in "$A" "$B"; do
  n=$(basename "$bin")
  col() { grep "^$n " "$OUT" | awk "{print \$$1}" | med; }
  echo "$n median: cpu/pkt $(col 13) µs, usr $(col 18) ns, sys $(col 20) ns, packets/s $(col 7), p50 $(col 8) µs, p99 $(col 10) µs"
done
# The machine drifts between rounds more than two builds differ: the median of each round's
# own ratio (its B run against the A run just before it) is steadier than the ratio of medians.
if [ "$(basename "$A")" != "$(basename "$B")" ]; then
  pairs=$(paste -d' ' <(grep "^$(basename "$A") " "$OUT") <(grep "^$(basename "$B") " "$OUT"))
  ratio() { echo "$pairs" | awk "{print $1}" | med; }
  echo "B/A per round, median: cpu/pkt $(ratio '$33/$13'), usr+sys $(ratio '($38+$40)/($18+$20)'), usr $(ratio '$38/$18'), packets/s $(ratio '$27/$7')"
fi
rm -f "$OUT"
