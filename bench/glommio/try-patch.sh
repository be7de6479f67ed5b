#!/bin/bash
# Builds this commit against glommio 0.9.0 with keep-preemption-timers.patch applied, in a
# scratch directory, to measure what the patch would buy (issue 14; not used by the product,
# which builds against glommio from crates.io). The patch acts only when GLOMMIO_KEEP_TIMERS
# is set, so one binary gives both sides of an A/B; the script writes a wrapper that sets it.
#
#   bash bench/glommio/try-patch.sh [scratch dir, default /tmp/glommio-keep]
#   then, for example:
#   bash bench/pinned-ab.sh <scratch>/ws/target/release/ilp-connector <scratch>/ilp-connector-keep 6 --rate 10000 --duration 3
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-/tmp/glommio-keep}
rm -rf "$OUT" && mkdir -p "$OUT/ws"
cd "$ROOT"
cargo fetch --locked >/dev/null
SRC=$(cargo metadata --format-version 1 --locked |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "glommio"))')
cp -r "$(dirname "$SRC")" "$OUT/glommio"
patch -d "$OUT/glommio" -p1 <"$HERE/keep-preemption-timers.patch"
git archive HEAD | tar -x -C "$OUT/ws"
printf '\n[patch.crates-io]\nglommio = { path = "%s/glommio" }\n' "$OUT" >>"$OUT/ws/Cargo.toml"
(cd "$OUT/ws" && cargo build --release)
printf '#!/bin/sh\nGLOMMIO_KEEP_TIMERS=1 exec "%s/ws/target/release/ilp-connector" "$@"\n' "$OUT" >"$OUT/ilp-connector-keep"
chmod +x "$OUT/ilp-connector-keep"
echo "stock:   $OUT/ws/target/release/ilp-connector"
echo "patched: $OUT/ilp-connector-keep"
