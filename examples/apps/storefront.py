"""The shop's storefront: HTML pages for people in browsers, with no auth code at all. The
scopegate sidecar in front of it logs browsers in at the issuer, keeps their session in a
sealed cookie, refreshes it, and hands each request on with the user's identity headers
(docs/sessions.md). The app reads who is signed in from those headers, and its logout button
is a plain form posting to the sidecar's /.scopegate/logout."""
import html
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PRODUCTS = {"coffee-beans": "Coffee beans", "grinder": "Grinder"}
# subject -> product ids in the cart. A real app keeps this in its database.
CARTS = {}
CARTS_LOCK = threading.Lock()


def page(title, body):
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title></head><body>{body}</body></html>"
    )


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

    def _user(self):
        """The signed-in user's name, from the subject the sidecar verified (user:<name>)."""
        subject = self.headers.get("x-auth-subject") or ""
        return subject, subject.removeprefix("user:")

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/healthz", "/ready"):
            return self._send(200, "ok", "text/plain")
        if path == "/":
            return self._send(200, page("Storefront", '<h1>Storefront</h1><p><a id="enter" href="/shop/">Enter the shop</a></p>'))
        if path == "/shop/":
            subject, name = self._user()
            with CARTS_LOCK:
                cart = list(CARTS.get(subject, []))
            items = "".join(
                f'<li>{html.escape(label)} <form method="post" action="/shop/cart">'
                f'<input type="hidden" name="product" value="{pid}"><button id="add-{pid}">Add to cart</button></form></li>'
                for pid, label in PRODUCTS.items()
            )
            body = (
                f'<h1>Storefront</h1><p id="user">Signed in as {html.escape(name)}</p>'
                f"<ul>{items}</ul>"
                f'<p id="cart">Cart: {html.escape(", ".join(cart)) or "empty"}</p>'
                '<form method="post" action="/.scopegate/logout"><button id="logout">Log out</button></form>'
            )
            return self._send(200, page("Storefront", body))
        self._send(404, "not found", "text/plain")

    def do_POST(self):
        if urllib.parse.urlsplit(self.path).path != "/shop/cart":
            return self._send(404, "not found", "text/plain")
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        product = form.get("product", [""])[0]
        if product not in PRODUCTS:
            return self._send(400, "no such product", "text/plain")
        subject, _ = self._user()
        with CARTS_LOCK:
            CARTS.setdefault(subject, []).append(product)
        self._send(303, "", headers=[("Location", "/shop/")])

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
