"""The key store (`wasmgate-keystore`) on its own: the lookup contract the API-key
filter relies on, over a real redis-server and over the file backend, and its CLI."""

import hashlib
import re

import pytest
import requests

from harness.keystore import start_keystore

KEY_FORMAT = re.compile(r"^sk_(live|test)_[A-Za-z0-9_-]{43}$")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(params=["redis", "file"])
def any_store(request, start_service, tmp_path):
    """The key store on each backend; yields (KeyStore, a function returning every
    byte the backend holds)."""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        client = server.client()

        def stored_bytes():
            # Values read by type (DUMP's serialization may compress them).
            def value(key):
                kind = client.type(key)
                if kind == b"set":
                    return b" ".join(client.smembers(key))
                if kind == b"zset":
                    return b" ".join(member + b"=" + str(score).encode()
                                     for member, score in client.zrange(key, 0, -1, withscores=True))
                return client.get(key) or b""
            return b"\n".join(key + b"=" + value(key) for key in client.keys("*"))

        yield start_keystore(start_service, server.url), stored_bytes
    else:
        path = tmp_path / "keys.json"
        yield (start_keystore(start_service, f"file:{path}"),
               lambda: b"".join(p.read_bytes() for p in tmp_path.glob("keys.json*")))


def test_lookup_contract(any_store):
    store, stored_bytes = any_store
    created = store.create("acme", "gold", "--scope", "orders:read", "--scope", "orders:write",
                           "--expires-at", "2099-01-31T00:00:00Z")
    assert KEY_FORMAT.match(created.api_key), created.api_key
    url = lambda path: store.service.url(path)  # noqa: E731

    found = requests.get(url(f"/v1/keys/{sha256(created.api_key)}"))
    assert found.status_code == 200
    assert found.headers["content-type"] == "application/json"
    assert found.json() == {
        "key_id": created.key_id, "tenant_id": "acme", "plan": "gold",
        "scopes": ["orders:read", "orders:write"], "status": "active",
        "expires_at": "2099-01-31T00:00:00Z",
    }
    # Upper-case hex is the same hash.
    assert requests.get(url(f"/v1/keys/{sha256(created.api_key).upper()}")).status_code == 200
    assert requests.get(url(f"/v1/keys/{sha256('sk_live_nobody')}")).status_code == 404
    for bad in ["abc", sha256("x")[:63], sha256("x") + "0", "z" * 64, ""]:
        assert requests.get(url(f"/v1/keys/{bad}")).status_code == 400, bad

    store.revoke(created.key_id)
    revoked = requests.get(url(f"/v1/keys/{sha256(created.api_key)}")).json()
    assert revoked["status"] == "revoked"

    assert store.stats() == {"lookups": 9, "found": 3, "not_found": 1, "bad_request": 5,
                             "unavailable": 0}
    # Only hashes and metadata are stored; the listing shows metadata and last use.
    assert created.api_key.encode() not in stored_bytes()
    assert created.api_key[8:].encode() not in stored_bytes()
    [listed] = store.list()
    assert listed["key_id"] == created.key_id
    assert listed["status"] == "revoked"
    assert listed["last_used_at"] is not None
    assert created.api_key not in store.cli("keys", "list").stdout


def test_keys_created_while_serving_are_found_at_once(any_store):
    store, _ = any_store
    for tenant in ("one", "two", "three"):
        key = store.create(tenant, None, "--test")
        assert key.api_key.startswith("sk_test_")
        answer = requests.get(store.service.url(f"/v1/keys/{sha256(key.api_key)}"))
        assert answer.status_code == 200 and answer.json()["tenant_id"] == tenant
        assert "plan" not in answer.json()


def test_cli_refusals(any_store):
    store, _ = any_store
    assert store.cli("keys", "revoke", "key_nope", check=False).returncode != 0
    bad_tenant = store.cli("keys", "create", "--tenant", "a\tb\nc", check=False)
    assert bad_tenant.returncode != 0 and "tenant_id" in bad_tenant.stderr
    short_pepper = store.cli("keys", "create", "--tenant", "a", "--pepper-env", "P",
                             env={"P": "short"}, check=False)
    assert short_pepper.returncode != 0 and "at least 16 bytes" in short_pepper.stderr
    assert store.list() == []


def test_redis_down_answers_503(keystore, redis_server):
    created = keystore.create("acme", "gold")
    path = f"/v1/keys/{sha256(created.api_key)}"
    assert requests.get(keystore.service.url(path)).status_code == 200
    redis_server.stop()
    answer = requests.get(keystore.service.url(path), timeout=10)
    assert answer.status_code == 503
    assert requests.get(keystore.service.url("/__keystore/health"), timeout=10).status_code == 503
    assert keystore.stats()["unavailable"] == 1
