"""Where the JWT filter checks signatures, in real Envoy (two workers): RS256/384/512
and ES256/384 by Envoy's own BoringSSL through the `verify_signature` foreign
function, PS256 and EdDSA inside the VM, and everything inside the VM when Envoy
withholds foreign functions (`capability_restriction_config`). Either way the same
tokens pass and the same forgeries fail."""

import base64

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                             encode_dss_signature)

from harness.jwt import KeyDir, challenge, jwt_gateway, plugin_config, start_jwks
from harness.paths import wasm_path

CHECKED_BY_ENVOY = "wasmgate_jwt_signatures_checked_by_envoy_total"
BAD_SIGNATURE = ('Bearer realm="wasmgate", error="invalid_token", '
                 'error_description="signature does not verify"')

# Group orders (SEC 2 §2.4.2, §2.5.1): the largest valid r or s is one less.
ORDERS = {
    "ES256": int("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16),
    "ES384": int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                 "581a0db248b0a77aecec196accc52973", 16),
}
SIZES = {"ES256": 32, "ES384": 48}
# kid -> alg; Envoy checks the first five.
ALGS = {"rs256": "RS256", "rs384": "RS384", "rs512": "RS512", "es256": "ES256",
        "es384": "ES384", "ps256": "PS256", "ed": "EdDSA"}
BY_ENVOY = {"RS256", "RS384", "RS512", "ES256", "ES384"}


@pytest.fixture
def keys(tmp_path):
    keys = KeyDir(tmp_path / "keys")
    for kid, alg in ALGS.items():
        keys.add(kid, alg)
        keys.add(f"rogue-{kid}", alg, publish=False)
    return keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _with_signature(token: str, signature: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + _b64(signature)


def _ecdsa_variants(alg: str, token: str) -> tuple:
    """(the high-s twin every ECDSA signature has: valid too; signatures with r = 0,
    s = n, and a flipped bit: all invalid)."""
    size, order = SIZES[alg], ORDERS[alg]
    raw = _unb64(token.rsplit(".", 1)[1])
    r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
    fixed = lambda r, s: r.to_bytes(size, "big") + s.to_bytes(size, "big")  # noqa: E731
    # The DER forms round-trip through `cryptography`: r and s are what we think.
    assert decode_dss_signature(encode_dss_signature(r, s)) == (r, s)
    flipped = bytearray(raw)
    flipped[size // 2] ^= 0x10
    return (_with_signature(token, fixed(r, order - s)),
            [_with_signature(token, fixed(0, s)), _with_signature(token, fixed(r, order)),
             _with_signature(token, bytes(flipped))])


def _status(envoy, token) -> requests.Response:
    return requests.get(envoy.url("/orders/1"), headers={"authorization": f"Bearer {token}"},
                        timeout=15)


def _check_every_algorithm(envoy, keys) -> int:
    """Valid tokens pass, forged ones get 401 "signature does not verify". Returns how
    many signatures a host that checks RS*/ES* would have checked."""
    host_checks = 0
    for kid, alg in ALGS.items():
        good = keys.mint(kid, sub=f"user-{kid}")
        forged = keys.mint(f"rogue-{kid}", headers={"kid": kid}, sub=f"forged-{kid}")
        sig = _unb64(good.rsplit(".", 1)[1])
        tampered = _with_signature(good, bytes([sig[0] ^ 1]) + sig[1:])
        valid, invalid = [good], [forged, tampered]
        if alg in SIZES:
            twin, broken = _ecdsa_variants(alg, keys.mint(kid, sub=f"twin-{kid}"))
            valid.append(twin)
            invalid.extend(broken)
        for token in valid:
            resp = _status(envoy, token)
            assert resp.status_code == 200, (alg, resp.status_code, resp.text)
        for token in invalid:
            resp = _status(envoy, token)
            assert resp.status_code == 401, (alg, resp.status_code, resp.text)
            assert challenge(resp) == BAD_SIGNATURE, alg
        if alg in BY_ENVOY:
            host_checks += len(valid) + len(invalid)
    return host_checks


def test_envoy_checks_rsa_and_ecdsa_signatures_and_the_vm_the_rest(start_envoy, start_service,
                                                                    echo, keys):
    jwks = start_jwks(start_service, keys)
    envoy = start_envoy(jwt_gateway(echo, plugin_config(), jwks))
    host_checks = _check_every_algorithm(envoy, keys)
    # Every RS*/ES* signature (each token new, so none came from the token cache) went
    # to Envoy; PS256 and EdDSA ones did not.
    assert envoy.metric(CHECKED_BY_ENVOY) == host_checks
    assert "does not check signatures" not in envoy.log()


def _wasm_names(path: str) -> tuple:
    """The module's imports (field names) and exports, read from the binary."""
    data = open(path, "rb").read()

    def leb(at):
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, at

    def name(at):
        size, at = leb(at)
        return data[at:at + size].decode(), at + size

    imports, exports, at = [], [], 8
    while at < len(data):
        section = data[at]
        size, body = leb(at + 1)
        at = body + size
        if section not in (2, 7):
            continue
        count, pos = leb(body)
        for _ in range(count):
            if section == 2:
                _, pos = name(pos)
                field, pos = name(pos)
                kind = data[pos]
                pos += 1
                # func: type index; table: reftype + limits; memory: limits; global: type + mut.
                if kind == 0:
                    _, pos = leb(pos)
                elif kind == 1:
                    flags = data[pos + 1]
                    _, pos = leb(pos + 2)
                    if flags & 1:
                        _, pos = leb(pos)
                elif kind == 2:
                    flags = data[pos]
                    _, pos = leb(pos + 1)
                    if flags & 1:
                        _, pos = leb(pos)
                else:
                    pos += 2
                imports.append(field)
            else:
                field, pos = name(pos)
                _, pos = leb(pos + 1)
                exports.append(field)
    return imports, exports


def test_without_foreign_functions_signatures_are_checked_in_the_vm(start_envoy, start_service,
                                                                     echo, keys):
    """Envoy told to withhold `proxy_call_foreign_function` (and to allow everything
    else the module uses): the filter notices once per VM and verifies in the VM."""
    imports, exports = _wasm_names(wasm_path("jwt"))
    assert "proxy_call_foreign_function" in imports
    # Host functions (proxy_* and WASI) and the proxy_on_* callbacks are capabilities.
    names = set(imports) | {name for name in exports if name.startswith("proxy_")}
    allowed = {name: {} for name in sorted(names - {"proxy_call_foreign_function"})}
    jwks = start_jwks(start_service, keys)
    config = jwt_gateway(echo, plugin_config(), jwks)
    wasm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"][0]["typed_config"]["config"]
    wasm["capability_restriction_config"] = {"allowed_capabilities": allowed}
    envoy = start_envoy(config)

    _check_every_algorithm(envoy, keys)
    assert envoy.metric(CHECKED_BY_ENVOY) == 0
    log = envoy.log()
    assert "the host does not check signatures" in log
    # Envoy logs each refused call; the filter stopped asking after the first one in
    # each VM (two workers), well before the dozens of signatures checked above.
    refused = log.count("restricted proxy-wasm capability: proxy_call_foreign_function")
    assert 1 <= refused <= 2, refused
