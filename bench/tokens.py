"""Signing keys, their JWKS and JWTs, minted at bench time.

Nothing here is a fixture committed to the repository: every run makes fresh keys
(RSA-2048 for RS256, P-256 for ES256) and tokens that expire a few hours later, so
the benchmark never depends on a clock-sensitive file. The JWT scenarios use one
token (the cached hot path) or a list of distinct pre-minted tokens (the cold path:
wrk sends a different one on every request, see `load.Rotate`).
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.bench.wasmgate.invalid"
AUDIENCE = "wasmgate-bench"
# Tokens outlive any run: a full `make bench` takes well under an hour.
LIFETIME_SECONDS = 6 * 3600

_ALGORITHMS = {
    "rs256": ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
              jwt.algorithms.RSAAlgorithm),
    "es256": ("ES256", lambda: ec.generate_private_key(ec.SECP256R1()),
              jwt.algorithms.ECAlgorithm),
}


@dataclass
class SigningKey:
    """One private key, its public JWKS and the tokens minted with it."""

    alg: str  # "rs256" or "es256"
    kid: str
    private_key: object
    jwks: str  # the JWKS document (JSON text) holding the public key
    _token: str = field(default="", repr=False)
    _token_files: dict = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, alg: str) -> "SigningKey":
        jwt_alg, make_key, jwk_codec = _ALGORITHMS[alg]
        private_key = make_key()
        kid = f"bench-{alg}-{uuid.uuid4().hex[:8]}"
        public_jwk = json.loads(jwk_codec.to_jwk(private_key.public_key()))
        public_jwk.update({"kid": kid, "alg": jwt_alg, "use": "sig"})
        return cls(alg, kid, private_key, json.dumps({"keys": [public_jwk]}))

    def mint(self, subject: str, now: int = None) -> str:
        """A token the bench providers accept: issuer, audience, a subject, a tenant and
        scopes (what the gateway forwards), valid for `LIFETIME_SECONDS`."""
        now = int(time.time()) if now is None else now
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "tenant": "tenant-bench",
            "scope": "orders:read orders:write",
            "iat": now,
            "exp": now + LIFETIME_SECONDS,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.private_key, algorithm=_ALGORITHMS[self.alg][0],
                          headers={"kid": self.kid})

    @property
    def token(self) -> str:
        """One token, the same on every call (the cached hot path)."""
        if not self._token:
            self._token = self.mint("user-bench")
        return self._token

    def token_file(self, count: int, workdir: Path) -> Path:
        """`count` distinct tokens, one a line, written once per run and count."""
        if count not in self._token_files:
            path = Path(workdir) / f"tokens-{self.alg}-{count}.txt"
            now = int(time.time())
            path.write_text("".join(self.mint(f"user-{i}", now) + "\n" for i in range(count)))
            self._token_files[count] = path
        return self._token_files[count]
