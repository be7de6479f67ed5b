#!/usr/bin/env bash
# One hop through the reference JS connector (npm ilp-connector 23.0.2), driven by the same
# load generator as our scenarios: sender → JS connector → fulfiller (ilp-bench fulfiller).
#
#   bash bench/js/run-reference.sh [duration_s]      (from the project root)
#
# Installs the pinned packages (npm ci) on first use; needs target/release/ilp-bench
# (cargo build --release). The per-account rate limit (default 10 000 packets/min) is raised
# so it does not cap the run. Prints one result table per concurrency (1 and 64).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-5}"
BENCH=target/release/ilp-bench
[ -x "$BENCH" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -d bench/js/node_modules/ilp-connector ] || (cd bench/js && npm ci --no-audit --no-fund)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$BENCH" fulfiller --user js --token secret-r > /tmp/ilp-ref-fulfiller.out &
pids+=($!)
for _ in $(seq 100); do grep -q port /tmp/ilp-ref-fulfiller.out 2>/dev/null && break; sleep 0.05; done
FPORT=$(grep -o '[0-9]\+' /tmp/ilp-ref-fulfiller.out | head -1)
JPORT=$(free_port)

RATE='{"refillPeriod":1000,"refillCount":100000000,"capacity":100000000}'
export CONNECTOR_ILP_ADDRESS=test.js
export CONNECTOR_BACKEND=one-to-one
export CONNECTOR_SPREAD=0
export CONNECTOR_ROUTES='[{"targetPrefix":"test.js.receiver","peerId":"receiver"}]'
export CONNECTOR_ACCOUNTS="{
  \"sender\": {\"relation\": \"child\", \"assetCode\": \"XRP\", \"assetScale\": 9,
    \"plugin\": \"ilp-plugin-btp\", \"rateLimit\": $RATE,
    \"options\": {\"listener\": {\"port\": $JPORT, \"secret\": \"bench-token\"}}},
  \"receiver\": {\"relation\": \"child\", \"assetCode\": \"XRP\", \"assetScale\": 9,
    \"plugin\": \"ilp-plugin-btp\", \"rateLimit\": $RATE,
    \"options\": {\"server\": \"btp+ws://js:secret-r@127.0.0.1:$FPORT\"}}
}"
DEBUG="${DEBUG:-}" node bench/js/node_modules/ilp-connector/dist/index.js > /tmp/ilp-ref-connector.log 2>&1 &
JS_PID=$!
pids+=($JS_PID)
for _ in $(seq 200); do
  (exec 3<>/dev/tcp/127.0.0.1/"$JPORT") 2>/dev/null && break
  sleep 0.05
done

for c in 1 64; do
  "$BENCH" load --label js-1-hop --url "ws://127.0.0.1:$JPORT" --user sender --token bench-token \
    --destination test.js.receiver.bench --concurrency "$c" --duration "$DURATION" --warmup 1 \
    --pid "$JS_PID" --hops 1
done
