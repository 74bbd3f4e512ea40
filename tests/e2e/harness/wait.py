"""Polling with a deadline: the harness never sleeps a fixed time and hopes."""

import time


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    """Calls `predicate` until it returns a truthy value, which is returned.

    Raises TimeoutError naming `what` when `timeout` seconds pass first. Exceptions
    from the predicate count as "not yet" and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - reported below
            last_error = err
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)
