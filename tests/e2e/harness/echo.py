"""Reading what the echo upstream (`wasmgate-demo echo`) says it received."""

import json


class Seen:
    """The request as the upstream received it."""

    def __init__(self, response):
        assert response.headers.get("content-type") == "application/json", (
            f"not an echo answer: {response.status_code} {response.text[:500]}")
        self.raw = json.loads(response.text)
        self.method = self.raw["method"]
        self.path = self.raw["path"]
        self.query = self.raw["query"]
        self.service = self.raw["service"]
        # Which instance of the service answered (`--instance`; the service name if unset).
        self.instance = self.raw.get("instance", self.service)
        self.body = self.raw["body"]
        self.headers = self.raw["headers"]

    def header(self, name: str):
        """The single value of `name`, or None; fails if it was sent more than once."""
        values = self.headers.get(name.lower(), [])
        assert len(values) <= 1, f"{name} arrived {len(values)} times: {values}"
        return values[0] if values else None

    def values(self, name: str) -> list:
        """Every value of `name`, in order (a header may arrive as several lines)."""
        return self.headers.get(name.lower(), [])

    def __repr__(self):
        return f"Seen({self.raw!r})"
