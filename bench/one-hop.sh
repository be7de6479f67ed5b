# Sourced by the bench scripts: the one-hop node they measure (one shard, a child `sender`
# and a child `receiver` dialled at the fulfiller, no in-flight caps).
#   one_hop_config <file> <fulfiller port> [extra top-level yaml line...]
one_hop_config() {
  local file=$1 fport=$2
  shift 2
  {
    printf '%s\n' "nodeId: connector-a" "ilpAddress: test.a" "btpServerPort: 0" "shards: 1" \
      "logLevel: warn" "maxInFlightPerShard: 1000000" "maxInFlightPerPeer: 1000000" "$@"
    echo "peers:"
    echo "  - {id: sender, relation: child, authToken: bench-token}"
    echo "  - {id: receiver, relation: child, url: \"ws://127.0.0.1:$fport\", authToken: secret-r}"
  } >"$file"
}

# The BTP port a node (or relay) printed to <log file>, waiting up to <tenths of a second>
# (default 50) for it; empty if it never came.
#   port=$(listen_port <log file> [tenths])
listen_port() {
  local file=$1 port=
  for _ in $(seq "${2:-50}"); do
    port=$(grep -o "port [0-9]*" "$file" | head -1 | cut -d" " -f2 || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  echo "$port"
}
