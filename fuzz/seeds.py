"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) and the fixed JWKS the
JWT targets verify against (fuzz/fixtures/jwks.json), from real inputs: the plugin
configurations under envoy-config/ and istio/wasmplugins/, and tokens minted by the
end-to-end tests' JWT kit (tests/e2e/harness/jwt.py: PyJWT over `cryptography`) with
keys generated here and thrown away. Run from the repository root with the test venv:

    .venv/bin/python fuzz/seeds.py

Running it again makes new keys, so new tokens and a new fixtures/jwks.json together.
Seeds are kept small (a few KB per target). The input formats are those documented on
each target's function in fuzz/src/.
"""

import base64
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import jwt as pyjwt
import yaml
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness.jwt import KeyDir  # noqa: E402  (the test kit, from the e2e tests)
from harness.shipped import shipped_plugin_configs  # noqa: E402

FUZZ = ROOT / "fuzz"
CORPUS = FUZZ / "corpus"
# Must match fuzz/src/jwt.rs.
ISSUER = "https://issuer.fuzz.wasmgate.test"
AUDIENCE = "orders"
NOW = 1_767_225_600


def chunk(data) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return struct.pack("<H", len(data)) + data


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write(target: str, name: str, data) -> None:
    if isinstance(data, str):
        data = data.encode()
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def claims(**overrides) -> dict:
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant_id": "acme",
            "scope": "orders:read orders:write", "iat": NOW - 60, "exp": NOW + 3600}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def jwt_seeds(work: Path) -> None:
    keys = KeyDir(work / "keys")
    for kid, alg in [("rsa", "RS256"), ("p256", "ES256"), ("p384", "ES384"), ("ed25519", "EdDSA")]:
        keys.add(kid, alg)
    secret = os.urandom(64)
    jwks = {"keys": []}
    for kid, (alg, key) in keys.keys.items():
        to_jwk = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "ES384": ECAlgorithm,
                  "EdDSA": OKPAlgorithm}[alg].to_jwk
        jwk = json.loads(to_jwk(key.public_key()))
        jwk.update({"kid": kid, "use": "sig"})
        jwks["keys"].append(jwk)
    jwks["keys"].append({"kty": "oct", "kid": "hmac", "k": b64(secret)})
    (FUZZ / "fixtures").mkdir(exist_ok=True)
    (FUZZ / "fixtures" / "jwks.json").write_text(json.dumps(jwks, indent=1) + "\n")

    def hmac_token(body, headers=None, alg="HS256"):
        return pyjwt.encode(body, secret, algorithm=alg, headers={"kid": "hmac", **(headers or {})})

    # jwt_token: a request shape byte, then the token.
    tokens = {
        "rs256": (0, keys.mint("rsa", claims())),
        "ps256-write": (1, keys.mint("rsa", claims(), alg="PS256")),
        "es256-header": (2, keys.mint("p256", claims())),
        "es384-query": (3, keys.mint("p384", claims())),
        "eddsa-cookie": (4, keys.mint("ed25519", claims())),
        "hs512": (0, hmac_token(claims(), alg="HS512")),
        "expired": (0, keys.mint("p256", claims(iat=NOW - 7200, exp=NOW - 3600))),
        "no-kid": (5, pyjwt.encode(claims(), secret, algorithm="HS256")),
        "crit": (0, hmac_token(claims(), {"crit": ["exp"]})),
        "unknown-kid": (0, keys.mint("p256", claims(), headers={"kid": "gone"})),
        "other-issuer": (0, hmac_token(claims(iss="https://other.fuzz.wasmgate.test"))),
    }
    for name, (shape, token) in tokens.items():
        write("jwt_token", name, bytes([shape]) + token.encode())

    # jwt_claims: shape, HMAC algorithm, header JSON, NUL, claims JSON.
    header = json.dumps({"alg": "HS256", "kid": "hmac", "typ": "JWT"}).encode()
    for name, shape, body in [
        ("valid", 0, claims()),
        ("write-scope", 1, claims(scope=["orders:write"], scp="x")),
        ("nested-tenant", 0, claims(tenant_id=None, org={"id": 42}, nbf=NOW - 1)),
        ("aud-list", 2, claims(aud=["billing", AUDIENCE], exp=NOW + 86_400 * 2)),
        ("no-exp", 4, claims(exp=None)),
        ("fractional", 5, claims(exp=NOW + 0.5, iat=NOW - 0.25, sub=7)),
    ]:
        write("jwt_claims", name, bytes([shape, 0]) + header + b"\0" + json.dumps(body).encode())

    # jwks: flags (bit 0: HMAC allowed), then the document.
    write("jwks", "fixture", b"\x01" + json.dumps(jwks).encode())
    rsa = dict(jwks["keys"][0], alg="RS256", key_ops=["verify"])
    skipped = [dict(jwks["keys"][1], use="enc"), {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
               {"kty": "OKP", "crv": "X25519", "x": "AA"}, dict(jwks["keys"][2], alg="ECDH-ES")]
    write("jwks", "mixed", b"\x00" + json.dumps({"keys": [rsa] + skipped}).encode())
    write("jwks", "broken-ec", b"\x00" + json.dumps({"keys": [dict(jwks["keys"][1], x="AAAA")]}).encode())

    # jwt_host_verifier: alg, key index (fixture order), mode, message, signature, answer.
    algs = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA", "HS256"]
    for name, kid, alg, key_index, mode, answer in [
        ("es256-ring", "p256", "ES256", 1, 1, b""),
        ("es384-ring", "p384", "ES384", 2, 1, b""),
        ("rs256-ring", "rsa", "RS256", 0, 1, b""),
        ("es256-answer", "p256", "ES256", 1, 0, b"\x08\x01\x12\x03bad"),
    ]:
        token = keys.mint(kid, claims(), alg=alg)
        head, body, signature = token.split(".")
        message = f"{head}.{body}".encode()
        write("jwt_host_verifier", name,
              bytes([algs.index(alg), key_index, mode]) + chunk(message) + chunk(unb64(signature)) + answer)

    # jwt_extract: location kind, name or prefix, header value, path.
    token = tokens["hs512"][1]
    for name, kind, label, value, path in [
        ("bearer", 0, "", f"Bearer {token}", "/"),
        ("prefix", 1, "Token ", f"token {token} ", "/"),
        ("param", 2, "access_token", "", f"/a?x=1&access_token={token[:40]}%2E%zz+x#frag"),
        ("cookie", 3, "session", f'a=1; session="{token[:40]}"; b', "/"),
    ]:
        write("jwt_extract", name, bytes([kind]) + chunk(label) + chunk(value) + chunk(path))


def config_seeds() -> None:
    by_wasm = {"jwt.wasm": "config_jwt", "api-key.wasm": "config_api_key",
               "rate-limit.wasm": "config_rate_limit", "headers.wasm": "config_headers"}
    sections = {}
    for relative in ["envoy-config/gateway.yaml", "envoy-config/mesh/order-service.yaml",
                     "envoy-config/mesh/checkout-service.yaml"]:
        stem = Path(relative).stem
        for name, filename, config in shipped_plugin_configs(relative):
            target = by_wasm[Path(filename).name]
            write(target, f"{stem}-{name}", json.dumps(config, indent=1))
            if stem == "gateway":
                sections[target] = config
    for path in sorted((ROOT / "istio" / "wasmplugins").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "WasmPlugin":
                continue
            target = by_wasm[f"{path.stem}.wasm"]
            # Istio delivers numbers as doubles.
            text = json.dumps(doc["spec"]["pluginConfig"], indent=1)
            write(target, f"istio-{path.parent.name}-{path.stem}", text)
    combined = {"headers": sections["config_headers"], "jwt": sections["config_jwt"],
                "api_key": sections["config_api_key"], "rate_limit": sections["config_rate_limit"]}
    write("config_combined", "gateway-all", json.dumps(combined, indent=1))
    write("config_combined", "gateway-auth", json.dumps({"jwt": combined["jwt"], "api_key": combined["api_key"]}))


def hand_seeds() -> None:
    # header_template: the template, then :method, :path, :authority, x-user-id,
    # x-request-id, x-tenant-hint, x-old, then source.address, xds.route_name,
    # connection.uri_san_peer_certificate, a.b, request.id.
    request = [chunk(v) for v in ["GET", "/orders?a=1", "api.example.com", "spoofed", "req-1",
                                  "acme", "old"]]
    properties = [chunk(v) for v in ["10.0.0.1:5555", "orders", "spiffe://mesh/ns/a/sa/b", "x",
                                     "req-2"]]
    for name, template in [
        ("every-variable", "${header:x-tenant-hint} ${request_id} ${downstream_address} ${downstream_ip} "
                           "${route_name} ${peer_uri_san} ${method} ${path} ${authority} ${property:a.b} $$"),
        ("literal", "plain value"),
        ("unclosed", "${header:x"),
        ("lone-dollar", "a $ b"),
        ("ipv6", "${downstream_ip}"),
    ]:
        props = properties if name != "ipv6" else [chunk("[::1]:443")] + properties[1:]
        write("header_template", name, chunk(template) + b"".join(request + props))

    # api_key_credential: flags, min, max (u16), prefix count, prefixes, x-api-key,
    # authorization, path.
    good = "sk_live_abcdefghijklmnop"
    for name, flags, headers, path in [
        ("header", 1, [good, ""], "/"),
        ("bearer", 2, ["", f"Bearer {good}"], "/"),
        ("query", 4, ["", ""], f"/a?x=1&api_key={good}&api_key=2&y"),
        ("all", 7, ["bad key", f"bearer   {good}"], f"/a?api_key={good}"),
        ("jwt-left-alone", 6, ["", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"], "/b?q=1"),
    ]:
        data = bytes([flags, 20]) + struct.pack("<H", 64) + bytes([2]) + chunk("sk_live_") + chunk("sk_test_")
        write("api_key_credential", name, data + chunk(headers[0]) + chunk(headers[1]) + chunk(path))

    # api_key_record: mode (status 200/404/503/none; 4: a timestamp), then the body.
    record = {"key_id": "key_1", "tenant_id": "acme", "plan": "gold", "scopes": ["orders:read"],
              "status": "active", "expires_at": "2027-01-31T00:00:00Z"}
    write("api_key_record", "found", b"\x00" + json.dumps(record).encode())
    write("api_key_record", "revoked-offset",
          b"\x00" + json.dumps(dict(record, status="suspended", expires_at="2027-01-31T02:00:00.5+02:00")).encode())
    write("api_key_record", "not-found", b"\x01")
    write("api_key_record", "truncated", b"\x80" + json.dumps(record).encode())
    write("api_key_record", "timestamp-leap", b"\x04" + b"2016-12-31T23:59:60Z")
    write("api_key_record", "timestamp-offset", b"\x04" + b"9999-12-31T23:59:59-00:00")

    # api_key_cache: opcodes 0 begin, 1 complete, 2 fail, 3 usable (vm, key);
    # 4 time (u16 ms); 5 overwrite slot (slot, chunk); 6 CAS failures (count).
    def op(code, *operands):
        return bytes([code, *operands])
    tick = lambda ms: b"\x04" + struct.pack("<H", ms)  # noqa: E731
    write("api_key_cache", "lookup-then-fresh",
          op(0, 0, 1) + op(0, 1, 1) + op(1, 0, 1) + op(0, 1, 1) + tick(999) + op(0, 0, 1) + tick(2) + op(0, 1, 1))
    write("api_key_cache", "stale-if-error",
          op(0, 0, 2) + op(1, 0, 2) + tick(1500) + op(0, 0, 2) + op(2, 0, 2) + op(0, 1, 2) + op(3, 1, 2)
          + tick(3000) + op(3, 0, 2))
    write("api_key_cache", "collisions",
          b"".join(op(0, k % 2, k) + op(1, k % 2, k) for k in range(6)) + op(6, 3) + op(0, 0, 0) + op(1, 1, 3))
    write("api_key_cache", "junk-slot", op(0, 0, 4) + op(5, 1) + chunk(b'{"h":"00","a":{"t":1}}') + op(0, 1, 4))

    # rate_limit: setup, then 0 request (user, tenant, address; 255: address chunk),
    # 1 time (u16 ms), 2 CAS failures (count), 3 overwrite a key (key, chunk).
    def req(user, tenant=0, address=0):
        return bytes([0, user, tenant, address])
    later = lambda ms: b"\x01" + struct.pack("<H", ms)  # noqa: E731
    write("rate_limit", "burst-then-refill", b"\x00" + req(1) * 7 + later(400) + req(1) * 2 + later(1000) + req(1) * 4)
    write("rate_limit", "many-clients", b"\x00" + b"".join(req(u, 0, a) for u in range(5) for a in range(6)) + later(2000)
          + b"".join(req(u, 0, a) for a in range(6) for u in range(5)))
    write("rate_limit", "two-limits", b"\x01" + (req(1, 2) + later(30)) * 12 + req(0, 0, 3) * 3 + req(0, 0, 4))
    write("rate_limit", "cost-and-contention", b"\x02" + req(1) * 4 + b"\x02\x09" + req(1) + req(2) + later(500) + req(1) * 2)
    write("rate_limit", "odd-address", b"\x00" + bytes([0, 0, 0, 255]) + chunk("envoy://internal/") + req(0, 0, 5))
    write("rate_limit", "junk-slot", b"\x02" + req(1) + b"\x03\x00" + chunk(b"\x01" + b"\xff" * 40) + req(1) + req(3))


def main() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    with tempfile.TemporaryDirectory() as work:
        jwt_seeds(Path(work))
    config_seeds()
    hand_seeds()
    for directory in sorted(CORPUS.iterdir()):
        files = list(directory.iterdir())
        print(f"{directory.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
