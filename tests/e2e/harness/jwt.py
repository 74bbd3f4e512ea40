"""JWT test kit: keys generated at test time, tokens minted by independent libraries,
the JWKS fixture server (`wasmgate-demo jwks`) and Envoy configs with the JWT filter.

Keys live in a directory the test owns, one `<kid>.<ALG>.pem` (PKCS#8) file per key:
the fixture publishes their public halves, `wasmgate-demo token` (jwt-simple) and
PyJWT (here) sign with them. Nothing private is stored in the repository.
"""

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import jwt as pyjwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .bootstrap import bootstrap, cluster, http_listener, route
from .deployment import Deployment
from .paths import tool_path

ISSUER = "https://issuer.wasmgate.test"
AUDIENCE = "orders"
JWKS_PATH = "/.well-known/jwks.json"

def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class KeyDir:
    """A directory of signing keys, written as the JWKS fixture reads them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.keys = {}  # kid -> (alg, private key)

    def add(self, kid: str, alg: str, publish: bool = True):
        """Generates a key for `alg`; `publish=False` keeps it out of the JWKS (a key
        the gateway must not trust)."""
        if alg.startswith(("RS", "PS")):
            key = _rsa_key()
        elif alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            key = ec.generate_private_key(ec.SECP384R1())
        elif alg == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        self.keys[kid] = (alg, key)
        if publish:
            self.publish(kid)
        return key

    def publish(self, kid: str):
        """Writes the key file atomically (the fixture may be reading the directory)."""
        alg, key = self.keys[kid]
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        final = self.path / f"{kid}.{alg}.pem"
        temp = self.path / f".{kid}.tmp"
        temp.write_bytes(pem)
        temp.rename(final)

    def unpublish(self, kid: str):
        alg, _ = self.keys[kid]
        (self.path / f"{kid}.{alg}.pem").unlink(missing_ok=True)

    def mint(self, kid: str, claims: dict = None, headers: dict = None, alg: str = None,
             **overrides) -> str:
        """A token signed by PyJWT with key `kid`; claims default to a valid token."""
        key_alg, key = self.keys[kid]
        body = claims_for(**overrides) if claims is None else claims
        return pyjwt.encode(body, key, algorithm=alg or key_alg,
                            headers={"kid": kid, **(headers or {})})

    def public_pem(self, kid: str) -> bytes:
        _, key = self.keys[kid]
        return key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def claims_for(sub="alice", tenant="acme", scope="orders:read", aud=AUDIENCE, iss=ISSUER,
               lifetime=3600, **extra) -> dict:
    now = int(time.time())
    claims = {"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": now + lifetime}
    if tenant is not None:
        claims["tenant_id"] = tenant
    if scope is not None:
        claims["scope"] = scope
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def demo_token(keys: KeyDir, kid: str, *args) -> str:
    """A token minted by `wasmgate-demo token` (jwt-simple, Rust)."""
    result = subprocess.run(
        [tool_path("demo"), "token", "--keys", str(keys.path), "--kid", kid, "--iss", ISSUER,
         "--aud", AUDIENCE, *args],
        capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.strip()


class JwksFixture:
    """Steers a running `wasmgate-demo jwks` through its admin paths."""

    def __init__(self, service):
        self.service = service

    @property
    def host(self):
        return self.service.host

    @property
    def port(self):
        return self.service.port

    def stats(self) -> dict:
        with urllib.request.urlopen(self.service.url("/__jwks/stats"), timeout=5) as resp:
            return json.loads(resp.read())

    def requests(self) -> int:
        """JWKS requests received (answered or not)."""
        return self.stats()["requests"]

    def mode(self, **mode):
        """`status`, `delay_ms`, `down`, `cache_control`, `body`; unset fields reset."""
        self._post("/__jwks/mode", mode)

    def discovery_mode(self, **mode):
        """As `mode`, for the discovery document."""
        self._post("/__jwks/discovery", mode)

    def _post(self, path: str, mode: dict):
        req = urllib.request.Request(self.service.url(path), method="POST",
                                     data=json.dumps(mode).encode())
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200


def start_jwks(start_service, keys: KeyDir, *args: str, name: str = "jwks") -> JwksFixture:
    """`wasmgate-demo jwks`; `args` go to it (`--issuer`, `--jwks-uri`). With
    --mode-endpoint: tests steer the issuer through POST /__jwks/mode and
    /__jwks/discovery (`mode`, `discovery_mode`)."""
    service = start_service([tool_path("demo"), "jwks", "--keys", str(keys.path),
                             "--mode-endpoint", *args], name)
    return JwksFixture(service)


def remote_jwks(**overrides) -> dict:
    """A `jwks.remote` block pointing at the fixture (cluster `idp`)."""
    return {"remote": {"cluster": "idp", "path": JWKS_PATH, "authority": "idp.test", **overrides}}


def discovered_jwks(**overrides) -> dict:
    """A `jwks.remote` block that finds the JWKS through the fixture's discovery
    document (cluster `idp`, the document under ISSUER)."""
    return {"remote": {"cluster": "idp", "discovery": True, **overrides}}


def provider(jwks=None, **overrides) -> dict:
    return {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks or remote_jwks(), **overrides}


def plugin_config(providers=None, rules=None, default=None, **extra) -> dict:
    return {
        "providers": {"idp": provider()} if providers is None else providers,
        "rules": rules or [],
        "default": {"providers": ["idp"]} if default is None else default,
        **extra,
    }


def jwt_gateway(echo, config, jwks: JwksFixture = None, hcm_extra: dict = None,
                deployment: Deployment = Deployment("separate"), more_clusters=()) -> dict:
    """Envoy with the JWT filter (as `deployment` puts it) in front of the echo upstream;
    cluster `idp` reaches the JWKS fixture. Listener headers may be large (a 100 KiB
    token must reach the filter rather than be refused by Envoy's own 60 KiB limit)."""
    filters = deployment.filters(("jwt", config))
    clusters = [cluster("upstream", echo.host, echo.port)]
    if jwks is not None:
        clusters.append(cluster("idp", jwks.host, jwks.port))
    clusters.extend(more_clusters)
    return bootstrap(
        [http_listener("main", filters, [route("/", "upstream", name="default")],
                       hcm_extra={"max_request_headers_kb": 256, **(hcm_extra or {})})],
        clusters,
    )


def challenge(resp) -> str:
    return resp.headers.get("www-authenticate")


def call(envoy, token, timeout=20):
    """One request on a new connection (so requests spread over both workers)."""
    return requests.get(envoy.url("/orders"), headers={"authorization": f"Bearer {token}",
                                                        "connection": "close"}, timeout=timeout)


class Background:
    """A request sent from a thread, for requests that wait for keys."""

    def __init__(self, envoy, token, timeout=20):
        self.response = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(envoy, token, timeout), daemon=True)
        self.thread.start()

    def _run(self, envoy, token, timeout):
        try:
            self.response = call(envoy, token, timeout)
        except Exception as err:  # noqa: BLE001 - reported by result()
            self.error = err

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request never completed"
        assert self.error is None, self.error
        return self.response
