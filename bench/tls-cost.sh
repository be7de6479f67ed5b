#!/usr/bin/env bash
# What TLS costs per packet: 1 hop (sender → node → fulfiller), the sender's link to the node
# plain `ws` or `wss`, the node otherwise the same; the two alternate ROUNDS times.
#
#   bash bench/tls-cost.sh [rounds] [concurrency] [duration_s]      (from the project root)
#
# Makes a throw-away CA and a localhost certificate with openssl; needs target/release/{ilp-bench,
# ilp-connector} (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"; CONC="${2:-64}"; DURATION="${3:-4}"
BENCH=target/release/ilp-bench; OURS=target/release/ilp-connector
[ -x "$BENCH" ] && [ -x "$OURS" ] || { echo "build first: cargo build --release" >&2; exit 1; }
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=bench CA" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$TMP/san.ext"
openssl x509 -req -in "$TMP/cert.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 1 -extfile "$TMP/san.ext" -out "$TMP/cert.pem" 2>/dev/null

"$BENCH" fulfiller --user node --token secret-r > "$TMP/f.out" &
pids+=($!)
for _ in $(seq 100); do grep -q port "$TMP/f.out" 2>/dev/null && break; sleep 0.05; done
FPORT=$(grep -o '[0-9]\+' "$TMP/f.out" | head -1)

# node NAME [TLS lines]: starts a 1-shard node, prints its pid and BTP port.
node() {
  cat > "$TMP/$1.yaml" <<YAML
nodeId: node
ilpAddress: test.n
btpServerPort: 0
shards: 1
logLevel: warn
$2
peers:
  - {id: sender, relation: child, authToken: bench-token}
  - {id: receiver, relation: child, url: "ws://127.0.0.1:$FPORT", authToken: secret-r}
YAML
  "$OURS" run --config "$TMP/$1.yaml" > "$TMP/$1.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$TMP/$1.out" 2>/dev/null && break; sleep 0.05; done
  echo "$! $(grep -o 'btp port [0-9]*' "$TMP/$1.out" | grep -o '[0-9]*')"
}
read -r PLAIN_PID PLAIN_PORT < <(node plain "")
read -r TLS_PID TLS_PORT < <(node tls "btpServerTls: {certFile: $TMP/cert.pem, keyFile: $TMP/key.pem}")

for i in $(seq "$ROUNDS"); do
  "$BENCH" load --label plain --url "ws://127.0.0.1:$PLAIN_PORT" --token bench-token \
    --destination test.n.receiver.x --concurrency "$CONC" --duration "$DURATION" --warmup 1 \
    --pid "$PLAIN_PID" 2>/dev/null | tail -1
  "$BENCH" load --label tls --url "wss://localhost:$TLS_PORT" --ca-file "$TMP/ca.pem" --token bench-token \
    --destination test.n.receiver.x --concurrency "$CONC" --duration "$DURATION" --warmup 1 \
    --pid "$TLS_PID" 2>/dev/null | tail -1
done
