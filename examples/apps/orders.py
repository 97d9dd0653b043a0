"""The example "orders" app: it has no auth code at all. The scopegate sidecar in front of it
authenticates callers and passes their identity in headers. For /stock it asks inventory on
the caller's behalf: it passes the caller's Authorization header on, through the sidecar
(HTTP_PROXY), which exchanges that token for one meant for inventory."""
import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORDERS = [{"id": 1, "item": "coffee beans"}, {"id": 2, "item": "grinder"}]
INVENTORY_URL = os.environ.get("INVENTORY_URL", "http://inventory/stock")


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _caller(self):
        return {
            "subject": self.headers.get("x-auth-subject"),
            "scopes": self.headers.get("x-auth-scopes"),
            "client_id": self.headers.get("x-auth-client-id"),
        }

    def do_GET(self):
        if self.path in ("/healthz", "/ready"):
            return self._send(200, {"ok": True})
        if self.path.startswith("/orders"):
            return self._send(200, {"orders": ORDERS, "caller": self._caller()})
        if self.path == "/stock":
            return self._stock()
        self._send(404, {"error": "not found"})

    def _stock(self):
        # The header is passed on as it came, like a trace header: no token handling here.
        forwarded = {}
        if self.headers.get("Authorization"):
            forwarded["Authorization"] = self.headers["Authorization"]
        call = urllib.request.Request(INVENTORY_URL, headers=forwarded)
        try:
            with urllib.request.urlopen(call, timeout=10) as answer:
                status, text = answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            status, text = refused.code, refused.read().decode()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return self._send(200, {"inventory_status": status, "inventory": body})

    def do_POST(self):
        if self.path == "/orders":
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            return self._send(201, {"created": True, "caller": self._caller()})
        self._send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
