#!/bin/bash
# What an idle node costs: one shard, N idle links from the sender (one packet a second),
# wake-ups of all the connector threads per second and CPU ticks over 8 s, from /proc.
# usage: bash bench/idle-links.sh <connector-binary> <links>   (after cargo build --release)
set -u
BIN=$(realpath "$1"); N=$2; TMP=$(mktemp -d)
cd "$(dirname "$0")/.."
target/release/ilp-bench fulfiller --user connector-a --token secret-r > "$TMP/ful.out" 2>&1 &
FP=$!
sleep 0.5
FPORT=$(head -1 "$TMP/ful.out" | grep -o '[0-9]*$')
cat > "$TMP/node.yaml" <<Y
nodeId: connector-a
ilpAddress: test.a
btpServerPort: 0
shards: 1
logLevel: warn
maxConnectionsPerPeer: 1000
peers:
  - {id: sender, relation: child, authToken: bench-token}
  - {id: receiver, relation: child, url: "ws://127.0.0.1:$FPORT", authToken: secret-r}
Y
$BIN run --config "$TMP/node.yaml" > "$TMP/conn.out" 2>&1 &
CP=$!
sleep 1
PORT=$(grep -o 'btp[^0-9]*[0-9]*' "$TMP/conn.out" | head -1 | grep -o '[0-9]*$')
target/release/ilp-bench load --url ws://127.0.0.1:$PORT --token bench-token --destination test.a.receiver.bench --rate 1 --links $N --duration 14 --warmup 1 > "$TMP/load.out" 2>&1 &
LP=$!
sleep 4
cs() { local t=0; for f in /proc/$CP/task/*/status; do v=$(awk '/^voluntary_ctxt_switches/{s+=$2} END{print s}' $f); t=$((t+v)); done; echo $t; }
c1=$(cs); u1=$(awk '{print $14+$15}' /proc/$CP/stat); sleep 8; c2=$(cs); u2=$(awk '{print $14+$15}' /proc/$CP/stat)
echo "links=$N wakeups/s: $(( (c2-c1)/8 )) cpu ticks/8s: $((u2-u1))"
kill $LP $CP $FP 2>/dev/null
rm -rf "$TMP"
