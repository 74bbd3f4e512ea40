"""The JWT filter (build/wasm/jwt.wasm) in real Envoy (two workers): tokens from three
independent signers, every rejection with its status and challenge, per-route rules,
identity headers as the upstream sees them, and refused configurations. Every test
runs with the separate filter and with the combined module's `jwt` stage
(`deployment`)."""

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import string
import time

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from harness import Seen
from harness.jwt import (AUDIENCE, ISSUER, KeyDir, challenge, claims_for, demo_token, jwt_gateway,
                         plugin_config, provider, remote_jwks, start_jwks)

REALM = 'Bearer realm="wasmgate"'


def invalid(description):
    return f'{REALM}, error="invalid_token", error_description="{description}"'


@pytest.fixture
def keys(tmp_path):
    keys = KeyDir(tmp_path / "keys")
    keys.add("rsa1", "RS256")
    keys.add("pss1", "PS256")
    keys.add("ec1", "ES256")
    keys.add("ec384", "ES384")
    keys.add("ed1", "EdDSA")
    # Four ES256 keys: a token without kid would have to be tried against each.
    for kid in ("ec2", "ec3", "ec4"):
        keys.add(kid, "ES256")
    return keys


@pytest.fixture
def gateway(start_envoy, start_service, echo, keys, deployment):
    """Envoy + JWT filter + echo upstream + JWKS fixture, with a public and a scoped
    route, and /typed/ for access tokens only (`typ` at+jwt). Returns (envoy, jwks
    fixture)."""
    jwks = start_jwks(start_service, keys)
    config = plugin_config(providers={"idp": provider(),
                                      "typed": provider(required_typ=["at+jwt"])}, rules=[
        {"match": {"prefix": "/public/"}, "public": True},
        {"match": {"prefix": "/orders/", "methods": ["POST"]}, "providers": ["idp"],
         "required_scopes": ["orders:write"]},
        {"match": {"prefix": "/typed/"}, "providers": ["typed"]},
    ])
    return start_envoy(jwt_gateway(echo, config, jwks, deployment=deployment)), jwks


def get(envoy, path="/orders/1", token=None, headers=None, session=None):
    headers = dict(headers or {})
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return (session or requests).get(envoy.url(path), headers=headers, timeout=15)


def assert_identity(resp, user="alice", tenant="acme", scopes="orders:read"):
    assert resp.status_code == 200, (resp.status_code, resp.text, resp.headers)
    seen = Seen(resp)
    assert seen.header("x-user-id") == user
    assert seen.header("x-tenant-id") == tenant
    assert seen.header("x-scopes") == scopes
    # The token stays at the gateway (forward defaults to false).
    assert seen.header("authorization") is None
    return seen


def test_valid_tokens_pass_and_the_upstream_sees_the_identity(gateway, keys):
    envoy, _ = gateway
    spoof = {"x-user-id": "admin", "X-Tenant-ID": "other", "x-scopes": "admin:*"}
    kids = ["rsa1", "pss1", "ec1", "ec384", "ed1"]  # RS256, PS256, ES256, ES384, EdDSA
    for kid in kids:
        # Minted by jwt-simple (Rust, the demo tool) and by PyJWT (Python).
        rust = demo_token(keys, kid, "--sub", "alice", "--tenant", "acme", "--scope", "orders:read")
        python = keys.mint(kid)
        for token in (rust, python):
            assert_identity(get(envoy, token=token, headers=spoof))
    assert envoy.metric("wasmgate_jwt_allowed_total") == 2 * len(kids)


def test_tokens_from_jwcrypto_verify_and_its_forgeries_do_not(gateway, keys):
    envoy, _ = gateway
    claims = claims_for(sub="bob", tenant="globex", scope="orders:read orders:write")

    def jwcrypto_token(kid, pem_kid=None):
        alg, _ = keys.keys[kid]
        private = keys.keys[pem_kid or kid][1]
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        key = jwcrypto_jwk.JWK.from_pem(pem)
        token = jwcrypto_jwt.JWT(header={"alg": alg, "kid": kid}, claims=claims)
        token.make_signed_token(key)
        return token.serialize()

    for kid in ("rsa1", "ec1", "ed1"):
        assert_identity(get(envoy, token=jwcrypto_token(kid)), user="bob", tenant="globex",
                        scopes="orders:read orders:write")
    # Same kid, signed with another key of the same type: the signature must fail.
    keys.add("rogue-rsa", "RS256", publish=False)
    keys.add("rogue-ec", "ES256", publish=False)
    for kid, rogue in (("rsa1", "rogue-rsa"), ("ec1", "rogue-ec")):
        resp = get(envoy, token=jwcrypto_token(kid, pem_kid=rogue))
        assert resp.status_code == 401
        assert challenge(resp) == invalid("signature does not verify")
    # PyJWT with a key the JWKS does not publish, under a published kid.
    forged = pyjwt.encode(claims_for(), keys.keys["rogue-rsa"][1], algorithm="RS256",
                          headers={"kid": "rsa1"})
    assert get(envoy, token=forged).status_code == 401


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _flip(token: str, at: int) -> str:
    """The token with one base64url character changed (never a no-op, always
    canonical: not the last character)."""
    chars = list(token)
    chars[at] = "B" if chars[at] == "A" else "A"
    return "".join(chars)


def _unsigned(header: dict, claims: dict, signature: bytes = b"") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                     _b64(signature)])


def _rs256_text(keys: KeyDir, kid: str, header: str, claims: str) -> str:
    """A token whose header and claims are exactly these texts (duplicate members
    included, which no JWT library writes), signed RS256 with key `kid`."""
    signing_input = f"{_b64(header.encode())}.{_b64(claims.encode())}"
    signature = keys.keys[kid][1].sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def test_each_rejection_gets_its_status_and_challenge(gateway, keys):
    envoy, _ = gateway
    now = int(time.time())
    good = keys.mint("rsa1")
    rsa_public_pem = keys.public_pem("rsa1")
    # HS256 "signed" with the RSA public key: the classic algorithm confusion.
    confused = _unsigned({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}, claims_for())
    signing_input = confused.rsplit(".", 1)[0].encode()
    confused = signing_input.decode() + "." + _b64(
        hmac.new(rsa_public_pem, signing_input, hashlib.sha256).digest())

    cases = [
        ("expired", keys.mint("ec1", exp=now - 3600, iat=now - 7200), "token expired"),
        ("expired by the demo tool", demo_token(keys, "ed1", "--lifetime", "-5m"), "token expired"),
        ("not yet valid", keys.mint("ec1", nbf=now + 3600), "token not yet valid"),
        ("issued in the future", keys.mint("ec1", iat=now + 3600), "token issued in the future"),
        ("wrong issuer", keys.mint("rsa1", iss="https://evil.test"), "issuer not accepted"),
        ("wrong audience", keys.mint("rsa1", aud="billing"), "audience not accepted"),
        ("no exp", keys.mint("rsa1", claims={"iss": ISSUER, "aud": AUDIENCE, "sub": "a"}),
         "token has no exp claim"),
        ("alg none", _unsigned({"alg": "none", "kid": "rsa1"}, claims_for(), b"x"),
         "signing algorithm not allowed"),
        ("alg confusion", confused, "signing algorithm not allowed"),
        ("unknown alg", _unsigned({"alg": "ES512", "kid": "ec1"}, claims_for(), b"x"),
         "signing algorithm not allowed"),
        ("crit header", keys.mint("ec1", headers={"crit": ["exp"], "exp": 1}),
         "unsupported critical header"),
        ("alg/key mismatch", keys.mint("rsa1", headers={"kid": "ec1"}),
         "signing key does not match the algorithm"),
        ("bad signature", _flip(good, -20), "signature does not verify"),
        ("changed claims", _flip(good, good.index(".") + 10), None),
        ("malformed", "abc.def", "not three dot-separated parts"),
        ("bad base64", "a*b.c*d.e*f", "invalid base64url"),
        ("truncated", good[: len(good) // 2], None),
        ("truncated at a dot", good.rsplit(".", 1)[0] + ".", None),
        ("random text", "".join(random.choices(string.ascii_letters + string.digits + "._-", k=300)),
         None),
        ("100 KiB", "a" * (100 * 1024), "token too large"),
        # No kid, and four ES256 keys fit: refused before any signature check.
        ("no kid", pyjwt.encode(claims_for(), keys.keys["ec1"][1], algorithm="ES256"),
         "token has no kid and several keys fit"),
        # Members named twice, properly signed: another parser may read other values.
        ("header member twice", _rs256_text(keys, "rsa1", '{"alg":"RS256","kid":"rsa1","kid":"ec1"}',
                                            json.dumps(claims_for())),
         "header names a member twice"),
        ("claim twice", _rs256_text(keys, "rsa1", '{"alg":"RS256","kid":"rsa1"}',
                                    json.dumps(claims_for())[:-1] + ', "sub": "admin"}'),
         "payload names a member twice"),
    ]
    for name, token, description in cases:
        resp = get(envoy, token=token)
        assert resp.status_code == 401, (name, resp.status_code, resp.text)
        value = challenge(resp)
        assert value.startswith(f'{REALM}, error="invalid_token", error_description="'), (name, value)
        if description:
            assert value == invalid(description), (name, value)
        body = resp.json()
        assert body["error"] == "invalid_token" and body["message"], (name, body)
        assert token not in resp.text and token not in value, name  # never echoed
    # Raw random bytes (not even text) in the header.
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=10)
    conn.putrequest("GET", "/orders/1")
    conn.putheader("authorization", b"Bearer " + bytes(random.randrange(0x80, 0x100) for _ in range(64)))
    conn.endheaders()
    raw = conn.getresponse()
    raw.read()
    conn.close()
    assert raw.status == 401  # not text at all: no token could be read
    # No token at all: a bare challenge (RFC 6750 §3.1).
    resp = get(envoy)
    assert resp.status_code == 401 and challenge(resp) == REALM
    assert resp.json()["error"] == "missing_token"
    resp = get(envoy, headers={"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"})
    assert resp.status_code == 401 and challenge(resp) == REALM
    # Envoy is still serving, and valid tokens still pass.
    assert envoy.alive()
    assert_identity(get(envoy, token=good))
    # Tokens never reach the log (signatures are the part a log would leak).
    log = envoy.log()
    for name, token, _ in cases:
        longest = max(token.split("."), key=len)
        if len(longest) >= 20:
            assert longest not in log, name
    assert envoy.metric("wasmgate_jwt_denied_total", reason="expired") == 2
    assert envoy.metric("wasmgate_jwt_denied_total", reason="kid_required") == 1
    # The raw-bytes header, no header, and Basic credentials.
    assert envoy.metric("wasmgate_jwt_denied_total", reason="missing_token") == 3


def test_a_provider_with_required_typ_takes_access_tokens_only(gateway, keys):
    envoy, _ = gateway
    # RFC 9068 access tokens, however the media type is spelt (RFC 7515 §4.1.9).
    for typ in ("at+jwt", "AT+JWT", "application/at+jwt"):
        assert_identity(get(envoy, "/typed/1", token=keys.mint("ec1", headers={"typ": typ})))
    # An ID token of the same issuer and key (PyJWT writes typ JWT), or no typ at all.
    id_token = keys.mint("ec1")
    no_typ = pyjwt.encode(claims_for(), keys.keys["ec1"][1], algorithm="ES256",
                          headers={"kid": "ec1", "typ": None})
    for token in (id_token, no_typ):
        resp = get(envoy, "/typed/1", token=token)
        assert resp.status_code == 401, resp.text
        assert challenge(resp) == invalid("token type not accepted")
        assert resp.json() == {"error": "invalid_token", "message": "token type not accepted"}
    # The other provider checks no typ; a token without kid passes where one key fits.
    assert_identity(get(envoy, "/orders/1", token=id_token))
    assert_identity(get(envoy, "/orders/1",
                        token=pyjwt.encode(claims_for(), keys.keys["ed1"][1], algorithm="EdDSA")))
    assert envoy.metric("wasmgate_jwt_denied_total", reason="wrong_type") == 2


def test_per_route_rules_public_and_scoped(gateway, keys):
    envoy, _ = gateway
    # A public route needs no token, and still never forwards a spoofed identity.
    resp = get(envoy, "/public/health", headers={"x-user-id": "admin", "x-scopes": "orders:write"})
    assert resp.status_code == 200
    seen = Seen(resp)
    assert seen.header("x-user-id") is None and seen.header("x-scopes") is None
    # The scoped route (POST /orders/) needs orders:write: 403 without it.
    reader = keys.mint("ec1", scope="orders:read")
    resp = requests.post(envoy.url("/orders/new"), headers={"authorization": f"Bearer {reader}"})
    assert resp.status_code == 403
    assert challenge(resp) == (f'{REALM}, error="insufficient_scope", '
                               'error_description="insufficient scope", scope="orders:write"')
    assert resp.json() == {"error": "insufficient_scope", "message": "insufficient scope"}
    writer = keys.mint("ec1", scope="orders:read orders:write")
    resp = requests.post(envoy.url("/orders/new"), headers={"authorization": f"Bearer {writer}"})
    assert resp.status_code == 200
    assert Seen(resp).header("x-scopes") == "orders:read orders:write"
    # GET on the same prefix falls to the default: any valid token, no scope needed.
    assert get(envoy, "/orders/1", token=reader).status_code == 200
    assert get(envoy, "/orders/1").status_code == 401


def test_the_token_cache_answers_repeat_tokens(gateway, keys):
    envoy, _ = gateway
    token = keys.mint("rsa1")
    # One connection stays on one worker, so its VM's cache sees every repeat.
    with requests.Session() as session:
        for _ in range(10):
            assert_identity(get(envoy, token=token, session=session))
    assert envoy.metric("wasmgate_jwt_token_cache_lookups_total", result="miss") == 1
    assert envoy.metric("wasmgate_jwt_token_cache_lookups_total", result="hit") == 9
    # Prometheus shows custom metrics without Envoy's `wasmcustom` namespace, their
    # tags as labels (the bootstrap's stats_tags).
    metrics = envoy.admin("/stats/prometheus").splitlines()
    assert 'wasmgate_jwt_token_cache_lookups_total{result="hit"} 9' in metrics
    assert "wasmgate_jwt_allowed_total{} 10" in metrics


def test_hmac_with_an_inline_secret_and_tokens_from_cookies_and_params(start_envoy, echo,
                                                                        deployment):
    secret = os.urandom(32)
    config = plugin_config(providers={"internal": {
        "issuer": "internal", "audiences": "any", "algorithms": ["HS256"], "forward": True,
        "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "s1", "k": _b64(secret)}]}},
        "from_headers": [{"name": "x-internal-token"}],
        "from_params": ["access_token"],
        "from_cookies": ["session"],
        "claim_to_headers": {"x-service": "sub", "x-team": "org.team"},
    }}, default={"providers": ["internal"]})
    envoy = start_envoy(jwt_gateway(echo, config, deployment=deployment))
    now = int(time.time())
    claims = {"iss": "internal", "sub": "billing-job", "org": {"team": "payments"}, "exp": now + 60}
    token = pyjwt.encode(claims, secret, algorithm="HS256", headers={"kid": "s1"})
    for kwargs in ({"headers": {"x-internal-token": token}},
                   {"params": {"access_token": token}},
                   {"cookies": {"session": token}}):
        resp = requests.get(envoy.url("/jobs"), timeout=15, **kwargs)
        assert resp.status_code == 200, (kwargs, resp.text)
        seen = Seen(resp)
        assert seen.header("x-service") == "billing-job"
        assert seen.header("x-team") == "payments"
    # forward: true keeps the token header for the upstream.
    resp = requests.get(envoy.url("/jobs"), headers={"x-internal-token": token})
    assert Seen(resp).header("x-internal-token") == token
    wrong = pyjwt.encode(claims, os.urandom(32), algorithm="HS256", headers={"kid": "s1"})
    assert requests.get(envoy.url("/jobs"), headers={"x-internal-token": wrong}).status_code == 401
    # The default Bearer header is not a place this provider looks.
    assert requests.get(envoy.url("/jobs"), headers={"authorization": f"Bearer {token}"}).status_code == 401


@pytest.mark.parametrize("config, field, problem", [
    (plugin_config(default={}), "default.providers", "name the providers"),
    (plugin_config(default={"providers": ["nobody"]}), "default.providers[0]", "no provider named"),
    (plugin_config(providers={"idp": provider(algorithms=["HS256"])}), "providers.idp.algorithms",
     "need an inline JWKS"),
    (plugin_config(providers={"idp": provider(algorithms=["none"])}), "providers.idp.algorithms[0]",
     "is not supported"),
    (plugin_config(providers={"idp": provider(jwks={"remote": {"cluster": "idp", "path": "jwks"}})}),
     "providers.idp.jwks.remote.path", "must start with"),
    (plugin_config(providers={"idp": provider(audience=["x"])}), "providers.idp.audience",
     "unknown field"),
    (plugin_config(providers={"idp": provider(jwks={"inline": {"keys": [{"kty": "RSA", "n": "!", "e": "AQAB"}]}})}),
     "providers.idp.jwks.inline", "not base64url"),
    ({"providers": {}, "default": {"public": True}}, "providers", "at least one provider"),
    # A configuration from before audiences were required says what to write.
    (plugin_config(providers={"idp": {"issuer": ISSUER, "jwks": {"inline": {"keys": []}}}}),
     "providers.idp.audiences", 'or write "audiences": "any"'),
    (plugin_config(providers={"idp": provider(audiences=[])}), "providers.idp.audiences",
     "an empty list accepts no token"),
    (plugin_config(providers={"idp": provider(algorithms=["HS256", "HS512"], jwks={"inline": {
        "keys": [{"kty": "oct", "kid": "s1", "k": _b64(b"s" * 32)}]}})}),
     "providers.idp.algorithms", "HS512 needs HMAC secrets of at least 64 bytes"),
    (plugin_config(providers={"idp": provider(jwks=remote_jwks(cache_duration="2h"))}),
     "providers.idp.jwks.remote.cache_duration", "must not be more than max_cache_duration"),
    (plugin_config(max_waiting_requests=0), "max_waiting_requests", "between 1 and 100000"),
])
def test_invalid_config_is_refused_with_the_field_named(refused_envoy, echo, deployment, config,
                                                        field, problem):
    returncode, log = refused_envoy(jwt_gateway(echo, config, deployment=deployment))
    assert returncode != 0
    lines = [line for line in log.splitlines() if "invalid plugin configuration" in line]
    assert lines, log[-3000:]
    assert deployment.refusal("jwt", field) in lines[0], lines[0]
    assert problem in lines[0], lines[0]
