"""The example login app behind the shop's issuer sidecar. It owns its users and its login
page; scopegate's issuer owns tokens. When /oauth2/authorize sends a browser here with a
login_challenge, the app checks the user's password and accepts the challenge on the sidecar's
mint socket (a Unix socket only this pod's containers share); the sidecar answers with the
redirect that carries the authorization code back to the client.

When the user chose an upstream provider (Google, GitHub) instead, the challenge already
carries the identity the issuer verified there; the app links it to one of its own users, keyed
by (upstream, subject) and never by email, and accepts the challenge with that user."""
import html
import http.client
import json
import os
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MINT_SOCKET = os.environ.get("SCOPEGATE_MINT_SOCKET", "/var/run/scopegate/mint.sock")
USERS = {"alice": "wonderland", "bob": "builder"}
# (upstream, subject at the upstream) -> our user. A real app keeps this in its database.
LINKED = {}
LINKED_LOCK = threading.Lock()


def upsert_user(identity):
    """Our user for an upstream identity: found by (upstream, subject), or created. Never
    matched by email: an address at a provider proves nothing about our existing accounts."""
    key = (identity["upstream"], identity["subject"])
    with LINKED_LOCK:
        if key not in LINKED:
            LINKED[key] = f"user:{identity['upstream']}-{len(LINKED) + 1}"
        return LINKED[key]


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def mint(method, path, body=None):
    connection = UnixConnection(MINT_SOCKET)
    payload = json.dumps(body).encode() if body is not None else None
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body, content_type="text/html; charset=utf-8", headers=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/healthz", "/ready"):
            return self._send(200, "ok", "text/plain")
        if url.path == "/login":
            challenge = urllib.parse.parse_qs(url.query).get("login_challenge", [""])[0]
            status, login = mint("GET", f"/v1/logins/{urllib.parse.quote(challenge)}")
            if status != 200:
                return self._send(400, "This login link is not valid any more.")
            if login.get("upstream"):
                subject = upsert_user(login["upstream"])
                return self._accept(challenge, subject)
            page = (
                f"<h1>Sign in to {html.escape(login['client_id'])}</h1>"
                f"<p>It asks for: {html.escape(login['scope'])}</p>"
                '<form method="post" action="/login">'
                f'<input type="hidden" name="login_challenge" value="{html.escape(challenge)}">'
                '<input name="username"> <input name="password" type="password"> <button>Sign in</button></form>'
            )
            return self._send(200, page)
        self._send(404, "not found", "text/plain")

    def do_POST(self):
        if self.path != "/login":
            return self._send(404, "not found", "text/plain")
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        user = form.get("username", [""])[0]
        challenge = form.get("login_challenge", [""])[0]
        if USERS.get(user) != form.get("password", [None])[0]:
            # The challenge stays pending: the user may try again until it expires.
            return self._send(401, "Wrong user name or password.")
        self._accept(challenge, f"user:{user}")

    def _accept(self, challenge, subject):
        status, settled = mint("POST", f"/v1/logins/{urllib.parse.quote(challenge)}/accept", {"subject": subject})
        if status != 200:
            return self._send(400, "This login link is not valid any more.")
        self._send(303, "", headers=[("Location", settled["redirect_to"])])

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
