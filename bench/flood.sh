#!/bin/bash
# One child flooding one hop: a fulfiller, a one-shard node with no per-peer in-flight cap
# and an admin port, `ilp-bench load` with the given options (e.g. --concurrency 10000),
# then the node's answers by outcome (ilp_packets_total, warm-up included).
# usage: bash bench/flood.sh <connector-binary> [ilp-bench load options]   (after cargo build --release)
set -u
BIN=$(realpath "$1"); shift; TMP=$(mktemp -d)
cd "$(dirname "$0")/.."
B=target/release/ilp-bench
$B fulfiller --user connector-a --token secret-r > "$TMP/ful.out" 2>&1 &
FP=$!
sleep 0.5
FPORT=$(head -1 "$TMP/ful.out" | grep -o '[0-9]*$')
ADMIN=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$TMP/node.yaml" <<Y
nodeId: connector-a
ilpAddress: test.a
btpServerPort: 0
healthCheckPort: $ADMIN
shards: 1
logLevel: warn
maxInFlightPerShard: 1000000
maxInFlightPerPeer: 1000000
peers:
  - {id: sender, relation: child, authToken: bench-token}
  - {id: receiver, relation: child, url: "ws://127.0.0.1:$FPORT", authToken: secret-r}
Y
"$BIN" run --config "$TMP/node.yaml" > "$TMP/node.out" 2>&1 &
CP=$!
sleep 1.5
PORT=$(grep -o "port [0-9]*" "$TMP/node.out" | head -1 | cut -d" " -f2)
$B load --url "ws://127.0.0.1:$PORT" --user sender --token bench-token \
  --destination test.a.receiver.bench --pid $CP "$@"
curl -s "127.0.0.1:$ADMIN/metrics" | grep -E '^ilp_packets_total'
kill $CP $FP; wait 2>/dev/null; rm -rf "$TMP"
