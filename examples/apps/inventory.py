"""The example "inventory" app: it has no auth code. Orders calls it on a user's behalf; the
scopegate sidecar in front of it verifies the exchanged token and passes who the user is and
which service acts for them (the token's act claim) in headers."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STOCK = {"coffee beans": 12, "grinder": 3}


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _caller(self):
        act = self.headers.get("x-auth-act")
        return {
            "subject": self.headers.get("x-auth-subject"),
            "scopes": self.headers.get("x-auth-scopes"),
            "client_id": self.headers.get("x-auth-client-id"),
            # The service acting for the subject, and the whole chain (RFC 8693 act).
            "actor": self.headers.get("x-auth-actor"),
            "act": json.loads(act) if act else None,
        }

    def do_GET(self):
        if self.path in ("/healthz", "/ready"):
            return self._send(200, {"ok": True})
        if self.path.startswith("/stock"):
            return self._send(200, {"stock": STOCK, "caller": self._caller()})
        self._send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
