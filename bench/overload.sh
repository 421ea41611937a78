#!/usr/bin/env bash
# Overload and soak on a release build, loopback only:
#  1. capacity: iris at c=8 with the default admission bounds;
#  2. overload: --max-concurrency 2 --max-queue 8 driven at c=64 (far beyond capacity), the one
#     pipeline given the whole server (per-pipeline bounds equal to the server's): share
#     answered 503 at once, latency of the admitted, RSS before and after;
#  3. soak: SOAK_SECS (default 180) at c=8, RSS sampled every 10 s after a 30 s warm-up.
# Usage: bench/overload.sh   (needs wrk: apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --release -p weir -q
work=$(mktemp -d)
port=18081
url=http://127.0.0.1:$port/v2/models/iris/infer
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
LUA
serve() {
  target/release/weir serve --log-format json --listen 127.0.0.1:$port --data-dir "$work/data" "$@" \
    examples/iris/pipeline.toml >"$work/serve.log" 2>&1 &
  pid=$!
  until grep -q '"addr"' "$work/serve.log"; do sleep 0.05; done
}
rss() { awk '/VmRSS/ {print $2 " KiB"}' /proc/$pid/status; }
load() { wrk -t2 -c"$1" -d"$2" --latency -s "$work/post.lua" "$url" | grep -E "Requests/sec|50%|99%|Non-2xx|requests in"; }

echo "== 1. default bounds, c=8"; serve; load 8 10s; kill $pid; wait $pid 2>/dev/null || true

echo "== 2. overload: --max-concurrency 2 --max-queue 8, c=64"
serve --max-concurrency 2 --max-queue 8 --max-concurrency-per-pipeline 2 --max-queue-per-pipeline 8
echo "RSS before: $(rss)"; load 64 20s; echo "RSS after: $(rss)"
kill $pid; wait $pid 2>/dev/null || true

secs=${SOAK_SECS:-180}
echo "== 3. soak: ${secs} s at c=8"
serve
( sleep 30; while kill -0 $pid 2>/dev/null; do echo "RSS at $(date +%T): $(rss)"; sleep 10; done ) &
sampler=$!
load 8 "${secs}s"
kill $sampler 2>/dev/null || true
