"""Open-loop load on the injection webhook: AdmissionReviews for a selected pod at a fixed
rate over one keep-alive TLS connection. Prints client-side latency percentiles; the
server-side numbers come from the operator's histogram (webhook.sh reads them)."""
import json
import sys
import time
import uuid

import requests

url, ca, rate, seconds, namespace = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
pod = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bench", "namespace": namespace, "labels": {"app": "orders"}},
    "spec": {"containers": [{"name": "app", "image": "example/app",
                             "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]},
}
session = requests.Session()
session.trust_env = False  # REQUESTS_CA_BUNDLE would override the CA below
session.verify = ca
latencies, injected = [], 0
interval = 1.0 / rate
start = time.perf_counter()
n = int(rate * seconds)
for i in range(n):
    due = start + i * interval
    now = time.perf_counter()
    if due > now:
        time.sleep(due - now)
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": str(uuid.uuid4()), "namespace": namespace, "operation": "CREATE", "object": pod}}
    sent = time.perf_counter()
    answer = session.post(url, data=json.dumps(review), headers={"Content-Type": "application/json"}, timeout=3)
    latencies.append((time.perf_counter() - sent) * 1000.0)
    if answer.status_code == 200 and answer.json()["response"].get("patchType") == "JSONPatch":
        injected += 1
latencies.sort()
pct = lambda p: latencies[min(len(latencies) - 1, int(p / 100.0 * len(latencies)))]
elapsed = time.perf_counter() - start
print(f"client: {n} reviews in {elapsed:.1f}s ({n / elapsed:.0f}/s), {injected} injected; "
      f"latency ms p50 {pct(50):.2f} p90 {pct(90):.2f} p99 {pct(99):.2f} max {latencies[-1]:.2f}")
if injected != n:
    sys.exit("not every review was answered with an injection patch")
