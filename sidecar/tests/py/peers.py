"""Tokens minted by independent JOSE implementations (PyJWT, jwcrypto) for the sidecar's
cross-check: the keys as a JWKS, then cases with the status the sidecar must answer.

Usage: peers.py ISSUER AUDIENCE  -> JSON on stdout.
"""
import base64
import hashlib
import hmac
import json
import sys
import time

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto import jwk, jws
from jwcrypto import jwt as jwcrypto_jwt
from jwcrypto.common import json_encode

issuer, audience = sys.argv[1], sys.argv[2]
now = int(time.time())


def claims(**overrides):
    c = {
        "iss": issuer, "sub": "alice", "aud": audience, "exp": now + 600, "iat": now - 5,
        "nbf": now - 5, "jti": f"jti-{len(cases)}", "client_id": "web", "scope": "read:items",
    }
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def public_jwk(algorithm_class, key, kid, alg):
    d = json.loads(algorithm_class.to_jwk(key.public_key()))
    d.update({"kid": kid, "alg": alg, "use": "sig"})
    return d


keys, cases = [], []


def case(name, token, status):
    cases.append({"name": name, "token": token, "status": status})


def at(kid, alg):
    return {"kid": kid, "typ": "at+jwt", "alg": alg}


# PyJWT: one key per algorithm.
pyjwt_keys = {
    "ES256": (pyjwt.algorithms.ECAlgorithm, ec.generate_private_key(ec.SECP256R1())),
    "ES384": (pyjwt.algorithms.ECAlgorithm, ec.generate_private_key(ec.SECP384R1())),
    "RS256": (pyjwt.algorithms.RSAAlgorithm, rsa.generate_private_key(65537, 2048)),
    "PS256": (pyjwt.algorithms.RSAAlgorithm, rsa.generate_private_key(65537, 2048)),
    "EdDSA": (pyjwt.algorithms.OKPAlgorithm, ed25519.Ed25519PrivateKey.generate()),
}
for alg, (cls, key) in pyjwt_keys.items():
    kid = f"pyjwt-{alg.lower()}"
    keys.append(public_jwk(cls, key, kid, alg))
    case(f"PyJWT {alg}", pyjwt.encode(claims(), key, algorithm=alg, headers=at(kid, alg)), 200)

es_key = pyjwt_keys["ES256"][1]
case("PyJWT aud list with ours",
     pyjwt.encode(claims(aud=["other", audience]), es_key, algorithm="ES256",
                  headers=at("pyjwt-es256", "ES256")), 200)
case("PyJWT alg none",
     pyjwt.encode(claims(), None, algorithm="none", headers={"kid": "pyjwt-es256", "typ": "at+jwt"}),
     401)
# PyJWT refuses asymmetric key material as an HMAC secret (the CVE-2022-29217 fix), so the
# confusion token is put together by hand: HS256 over the published public key bytes.
for label, encoding, fmt in [
    ("SPKI DER", serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    ("PEM", serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ("X9.62 point", serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
]:
    secret = es_key.public_key().public_bytes(encoding, fmt)
    signing_input = b".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in (at("pyjwt-es256", "HS256"), claims()))
    tag = hmac.new(secret, signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + base64.urlsafe_b64encode(tag).rstrip(b"=")).decode()
    case(f"HS256 keyed with the ES256 public key ({label})", token, 401)
case("PyJWT default typ JWT",
     pyjwt.encode(claims(), es_key, algorithm="ES256", headers={"kid": "pyjwt-es256"}), 401)
case("PyJWT expired",
     pyjwt.encode(claims(exp=now - 3600), es_key, algorithm="ES256",
                  headers=at("pyjwt-es256", "ES256")), 401)
case("PyJWT wrong audience",
     pyjwt.encode(claims(aud="payments"), es_key, algorithm="ES256",
                  headers=at("pyjwt-es256", "ES256")), 401)
case("PyJWT signed by a stranger with our kid",
     pyjwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                  headers=at("pyjwt-es256", "ES256")), 401)
case("PyJWT ES384 token naming the ES256 key",
     pyjwt.encode(claims(), pyjwt_keys["ES384"][1], algorithm="ES384",
                  headers=at("pyjwt-es256", "ES384")), 401)
case("PyJWT RS256 key used for PS256",
     pyjwt.encode(claims(), pyjwt_keys["RS256"][1], algorithm="PS256",
                  headers=at("pyjwt-rs256", "PS256")), 401)
case("PyJWT scope as a list",
     pyjwt.encode(claims(scope=["read:items"]), es_key, algorithm="ES256",
                  headers=at("pyjwt-es256", "ES256")), 401)
case("PyJWT missing exp",
     pyjwt.encode(claims(exp=None), es_key, algorithm="ES256",
                  headers=at("pyjwt-es256", "ES256")), 401)

# jwcrypto: its own key generation and JWT builder.
jwcrypto_keys = {
    "ES256": jwk.JWK.generate(kty="EC", crv="P-256", kid="jwcrypto-es256"),
    "RS256": jwk.JWK.generate(kty="RSA", size=2048, kid="jwcrypto-rs256"),
    "EdDSA": jwk.JWK.generate(kty="OKP", crv="Ed25519", kid="jwcrypto-eddsa"),
}
for alg, key in jwcrypto_keys.items():
    public = key.export_public(as_dict=True)
    public.update({"alg": alg, "use": "sig"})
    keys.append(public)
    token = jwcrypto_jwt.JWT(header=at(key.key_id, alg), claims=claims())
    token.make_signed_token(key)
    case(f"jwcrypto {alg}", token.serialize(), 200)

attacker = jwk.JWK.generate(kty="EC", crv="P-256", kid="jwcrypto-es256")
embedded = jws.JWS(json.dumps(claims()).encode())
embedded.add_signature(attacker, None, json_encode(
    {**at("jwcrypto-es256", "ES256"), "jwk": attacker.export_public(as_dict=True)}))
case("jwcrypto embedded attacker jwk", embedded.serialize(compact=True), 401)
jku = jws.JWS(json.dumps(claims()).encode())
jku.add_signature(attacker, None, json_encode(
    {**at("attacker", "ES256"), "jku": "http://127.0.0.1:9/jwks.json"}))
case("jwcrypto jku to attacker keys", jku.serialize(compact=True), 401)
flattened = jws.JWS(json.dumps(claims()).encode())
flattened.add_signature(jwcrypto_keys["ES256"], None, json_encode(at("jwcrypto-es256", "ES256")))
case("jwcrypto JSON serialization", flattened.serialize(), 400)

print(json.dumps({"jwks": {"keys": keys}, "cases": cases}))
