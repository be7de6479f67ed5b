#!/bin/bash
# Instructions per forwarded packet, counted by callgrind: the one-hop node (fulfiller and
# sender as in bench/pinned-ab.sh, c=64) runs under `valgrind --tool=callgrind` twice, with
# 2 000 and with N measured packets; the difference over N - 2 000 packets is what one packet
# costs in user space (our code, glommio, libc), start-up cancelled out. Unlike CPU time on this
# VM (which drifts by ~20 % within minutes) the count repeats within ~1 %, so it shows changes
# of a few percent that timing cannot. It does not see the kernel, cache misses or atomics'
# cost, and valgrind hides SHA-NI from the process, so SHA-256 runs in software there: the
# figure without `sha2` is the one to compare (the native build uses SHA-NI).
#
#   bash bench/instructions.sh <connector binary> [N, default 12000]
#   needs valgrind (apt-get install valgrind)
set -euo pipefail
BIN=$(realpath "$1")
N=${2:-12000}
cd "$(dirname "$0")/.."
BENCH=target/release/ilp-bench
. bench/one-hop.sh

# run <packets>: prints "<total Ir> <Ir in sha2>"
run() {
  local n=$1 d fp cp port fport
  d=$(mktemp -d)
  "$BENCH" fulfiller --user connector-a --token secret-r >"$d/f" & fp=$!
  for _ in $(seq 50); do grep -q '[0-9]' "$d/f" 2>/dev/null && break; sleep 0.1; done
  fport=$(head -1 "$d/f" | grep -o '[0-9]*$')
  one_hop_config "$d/a.yaml" "$fport"
  valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$BIN" run --config "$d/a.yaml" \
    >"$d/out" 2>&1 & cp=$!
  port=$(listen_port "$d/out" 600) # valgrind starts slowly
  sleep 2
  "$BENCH" load --url "ws://127.0.0.1:$port" --user sender --token bench-token \
    --destination test.a.receiver.bench --warmup 0 --concurrency 64 --count "$n" \
    --duration 600 >/dev/null
  # Take the counts now (the node does not always exit on SIGTERM under valgrind), then stop.
  callgrind_control --dump "$cp" >/dev/null 2>&1
  kill -KILL "$cp" "$fp" 2>/dev/null || true
  wait 2>/dev/null || true
  local total sha
  total=$(grep -E "^summary:" "$d/cg.out.1" | awk '{print $2}')
  sha=$(callgrind_annotate --inclusive=no "$d/cg.out.1" 2>/dev/null | grep -E "sha2::" |
    grep -v "=>" | awk '{gsub(",","",$1); s+=$1} END{print s+0}')
  rm -rf "$d"
  echo "$total $sha"
}

read -r t0 s0 < <(run 2000)
read -r t1 s1 < <(run "$N")
per=$(((t1 - t0) / (N - 2000)))
nosha=$(((t1 - s1 - t0 + s0) / (N - 2000)))
echo "$(basename "$BIN"): $per instructions per packet, $nosha without sha2 ($N vs 2000 packets, c=64)"
