#!/bin/bash
# One child flooding one hop: a fulfiller, a one-shard node with no per-peer in-flight cap
# and an admin port, `ilp-bench load` with the given options (e.g. --concurrency 10000),
# then the node's answers by outcome (ilp_packets_total, warm-up included).
# usage: bash bench/flood.sh <connector-binary> [ilp-bench load options]   (after cargo build --release)
set -u
BIN=$(realpath "$1"); shift; TMP=$(mktemp -d)
cd "$(dirname "$0")/.."
. bench/one-hop.sh
B=target/release/ilp-bench
$B fulfiller --user connector-a --token secret-r > "$TMP/ful.out" 2>&1 &
FP=$!
sleep 0.5
FPORT=$(head -1 "$TMP/ful.out" | grep -o '[0-9]*$')
ADMIN=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
one_hop_config "$TMP/node.yaml" "$FPORT" "healthCheckPort: $ADMIN"
"$BIN" run --config "$TMP/node.yaml" > "$TMP/node.out" 2>&1 &
CP=$!
sleep 1.5
PORT=$(grep -o "port [0-9]*" "$TMP/node.out" | head -1 | cut -d" " -f2)
$B load --url "ws://127.0.0.1:$PORT" --user sender --token bench-token \
  --destination test.a.receiver.bench --pid $CP "$@"
curl -s "127.0.0.1:$ADMIN/metrics" | grep -E '^ilp_packets_total'
kill $CP $FP; wait 2>/dev/null; rm -rf "$TMP"
