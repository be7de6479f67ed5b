#!/usr/bin/env bash
# Issue 16's scenario: JS connector A → our B (shards: 2) → JS connector C → fulfiller, with
# the same load generator. C's `ilp-plugin-btp` listener keeps one socket per account, so B
# must hold exactly one link to it (from its home shard) and hand packets over between its
# shards. Prints the load result and B's links to C before and after.
#
#   bash bench/js/run-chain.sh [duration_s] [concurrency]      (from the project root)
#
# Needs target/release/{ilp-bench,ilp-connector} (cargo build --release); installs the pinned
# JS packages (npm ci) on first use.
#
# The load uses `--unique` (a different payload per Prepare): the JS connector's deduplicate
# middleware answers identical Prepares from its cache, so without it few packets reach B.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-5}"
CONC="${2:-64}"
BENCH=target/release/ilp-bench
OURS=target/release/ilp-connector
[ -x "$BENCH" ] && [ -x "$OURS" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -d bench/js/node_modules/ilp-connector ] || (cd bench/js && npm ci --no-audit --no-fund)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
TMP=$(mktemp -d)

"$BENCH" fulfiller --user js --token secret-r > "$TMP/fulfiller.out" &
pids+=($!)
for _ in $(seq 100); do grep -q port "$TMP/fulfiller.out" 2>/dev/null && break; sleep 0.05; done
FPORT=$(grep -o '[0-9]\+' "$TMP/fulfiller.out" | head -1)
APORT=$(free_port); BPORT=$(free_port); CPORT=$(free_port); BADMIN=$(free_port)
RATE='{"refillPeriod":1000,"refillCount":100000000,"capacity":100000000}'

# account ID RELATION PLUGIN_OPTIONS: one ilp-plugin-btp account of a JS connector (XRP, 9).
account() {
  echo "\"$1\": {\"relation\": \"$2\", \"assetCode\": \"XRP\", \"assetScale\": 9, \"plugin\": \"ilp-plugin-btp\",
    \"rateLimit\": $RATE, \"options\": $3}"
}
# js_connector ADDRESS ROUTES ACCOUNT...: execs the JS connector with these accounts (run it with
# `&`: $! is then the connector itself, which the cleanup kills).
js_connector() {
  local address="$1" routes="$2"; shift 2
  local IFS=,
  CONNECTOR_ILP_ADDRESS="$address" CONNECTOR_BACKEND=one-to-one CONNECTOR_SPREAD=0 \
  CONNECTOR_ROUTES="$routes" CONNECTOR_ACCOUNTS="{$*}" \
    exec node bench/js/node_modules/ilp-connector/dist/index.js
}

# JS C: listener for B, dials the fulfiller as its child `receiver`.
js_connector test.jsc '[{"targetPrefix":"test.jsc.receiver","peerId":"receiver"}]' \
  "$(account b peer "{\"listener\": {\"port\": $CPORT, \"secret\": \"secret-bc\"}}")" \
  "$(account receiver child "{\"server\": \"btp+ws://js:secret-r@127.0.0.1:$FPORT\"}")" > "$TMP/c.log" 2>&1 &
pids+=($!)
wait_port "$CPORT"

# Our B: two shards, dials C, JS A dials it.
cat > "$TMP/b.yaml" <<YAML
nodeId: b
ilpAddress: test.b
btpServerPort: $BPORT
healthCheckPort: $BADMIN
shards: 2
logLevel: info
peers:
  - {id: jsa, relation: peer, authToken: secret-ab}
  - {id: jsc, relation: peer, url: "ws://127.0.0.1:$CPORT", authToken: secret-bc}
routes:
  - {prefix: test.jsc, nextHop: jsc}
YAML
"$OURS" run --config "$TMP/b.yaml" > "$TMP/b.out" 2> "$TMP/b.log" &
pids+=($!)
wait_port "$BPORT"

# JS A: listener for the sender, dials B.
js_connector test.jsa '[{"targetPrefix":"test.jsc","peerId":"b"}]' \
  "$(account sender child "{\"listener\": {\"port\": $APORT, \"secret\": \"bench-token\"}}")" \
  "$(account b peer "{\"server\": \"btp+ws://jsa:secret-ab@127.0.0.1:$BPORT\"}")" > "$TMP/a.log" 2>&1 &
pids+=($!)
wait_port "$APORT"
sleep 2

links() { curl -s "127.0.0.1:$BADMIN/metrics" | grep '^ilp_peer_links{peer="jsc"' | tr '\n' ' '; }
echo "B's links to C before: $(links)"
"$BENCH" load --label js-ours2-js --url "ws://127.0.0.1:$APORT" --user sender --token bench-token \
  --destination test.jsc.receiver.bench --concurrency "$CONC" --duration "$DURATION" --warmup 1 --hops 3 --unique --json
echo "B's links to C after:  $(links)"
echo "B's dials to C: $(grep -c '"btp_client_connected"' "$TMP/b.log") connected, $(grep -c '"btp_client_disconnected"' "$TMP/b.log") disconnected"
echo "B's answers: $(curl -s "127.0.0.1:$BADMIN/metrics" | grep -E '^ilp_packets_(total|handed_over_total)' | tr '\n' ' ')"
