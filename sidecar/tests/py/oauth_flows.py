"""Drives the scopegate issuer with independent implementations: Authlib's OAuth 2.0 client
(requests integration) for discovery, client_credentials, authorization code + PKCE (with the
RFC 7636 appendix B verifier), refresh rotation, revocation and introspection; the issued
tokens are checked against the issuer's JWKS by Authlib's RFC 9068 validator (joserfc), PyJWT
and jwcrypto. The app's part of the login (accepting the challenge) goes over the mint socket.

Usage: oauth_flows.py SETTINGS_JSON  -> one JSON line of findings on stdout; exit 1 on failure.
"""
import http.client
import json
import socket
import sys
import time
from urllib.parse import parse_qs, urlparse

import jwt as pyjwt
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import KeySet
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

settings = json.loads(sys.argv[1])
issuer = settings["issuer"]
ca = settings["ca_file"]
mint_socket = settings["mint_socket"]
clients = settings["clients"]
orders = settings["audience"]
findings = {}


def check(condition, what):
    if not condition:
        raise AssertionError(what)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("mint")
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.unix_path)
        self.sock = sock


def mint(method, path, body=None):
    conn = UnixHTTPConnection(mint_socket)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


# Discovery (RFC 8414): the issuer in the document is the one we asked.
metadata = requests.get(f"{issuer}/.well-known/oauth-authorization-server", verify=ca).json()
check(metadata["issuer"] == issuer, "metadata issuer")
check(metadata["code_challenge_methods_supported"] == ["S256"], "S256 only")
jwks = requests.get(metadata["jwks_uri"], verify=ca).json()
check(all("d" not in k for k in jwks["keys"]), "no private members in the JWKS")


class Validator(JWTBearerTokenValidator):
    def get_jwks(self):
        return jwks


def verify_everywhere(token, audience):
    """The token passes three independent verifiers with the issuer's published keys."""
    header = pyjwt.get_unverified_header(token)
    if header["alg"] == "EdDSA":
        # joserfc (under Authlib) refuses the name EdDSA, deprecated by RFC 9864 for Ed25519,
        # unless it is asked for by name: the same library, with the algorithm allowed.
        decoded = joserfc_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["EdDSA"])
        joserfc_jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": issuer}, aud={"essential": True, "value": audience},
            sub={"essential": True}, client_id={"essential": True}, jti={"essential": True},
        ).validate(decoded.claims)
    else:
        claims = Validator(issuer=issuer, resource_server=audience).authenticate_token(token)
        claims.validate()
        check(claims["iss"] == issuer, "authlib: iss")
    check(header["typ"] == "at+jwt", "typ at+jwt")
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    decoded = pyjwt.decode(token, pyjwt.PyJWK(key).key, algorithms=[key["alg"]], audience=audience,
                           issuer=issuer, options={"require": ["exp", "iat", "nbf", "sub", "jti"]})
    keyset = jwcrypto_jwk.JWKSet.from_json(json.dumps(jwks))
    parsed = jwcrypto_jwt.JWT(jwt=token, key=keyset, expected_type="JWS",
                              check_claims={"iss": issuer, "exp": None})
    check(json.loads(parsed.claims)["jti"] == decoded["jti"], "jwcrypto agrees")
    for claim in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id"]:
        check(claim in decoded, f"RFC 9068 claim {claim}")
    return decoded


def session(name, **kwargs):
    c = clients[name]
    s = OAuth2Session(c["id"], c.get("secret"), token_endpoint_auth_method=c["method"], **kwargs)
    s.verify = ca
    return s


# client_credentials, basic and post.
for name in ["backend", "poster"]:
    s = session(name)
    token = s.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    check("refresh_token" not in token, f"{name}: no refresh token")
    claims = verify_everywhere(token["access_token"], orders)
    check(claims["client_id"] == clients[name]["id"], f"{name}: client_id")
findings["client_credentials"] = "ok"


def browser_login(authorization_url, subject):
    """The browser's part: authorize, the app's login accepting the challenge, the resume."""
    first = requests.get(authorization_url, verify=ca, allow_redirects=False)
    check(first.status_code == 303, f"authorize answered {first.status_code}")
    login = urlparse(first.headers["Location"])
    challenge = parse_qs(login.query)["login_challenge"][0]
    status, pending = mint("GET", f"/v1/logins/{challenge}")
    check(status == 200, "pending login")
    status, accepted = mint("POST", f"/v1/logins/{challenge}/accept", {"subject": subject})
    check(status == 200, "accept")
    back = requests.get(accepted["redirect_to"], verify=ca, allow_redirects=False)
    check(back.status_code == 303, "resume redirects")
    return pending, back.headers["Location"]


# Authorization code + PKCE with the RFC 7636 appendix B verifier (confidential client).
verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
check(create_s256_code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "appendix B")
web = session("web", redirect_uri=clients["web"]["redirect_uri"], scope="read:items write:items",
              code_challenge_method="S256")
url, state = web.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier)
check("code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM" in url, "challenge in the URL")
pending, location = browser_login(url, "alice")
check(pending["scope"] == "read:items write:items", "requested scope reaches the app")
query = parse_qs(urlparse(location).query)
check(query["state"] == [state], "state untouched")
check(query["iss"] == [issuer], "RFC 9207 iss")
token = web.fetch_token(metadata["token_endpoint"], authorization_response=location, code_verifier=verifier)
claims = verify_everywhere(token["access_token"], orders)
check(claims["sub"] == "alice" and claims["scope"] == "read:items write:items", "code grant claims")
findings["authorization_code_appendix_b"] = "ok"

# Refresh rotation, narrowing.
old_refresh = token["refresh_token"]
refreshed = web.refresh_token(metadata["token_endpoint"], refresh_token=old_refresh, scope="read:items")
check(refreshed["refresh_token"] != old_refresh, "rotated")
check(verify_everywhere(refreshed["access_token"], orders)["scope"] == "read:items", "narrowed")
findings["refresh_rotation"] = "ok"

# Introspection by the resource server, consistent with the JWT; revocation; inactive after.
rs = session("orders_rs")
info = rs.introspect_token(metadata["introspection_endpoint"], token=refreshed["access_token"]).json()
decoded = pyjwt.decode(refreshed["access_token"], options={"verify_signature": False})
check(info["active"] is True, "active")
for claim in ["sub", "client_id", "exp", "iat", "jti", "iss", "scope"]:
    check(info[claim] == decoded[claim], f"introspection {claim}")
revoked = web.revoke_token(metadata["revocation_endpoint"], token=refreshed["access_token"],
                           token_type_hint="access_token")
check(revoked.status_code == 200, "revoke")
info = rs.introspect_token(metadata["introspection_endpoint"], token=refreshed["access_token"]).json()
check(info == {"active": False}, "inactive after revocation")
revoked = web.revoke_token(metadata["revocation_endpoint"], token=refreshed["refresh_token"],
                           token_type_hint="refresh_token")
check(revoked.status_code == 200, "revoke refresh token")
try:
    web.refresh_token(metadata["token_endpoint"], refresh_token=refreshed["refresh_token"])
    check(False, "a revoked family refreshes")
except Exception as exc:  # authlib raises OAuthError with the server's error code
    check("invalid_grant" in str(exc), f"revoked family: {exc}")
findings["introspect_revoke"] = "ok"

# Public client: its own random verifier from authlib, a loopback redirect on any port.
cli = session("cli", redirect_uri="http://127.0.0.1:49152/callback", scope="read:items",
              code_challenge_method="S256")
cli_verifier = generate_token(64)
url, state = cli.create_authorization_url(metadata["authorization_endpoint"], code_verifier=cli_verifier)
_, location = browser_login(url, "bob")
token = cli.fetch_token(metadata["token_endpoint"], authorization_response=location, code_verifier=cli_verifier)
verify_everywhere(token["access_token"], orders)
findings["public_client"] = "ok"

# A wrong verifier fails with invalid_grant.
cli2 = session("cli", redirect_uri="http://127.0.0.1:49153/callback", scope="read:items",
               code_challenge_method="S256")
url, state = cli2.create_authorization_url(metadata["authorization_endpoint"], code_verifier=generate_token(64))
_, location = browser_login(url, "bob")
try:
    cli2.fetch_token(metadata["token_endpoint"], authorization_response=location, code_verifier=generate_token(64))
    check(False, "a wrong verifier got a token")
except Exception as exc:
    check("invalid_grant" in str(exc), f"wrong verifier: {exc}")
findings["wrong_verifier"] = "ok"

print(json.dumps(findings))
