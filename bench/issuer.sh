#!/usr/bin/env bash
# Issuer load run on loopback: client_credentials tokens per second from the issuer sidecar
# (the release binary, over TLS, memory store) for ES256, EdDSA and RS256. The server is
# pinned to CPU 1 (its runtime then has one worker), the load generator
# (sidecar/benches/issuer_load.rs: closed loop, HTTP/1.1 keep-alive, client_secret_basic with a
# generated secret) to CPU 0. The generator verifies the first token's signature and reads
# the server's CPU time from /proc, so CPU µs per token is reported next to tokens/s.
# Prints JSON lines and a summary; bounded in time, loopback only.
#
#   bench/issuer.sh [SECS_PER_RUN] [RUNS_PER_ALG]     (defaults 10 and 3)
#   PERF=1 bench/issuer.sh ...   also records a `perf` profile of the ES256 server (needs perf;
#                                written to ~/.cache/scopegate/issuer-es256.perf.data)
set -euo pipefail
secs=${1:-10}
runs=${2:-3}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target-sidecar}"
work="$(mktemp -d)"
server=""
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
say() { printf '[issuer %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

say "building release binaries"
cd "$root"
bin="$CARGO_TARGET_DIR/release/scopegate-sidecar"
loadgen="$(cargo build --quiet --release -p scopegate-sidecar --bin scopegate-sidecar --bench issuer_load --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "issuer_load" and m.get("executable"):
        print(m["executable"])')"
[[ -x $loadgen ]] || { echo "no issuer_load executable" >&2; exit 1; }
clk_tck="$(getconf CLK_TCK)"
port=18443
# Budgets far above the load (the default 1,200 tokens/min per client would answer 429):
# 1 ms emission with an hour of burst.
tuning='{"limits":{"client":{"requests":3600000,"period_ms":3600000},"address":{"requests":3600000,"period_ms":3600000}}}'

wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

results="$work/results.jsonl"
for alg in ES256 EdDSA RS256; do
  dir="$work/$alg"
  "$loadgen" setup --dir "$dir" --alg "$alg" --port "$port"
  RUST_LOG=warn taskset -c 1 "$bin" --config "$dir/config.json" --bind 127.0.0.1 --admin-addr 127.0.0.1:18444 \
    --issuer-tuning "$tuning" >/dev/null 2>"$work/$alg.log" &
  server=$!
  wait_port $port
  threads=$(awk '/Threads/ {print $2}' "/proc/$server/status")
  say "$alg: server pid $server ($threads threads) on CPU 1; warm-up 2 s"
  taskset -c 0 "$loadgen" load --dir "$dir" --target "127.0.0.1:$port" --secs 2 --conns 16 >/dev/null
  for run in $(seq 1 "$runs"); do
    say "$alg run $run: ${secs}s, load $(cut -d' ' -f1-3 /proc/loadavg), rustc processes $(pgrep -c rustc || true)"
    taskset -c 0 "$loadgen" load --dir "$dir" --target "127.0.0.1:$port" --secs "$secs" --conns 16 \
      --server-pid "$server" --clk-tck "$clk_tck" | tee -a "$results"
  done
  if [[ ${PERF:-0} == 1 && $alg == ES256 ]]; then
    say "$alg: perf record of the server for ${secs}s"
    taskset -c 0 "$loadgen" load --dir "$dir" --target "127.0.0.1:$port" --secs "$secs" --conns 16 >/dev/null &
    perf record -q -F 499 --call-graph dwarf,16384 -p "$server" -o "$cache/issuer-es256.perf.data" -- sleep "$((secs - 1))" 2>/dev/null || true
    wait $!
    say "profile in $cache/issuer-es256.perf.data (perf report -i ...)"
  fi
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n== client_credentials, server on one core (CPU 1), closed loop, 16 connections ==")
print(f"{'alg':6} {'tokens/s (runs)':32} {'median':>7} {'server CPU':>10} {'CPU µs/token':>12} {'tokens per CPU-s':>16} {'p99 µs':>7} errors")
for alg in ["ES256", "EdDSA", "RS256"]:
    rs = [r for r in rows if r["alg"] == alg]
    if not rs:
        continue
    tps = [r["tokens_per_s"] for r in rs]
    util = statistics.median(r["server_cpu_util"] for r in rs)
    us = statistics.median(r["server_cpu_us_per_token"] for r in rs)
    print(f"{alg:6} {', '.join(f'{t:,.0f}' for t in tps):32} {statistics.median(tps):7,.0f} {util:9.0%} "
          f"{us:12.1f} {1e6 / us:16,.0f} {statistics.median(r['p99_us'] for r in rs):7.0f} {sum(r['errors'] for r in rs)}")
PY
