"""The example "billing" app: it calls orders and has no auth code and no secret. Its calls go
through the scopegate sidecar (HTTP_PROXY), which attaches a token it obtained with the pod's
own ServiceAccount."""
import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORDERS_URL = os.environ.get("ORDERS_URL", "http://orders/orders")


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path in ("/healthz", "/ready"):
            return self._send(200, {"ok": True})
        if self.path == "/charge":
            # A plain call: urllib sends it to HTTP_PROXY, the sidecar.
            try:
                with urllib.request.urlopen(ORDERS_URL, timeout=10) as answer:
                    status, text = answer.status, answer.read().decode()
            except urllib.error.HTTPError as refused:
                status, text = refused.code, refused.read().decode()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return self._send(200, {"orders_status": status, "orders": body})
        self._send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
