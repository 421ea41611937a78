#!/usr/bin/env bash
# End-to-end throughput of the iris pipeline with every built-in stage on (validate with column
# rules, observe = drift monitor, request log) against the same Wasm stages with them off, in
# one run of a release build on loopback (wrk -t2 -c8 -d10s each).
# Usage: bench/builtins.sh   (needs wrk: apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --release -p weir -q
work=$(mktemp -d)
bare=examples/iris/.bench-bare.toml
port=18082
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work" "$bare"; }
trap cleanup EXIT
# The iris manifest without [[inputs]], [[outputs]] and [observe]: no built-in stage has work.
sed -e '/^\[\[inputs\]\]/,/^\[preprocess\]$/{/^\[preprocess\]$/!d}' -e '/^\[observe\]/,$d' \
  -e 's/^name = "iris"/name = "iris-bare"/' examples/iris/pipeline.toml > "$bare"
RUST_LOG=warn,weir::cli=info target/release/weir serve --log-format json --listen 127.0.0.1:$port \
  --data-dir "$work/data" examples/iris/pipeline.toml "$bare" >"$work/serve.log" 2>&1 &
pid=$!
until grep -q '"addr"' "$work/serve.log"; do sleep 0.05; done
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
LUA
for model in iris-bare iris iris-bare iris; do
  echo "== $model"
  wrk -t2 -c8 -d10s --latency -s "$work/post.lua" "http://127.0.0.1:$port/v2/models/$model/infer" \
    | grep -E "Requests/sec|50%|99%|Non-2xx"
done
echo "(per-request log records off in both: RUST_LOG=warn)"
