#!/usr/bin/env bash
# Benchmark: the injection webhook at 100 AdmissionReviews/s against a release-built operator
# on a fresh local control plane. Reports the server-side p50/p99 from the operator's
# histogram and client-side percentiles. Not part of `make test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source e2e/scripts/versions.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SCOPEGATE_CACHE/target}"
RATE="${RATE:-100}"; SECONDS_TO_RUN="${SECONDS_TO_RUN:-60}"
bash scripts/setup.sh >/dev/null
bash e2e/scripts/build-bins.sh >/dev/null
cargo build --release --locked -p scopegate-operator
D="$(mktemp -d /tmp/scopegate-webhook.XXXXXX)"
trap 'bash e2e/scripts/cluster-down.sh "$D"' EXIT
bash e2e/scripts/cluster-up.sh "$D"
bash e2e/scripts/operator-up.sh "$D" "$CARGO_TARGET_DIR/release/scopegate-operator"
source "$D/env"
k() { "$E2E_KUBECTL" "$@"; }
k create namespace bench >/dev/null
k label namespace bench scopegate.dev/injection=enabled >/dev/null
k apply -n bench -f - >/dev/null <<'YAML'
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: orders}
spec:
  selector: {matchLabels: {app: orders}}
  issuer: {external: {issuer: "https://idp.example", jwksUri: "https://idp.example/jwks", algorithms: [ES256]}}
  audiences: [orders]
  upstream: {port: 8080}
YAML
sleep 2
"$SCOPEGATE_CACHE/venv/bin/python" e2e/bench/webhook_load.py \
  "https://127.0.0.1:$E2E_WEBHOOK_PORT/mutate-pods" "$D/pki/webhook-ca.crt" "$RATE" "$SECONDS_TO_RUN" bench
curl -s "http://$E2E_OPERATOR_ADMIN/metrics" | python3 -c '
import sys
buckets, count = [], 0
for line in sys.stdin:
    if line.startswith("scopegate_operator_webhook_duration_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    elif line.startswith("scopegate_operator_webhook_duration_seconds_count"):
        count = float(line.rsplit(" ", 1)[1])
def quantile(q):
    for le, c in buckets:
        if c >= q * count:
            return le * 1000
print(f"server: {int(count)} reviews; p50 <= {quantile(0.5):.2f} ms, p99 <= {quantile(0.99):.2f} ms (histogram bucket bounds)")
'
