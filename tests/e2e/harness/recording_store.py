"""A key store for tests of the API-key filter under load: it serves the lookup contract
(docs/keystore.md, "The lookup contract") from a fixed set of keys, answers each lookup after a
delay, and records the most lookups it ever held at once.

It is the store's own count of what reached it, independent of the filter's metrics,
so a test can prove the filter's bound on lookups in flight from the outside. An
asyncio server in a thread of the test process: thousands of idle keep-alive
connections cost it nothing, and it never refuses a connection (what it records is
the filter's doing, not its own limits).

`misrouted = True` makes it answer every lookup like something that is not a key store
(a 404 with an HTML body), as a wrong `path_prefix` or an ingress's default backend
would.

Fixture (registered in conftest.py): `recording_store`.
"""

import asyncio
import hashlib
import json
import threading

import pytest


class RecordingStore:
    """`known`: {api key: record dict}. Lookups of other keys get the contract's 404."""

    def __init__(self, known: dict = None, delay: float = 0.0):
        self.known = {hashlib.sha256(key.encode()).hexdigest(): record
                      for key, record in (known or {}).items()}
        self.delay = delay
        self.misrouted = False
        self.host = "127.0.0.1"
        self.port = None
        self.lookups = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._writers = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self):
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, self.host, 0, backlog=1024), self._loop)
        self._server = future.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def add(self, key: str, record: dict):
        with self._lock:
            self.known[hashlib.sha256(key.encode()).hexdigest()] = record

    def counts(self) -> dict:
        with self._lock:
            return {"lookups": self.lookups, "in_flight": self.in_flight,
                    "max_in_flight": self.max_in_flight}

    def stop(self):
        async def close():
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            try:
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _connection(self, reader, writer):
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                with self._lock:
                    self.lookups += 1
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    status, body = self._answer(target)
                finally:
                    with self._lock:
                        self.in_flight -= 1
                writer.write(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                             % (status, b"text/html" if self.misrouted else b"application/json",
                                len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError,
                asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, target: str):
        if self.misrouted:
            return 404, b"<html><body><h1>404 Not Found</h1></body></html>"
        record = self.known.get(target.rsplit("/", 1)[-1])
        if record is None:
            return 404, json.dumps({"error": "not_found", "message": "no such key"}).encode()
        return 200, json.dumps(record).encode()


def record(tenant: str, key_id: str = None, plan: str = "gold", status: str = "active") -> dict:
    """A key record as the lookup contract writes it."""
    return {"key_id": key_id or f"key_{tenant}", "tenant_id": tenant, "plan": plan,
            "scopes": [], "status": status}


@pytest.fixture
def recording_store():
    """`recording_store(known={key: record}, delay=0.0) -> RecordingStore`, stopped
    after the test."""
    started = []

    def start(known=None, delay=0.0):
        store = RecordingStore(known, delay).start()
        started.append(store)
        return store

    yield start
    for store in started:
        store.stop()
