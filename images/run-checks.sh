#!/usr/bin/env bash
# Runs the unpacked images the way a container runtime would, and checks what they do.
# Called by images/check.sh inside a private network namespace (only its loopback exists):
#   unshare --net -- bash images/run-checks.sh WORK VERSION
# WORK holds, per binary, rootfs/ (unpacked by umoci) and config.json (the image config).
#
# Each run: the image's Entrypoint, Env and User from config.json; as that uid and gid on the
# host (setpriv), no capabilities and an empty bounding set, no_new_privs; in bubblewrap with
# the unpacked root bound read-only, new user, pid, ipc, uts and cgroup namespaces, /proc,
# /dev, and the /etc/hosts and /etc/resolv.conf a kubelet would mount.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work=$1 version=$2
# shellcheck source=images/lib.sh
source "$here/lib.sh"
step() { printf '[images %s]   %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { printf 'images check FAILED: %s\n' "$*" >&2; exit 1; }
pids=()
cleanup() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

ip link set lo up
# The names the binaries look up: one through /etc/hosts, two through DNS on 127.0.0.1:53.
mkdir -p "$work/etc" "$work/logs" "$work/secrets"
printf '127.0.0.1 localhost\n127.0.0.1 jwks.files.scopegate.test\n' >"$work/etc/hosts"
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:2\n' >"$work/etc/resolv.conf"
hello_port=16443

start_peer() { # name args...
  local name=$1; shift
  python3 "$here/peers.py" "$name" --ready "$work/logs/$name.ready" --log "$work/logs/$name.jsonl" \
    "$@" >"$work/logs/$name.out" 2>&1 &
  pids+=($!)
  wait_for "$name listening" test -f "$work/logs/$name.ready"
}

wait_for() { # what command...
  local what=$1; shift
  local deadline=$((SECONDS + 20))
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 0.1
  done
}

start_peer hello --port "$hello_port"
start_peer dns --port 53 --name jwks.dns.scopegate.test=127.0.0.1 \
  --name kubernetes.default.svc=127.0.0.1

# Mount points a runtime would create; the content checks ran before this.
for bin in "${IMAGES_BINARIES[@]}"; do
  rootfs="$work/$bin/rootfs"
  mkdir -p "$rootfs/proc" "$rootfs/dev" "$rootfs/config" \
    "$rootfs/var/run/secrets/kubernetes.io/serviceaccount"
  touch "$rootfs/etc/hosts" "$rootfs/etc/resolv.conf"
done

# sandbox BIN [--exec PATH] [bwrap args...] -- ARGS...: runs the image's entrypoint (or PATH)
# with ARGS.
sandbox() {
  local bin=$1; shift
  local config="$work/$bin/config.json" user uid gid kv
  user="$(jq -r '.config.User' "$config")"
  uid=${user%%:*} gid=${user#*:}
  local env_args=() extra=() command=()
  while IFS= read -r kv; do
    env_args+=(--setenv "${kv%%=*}" "${kv#*=}")
  done < <(jq -r '.config.Env[]?' "$config")
  mapfile -t command < <(jq -r '.config.Entrypoint[]' "$config")
  if [[ $1 == --exec ]]; then command=("$2"); shift 2; fi
  while (($#)) && [[ $1 != -- ]]; do extra+=("$1"); shift; done
  shift
  setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --bounding-set=-all \
    bwrap --unshare-user --uid "$uid" --gid "$gid" --unshare-pid --unshare-ipc --unshare-uts \
    --unshare-cgroup-try --die-with-parent --new-session --as-pid-1 --cap-drop ALL \
    --ro-bind "$work/$bin/rootfs" / --proc /proc --dev /dev \
    --ro-bind "$work/etc/hosts" /etc/hosts --ro-bind "$work/etc/resolv.conf" /etc/resolv.conf \
    --chdir / --clearenv "${env_args[@]}" "${extra[@]}" -- "${command[@]}" "$@"
}

# expect_exit CODE WHAT BIN [--exec PATH] [bwrap args...] -- ARGS...: a run of at most 30 s
# that must exit CODE; its output goes to $last_log.
expect_exit() {
  local want=$1 what=$2 got=0 pid watchdog
  shift 2
  last_log="$work/logs/run-$((++runs)).log"
  sandbox "$@" >"$last_log" 2>&1 &
  pid=$!
  (sleep 30 && kill "$pid") 2>/dev/null &
  watchdog=$!
  wait "$pid" || got=$?
  kill "$watchdog" 2>/dev/null || true
  [[ $got == "$want" ]] || { cat "$last_log" >&2; fail "$what: exit $got, expected $want"; }
  step "$what: exit $got"
}
runs=0

# The sandbox itself: uid, capabilities and no_new_privs as seen by the kernel, read-only root.
sandbox_status() { # host-pid
  local status="/proc/$1/status"
  grep -q "^Uid:[[:space:]]*${IMAGES_UID}[[:space:]]" "$status" || fail "process runs as $(grep ^Uid: "$status")"
  grep -q "^Gid:[[:space:]]*${IMAGES_UID}[[:space:]]" "$status" || fail "process runs as $(grep ^Gid: "$status")"
  local cap
  for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
    grep -q "^$cap:[[:space:]]*0\+$" "$status" || fail "capabilities left: $(grep "^$cap:" "$status")"
  done
  grep -q '^NoNewPrivs:[[:space:]]*1$' "$status" || fail "no_new_privs is not set"
  awk '$5 == "/" { found = 1; if ($6 !~ /(^|,)ro(,|$)/) bad = 1 } END { exit !(found && !bad) }' \
    "/proc/$1/mountinfo" || fail "the root filesystem is not read-only"
}

# Long-running: start in the background, learn the host pid of the sandboxed process.
start_sandboxed() { # name BIN [bwrap args...] -- ARGS...
  local name=$1 bin=$2; shift 2
  rm -f "$work/logs/$name.info"
  sandbox "$bin" --info-fd 3 "$@" 3>"$work/logs/$name.info" >"$work/logs/$name.out" 2>"$work/logs/$name.err" &
  pids+=($!)
  bg_pid=$!
  wait_for "$name's pid" grep -q child-pid "$work/logs/$name.info"
  child_pid="$(jq -r '."child-pid"' "$work/logs/$name.info")"
}

hello_saw() { # sni
  # Slurped: jq 1.6's -e looks at the last line only. A line half written fails; the caller retries.
  [[ -f $work/logs/hello.jsonl ]] && jq -se --arg sni "$1" 'any(.[]; .tls and .sni == $sni)' \
    "$work/logs/hello.jsonl" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
check_sidecar() {
  local bin=scopegate-sidecar
  step "$bin"
  expect_exit 0 "sidecar --version" "$bin" -- --version
  grep -qx "$bin $version" "$last_log" || fail "--version printed $(cat "$last_log")"
  # A runtime's exec of a shell fails: there is none (bwrap exits 1 when execvp fails).
  expect_exit 1 "sidecar: /bin/sh cannot be executed" "$bin" --exec /bin/sh -- -c true
  grep -q 'No such file or directory' "$last_log" || fail "/bin/sh: $(cat "$last_log")"

  local cfg="$work/config-sidecar"
  mkdir -p "$cfg"
  expect_exit 64 "sidecar: missing config file exits 64" "$bin" \
    --ro-bind "$cfg" /config -- --config /config/missing.json
  printf '{"apiVersion": "sidecar.scopegate.dev/v2"}\n' >"$cfg/wrong-version.json"
  expect_exit 64 "sidecar: config of another apiVersion exits 64" "$bin" \
    --ro-bind "$cfg" /config -- --config /config/wrong-version.json
  sidecar_config "http://jwks.files.scopegate.test:$hello_port/jwks" >"$cfg/plain-http.json"
  expect_exit 64 "sidecar: an http:// jwksUri exits 64" "$bin" \
    --ro-bind "$cfg" /config -- --config /config/plain-http.json

  sidecar_config "https://jwks.files.scopegate.test:$hello_port/jwks" \
    "https://jwks.dns.scopegate.test:$hello_port/jwks" >"$cfg/sidecar.json"
  start_sandboxed sidecar "$bin" --ro-bind "$cfg" /config -- --config /config/sidecar.json \
    --bind 127.0.0.1 --admin-addr 127.0.0.1:15090 --drain-secs 2
  wait_for "the sidecar's listening line" grep -q '^scopegate-sidecar listening' "$work/logs/sidecar.out"
  sandbox_status "$child_pid"
  step "sidecar: pid $child_pid runs as $IMAGES_UID:$IMAGES_UID, no capabilities, no_new_privs, read-only root"
  local body
  body="$(curl -fsS --max-time 5 http://127.0.0.1:15090/healthz)" || fail "/healthz failed"
  [[ $body == ok ]] || fail "/healthz answered $body"
  step "sidecar: /healthz on the admin port answers ok"
  local code
  code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:15080/orders)"
  [[ $code == 401 ]] || fail "the proxy answered $code without a token, expected 401"
  step "sidecar: the proxy port answers 401 without a token"
  wait_for "the JWKS fetch through /etc/hosts" hello_saw jwks.files.scopegate.test
  wait_for "the JWKS fetch through DNS" hello_saw jwks.dns.scopegate.test
  step "sidecar: resolved jwks.files.scopegate.test (files) and jwks.dns.scopegate.test (dns), sent TLS ClientHellos"
  kill -TERM "$child_pid"
  local status=0
  wait "$bg_pid" || status=$?
  ((status == 0)) || { cat "$work/logs/sidecar.err" >&2; fail "the sidecar exited $status after SIGTERM"; }
  step "sidecar: SIGTERM drains and exits 0"
}

# sidecar_config JWKS-URI...: a verifier config with one remote issuer per JWKS URI.
sidecar_config() {
  local uris=("$@")
  jq -n --args '{
    apiVersion: "sidecar.scopegate.dev/v1",
    policy: {namespace: "images", name: "check", generation: 1},
    listen: {port: 15080},
    upstream: {port: 18080, responseTimeoutSecs: 2},
    verify: {
      issuers: [$ARGS.positional | to_entries[] | {
        issuer: "https://issuer-\(.key).scopegate.test",
        keys: {type: "remote", jwksUri: .value, algorithms: ["ES256"], refreshIntervalSecs: 300}
      }],
      audiences: ["images"], leewaySecs: 30
    },
    rules: [{name: "public", paths: ["/public/**"], action: {type: "public"}}],
    defaultAction: "deny",
    headers: {securityHeaders: true, hsts: "never", subjectHeader: "x-auth-subject",
              scopesHeader: "x-auth-scopes", clientIdHeader: "x-auth-client-id"}
  }' "${uris[@]}"
}

# ---------------------------------------------------------------------------------------------
check_operator() {
  local bin=scopegate-operator
  step "$bin"
  expect_exit 0 "operator --version" "$bin" -- --version
  grep -qx "$bin $version" "$last_log" || fail "--version printed $(cat "$last_log")"
  expect_exit 2 "operator: a malformed flag exits 2" "$bin" -- --admin-addr not-an-address
  expect_exit 1 "operator: no cluster config exits 1" "$bin" -- \
    --admin-addr 127.0.0.1:18081 --webhook-addr 127.0.0.1:19443
  grep -q 'admin server listening' "$last_log" || fail "the admin server did not start"
  grep -q 'finding the Kubernetes API' "$last_log" || fail "unexpected failure: $(tail -3 "$last_log")"

  # In-cluster: the service account files and KUBERNETES_SERVICE_HOST as a DNS name. The "API
  # server" is the hello peer, which records the ClientHello and hangs up.
  local sa="$work/secrets/serviceaccount"
  mkdir -p "$sa"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=scopegate-images-check -keyout "$work/secrets/ca.key" -out "$sa/ca.crt" 2>/dev/null
  printf 'scopegate-images-check-token' >"$sa/token"
  printf 'scopegate-system' >"$sa/namespace"
  chmod 0644 "$sa"/*
  expect_exit 1 "operator: in-cluster config, API server hangs up, exits 1" "$bin" \
    --ro-bind "$sa" /var/run/secrets/kubernetes.io/serviceaccount \
    --setenv KUBERNETES_SERVICE_HOST kubernetes.default.svc \
    --setenv KUBERNETES_SERVICE_PORT "$hello_port" -- \
    --admin-addr 127.0.0.1:18081 --webhook-addr 127.0.0.1:19443
  grep -q 'reading the API server version' "$last_log" || fail "unexpected failure: $(tail -3 "$last_log")"
  hello_saw kubernetes.default.svc || fail "no TLS ClientHello for kubernetes.default.svc"
  step "operator: resolved kubernetes.default.svc (dns), sent a TLS ClientHello with its SNI"
}

check_operator
check_sidecar
