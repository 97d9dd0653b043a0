#!/usr/bin/env bash
# Benchmark: the injection webhook and the lease while the operator hashes a burst of
# human-chosen client secrets (argon2id, tens of milliseconds each) on a fresh local control
# plane: ISSUERS issuers with CLIENTS OAuthClients each (every one with an existingSecret) are
# applied at once while the webhook answers RATE AdmissionReviews/s. Reports the webhook's
# client-side latency, how long the registrations took, and whether the lease held.
# OPERATOR=<binary> measures another build (e.g. an older commit's); by default a release
# build of this tree. Not part of `make test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source e2e/scripts/versions.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SCOPEGATE_CACHE/target}"
RATE="${RATE:-50}"; SECONDS_TO_RUN="${SECONDS_TO_RUN:-30}"
ISSUERS="${ISSUERS:-3}"; CLIENTS="${CLIENTS:-15}"
if [[ -z ${OPERATOR:-} ]]; then
  cargo build --release --locked -p scopegate-operator
  OPERATOR="$CARGO_TARGET_DIR/release/scopegate-operator"
fi
D="$(mktemp -d /tmp/scopegate-heavy.XXXXXX)"
trap 'bash e2e/scripts/cluster-down.sh "$D"' EXIT
bash e2e/scripts/cluster-up.sh "$D" >/dev/null
bash e2e/scripts/operator-up.sh "$D" "$OPERATOR" >/dev/null
source "$D/env"
k() { "$E2E_KUBECTL" "$@"; }
k create namespace bench >/dev/null
k label namespace bench scopegate.dev/injection=enabled >/dev/null
{
  cat <<'YAML'
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: orders}
spec:
  selector: {matchLabels: {app: orders}}
  issuer: {external: {issuer: "https://idp.example", jwksUri: "https://idp.example/jwks", algorithms: [ES256]}}
  audiences: [orders]
  upstream: {port: 8080}
YAML
  for i in $(seq "$ISSUERS"); do
    cat <<YAML
---
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth$i}
spec:
  selector: {matchLabels: {app: auth$i}}
  audiences: [https://auth$i.bench.svc]
  issuer:
    self:
      url: https://auth$i.bench.svc
      service: {name: auth$i, port: 443}
      scopes: {read: Read}
  upstream: {port: 8080}
YAML
  done
} | k apply -n bench -f - >/dev/null
for i in $(seq "$ISSUERS"); do
  for _ in $(seq 300); do
    [[ "$(k -n bench get authpolicy "auth$i" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] && break
    sleep 0.2
  done
  for j in $(seq "$CLIENTS"); do
    k -n bench create secret generic "chosen-$i-$j" --from-literal=secret="correct horse battery staple $i $j" >/dev/null
  done
done
clients="$D/clients.yaml"
for i in $(seq "$ISSUERS"); do
  for j in $(seq "$CLIENTS"); do
    cat <<YAML
---
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {name: c-$i-$j}
spec:
  issuerRef: {name: auth$i}
  grantTypes: [client_credentials]
  scopes: [read]
  audiences: [https://auth$i.bench.svc]
  existingSecret: {name: chosen-$i-$j, key: secret}
YAML
  done
done >"$clients"

"$SCOPEGATE_CACHE/venv/bin/python" e2e/bench/webhook_load.py \
  "https://127.0.0.1:$E2E_WEBHOOK_PORT/mutate-pods" "$D/pki/webhook-ca.crt" "$RATE" "$SECONDS_TO_RUN" bench &
load=$!
sleep 5
applied=$(date +%s.%N)
k apply -n bench -f "$clients" >/dev/null
total=$((ISSUERS * CLIENTS))
for _ in $(seq 1200); do
  ready="$(k -n bench get oauthclients -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].reason}{"\n"}{end}' | grep -c '^Registered$' || true)"
  ((ready >= total)) && break
  sleep 0.1
done
registered=$(date +%s.%N)
wait "$load"
printf 'registrations: %s of %s clients registered %.1fs after they were applied\n' \
  "$ready" "$total" "$(echo "$registered - $applied" | bc)"
metrics="$(curl -s "http://$E2E_OPERATOR_ADMIN/metrics" || true)"
if [[ -z $metrics ]]; then
  echo "lease: the operator process is gone (it exited)"; tail -5 "$D/logs/operator.log"
else
  echo "lease: leader $(grep '^scopegate_operator_leader ' <<<"$metrics" | cut -d' ' -f2)," \
    "leadership lost $(grep '^scopegate_operator_leadership_lost_total ' <<<"$metrics" | cut -d' ' -f2 || echo n/a) times," \
    "$(grep -c 'renewing the lease failed' "$D/logs/operator.log" || true) failed renewals in the log"
fi
