#!/usr/bin/env bash
# Measures the versioning path of a release build on loopback:
#  1. time from `weir swap` (cached component) and from `weir deploy` of a new component
#     (compile included) to the new version answering;
#  2. p50/p99 of the iris pipeline under load (wrk, c=8, 10 s) without and with a swap every
#     0.5 s;
#  3. time from start to ready with 10 cached components.
# Usage: bench/swap.sh   (needs wrk: apt-get install wrk). Sends traffic only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --release -p weir -q
weir=target/release/weir
work=$(mktemp -d)
port=18080
url=http://127.0.0.1:$port
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

serve() {
  "$weir" serve --log-format json --listen 127.0.0.1:$port --data-dir "$work/data" "$@" >"$work/serve.log" 2>&1 &
  server_pid=$!
  until grep -q '"addr"' "$work/serve.log"; do sleep 0.05; done
}
manage() { "$weir" "$@" --server "$url" --data-dir "$work/data" >/dev/null; }
now_ms() { date +%s%3N; }
body='{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
version() { curl -s "$url/v2/models/iris/infer" -d "$body" | sed 's/.*"model_version":"\([0-9]*\)".*/\1/'; }
wait_version() { until [ "$(version)" = "$1" ]; do :; done; }

# A component with a custom section appended: the same code under a new digest, so the
# engine must compile it.
variant() {
  python3 - "$1" "$2" <<'PY'
import sys
src, n = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
name = b"weir-bench"
payload = bytes([len(name)]) + name + n.encode()
open(f"{src}.{n}", "wb").write(data + bytes([0, len(payload)]) + payload)
PY
}

serve examples/iris/pipeline.toml
label_map=target/plugins/wasm32-wasip2/plugin/label_map.wasm
cp "$label_map" "$work/label_map.wasm"

echo "== 1. swap to serving"
variant "$work/label_map.wasm" 1
manage push component labels@1.0.0 "$work/label_map.wasm.1"
start=$(now_ms); manage swap iris --stage postprocess --component labels@1.0.0; wait_version 2
echo "swap, component compiled at push: $(( $(now_ms) - start )) ms"
variant "$work/label_map.wasm" 2
sed "s|component = \"label-map@0.1.0\"|component = \"labels@2.0.0\"\npath = \"$work/label_map.wasm.2\"|" \
  examples/iris/pipeline.toml > examples/iris/.bench-pipeline.toml
start=$(now_ms); manage deploy examples/iris/.bench-pipeline.toml; wait_version 3
echo "deploy of a new component, compile included: $(( $(now_ms) - start )) ms"
rm examples/iris/.bench-pipeline.toml

echo "== 2. latency under load, without and with swaps (wrk -t1 -c8 -d10s)"
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
LUA
wrk -t1 -c8 -d10s --latency -s "$work/post.lua" "$url/v2/models/iris/infer" | grep -E "Requests/sec|50%|99%|Non-2xx"
( for i in $(seq 1 20); do
    if [ $((i % 2)) = 0 ]; then c=label-map@0.1.0; else c=labels@1.0.0; fi
    manage swap iris --stage postprocess --component "$c"; sleep 0.5
  done ) &
swapper=$!
wrk -t1 -c8 -d10s --latency -s "$work/post.lua" "$url/v2/models/iris/infer" | grep -E "Requests/sec|50%|99%|Non-2xx"
wait $swapper
echo "versions after the swaps: $("$weir" versions iris --server "$url" --data-dir "$work/data" | wc -l)"

echo "== 3. start to ready with 10 cached components"
for n in $(seq 3 12); do
  variant "$work/label_map.wasm" "$n"
  manage push component "labels-$n@1.0.0" "$work/label_map.wasm.$n"
  manage swap iris --stage postprocess --component "labels-$n@1.0.0"
done
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
serve
grep -o '"ready_ms":[0-9]*' "$work/serve.log"
echo "compiled at restart: $(grep -c '"compiled component"' "$work/serve.log" || true)"
