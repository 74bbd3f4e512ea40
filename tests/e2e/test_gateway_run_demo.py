"""`make run` as a new user meets it: scripts/run-demo.sh starts the demo, prints a
walk-through, and every command of the walk-through does what its step says. Then
Ctrl-C stops everything the script started.

The script runs on ports chosen here (its environment variables), so it can run beside
other tests; the commands are run exactly as printed.
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading

import pytest

from harness import ROOT, wait_for
from harness.ports import free_ports
from harness.process import spawn, stop_process

ENVIRONMENT_PORTS = ["WASMGATE_HTTP_PORT", "WASMGATE_HTTPS_PORT", "WASMGATE_ADMIN_PORT",
                     "WASMGATE_STATS_PORT",
                     "WASMGATE_OTLP_PORT", "WASMGATE_PORT_USERS_A", "WASMGATE_PORT_USERS_B",
                     "WASMGATE_PORT_ORDERS_V1", "WASMGATE_PORT_ORDERS_V2", "WASMGATE_PORT_PRODUCTS",
                     "WASMGATE_PORT_JWKS", "WASMGATE_PORT_KEYSTORE", "WASMGATE_PROMETHEUS_PORT"]
JWT = re.compile(r"^eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+$")


def instance_counts(out):
    return {name: int(count) for count, name in re.findall(r'(\d+) "instance":"([^"]+)"', out)}


def access_log_lines(out):
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    # The last requests were the partner's: their lines carry the key's identity.
    return entries and all("request_id" in e and "status" in e and "latency_ms" in e
                           and e["tenant"] == "acme" and e["api_key_id"] for e in entries)


def answers(out):
    """The HTTP responses of `curl -i` output: [(status, lower-case header text, body)]."""
    found = []
    # Bodies do not end with a newline: the next answer starts right after one.
    for part in re.split(r"(?=HTTP/1\.1 \d{3} )", out):
        if part.startswith("HTTP/1.1 "):
            head, _, body = part.partition("\n\n")  # text mode: CRLF reads as LF
            found.append((int(head.split()[1]), head.lower(), body))
    return found


def partner_answers(out):
    statuses = [s for s, _, _ in answers(out)]
    (_, unkeyed, _), (_, keyed, body) = answers(out)
    return (statuses == [401, 200] and "www-authenticate: apikey" in unkeyed
            and '"x-tenant-id":["acme"]' in body and '"x-plan":["gold"]' in body
            and '"x-api-key-id":["key_' in body and '"x-api-key"' not in body)


def versions_by_header(out):
    """v1 by X-API-Version (the path the service saw, deprecated), v2 by Accept, 406."""
    statuses = [s for s, _, _ in answers(out)]
    (_, v1_head, bodies), (_, _, unknown) = answers(out)  # the v2 answer follows v1's body
    v1, v2 = re.findall(r'"path":"([^"]*)"', bodies)
    return (statuses == [200, 406] and (v1, v2) == ("/api/v1/users/42", "/api/v2/users/42")
            and "deprecation: @" in v1_head and "vary: x-api-version, accept" in v1_head
            and '"error":"unsupported_api_version"' in unknown)


def ab_pinned(out):
    return [line.strip() for line in out.splitlines() if line.strip()] == [
        '10 "instance":"orders-v2"', '10 "instance":"orders-v1"']


def least_request(out):
    counts = instance_counts(out)
    # Round robin would give users-b 50; least request about 25. Reaching 50 anyway
    # would take a coin that comes up one time in four to come up 50 times in 100.
    return sum(counts.values()) == 100 and counts.get("users-a", 0) > counts.get("users-b", 0)


def mobile_host(out):
    refused, _, rest = out.partition("\n")
    (status, head, body), = answers(rest)
    return (refused == "401" and status == 200 and "content-encoding: gzip" in head
            and "cache-control: private, no-cache" in head and "x-ratelimit-limit: 300" in head
            and '"x-client-type":["mobile"]' in body and '"x-user-id":["alice"]' in body)


def partner_host(out):
    refused, _, rest = out.partition("\n")
    (status, head, body), = answers(rest)
    return (refused == "401" and status == 200 and '"instance":"orders-v1"' in body
            and '"x-client-type":["partner"]' in body and "x-ratelimit-limit: 120" in head)


def limited(out):
    codes = out.splitlines()[0].split()
    (status, head, body), = answers(out)
    return (codes[:9] == ["200"] * 9 and set(codes[9:]) == {"429"}
            and status == 429 and "retry-after: " in head and "x-ratelimit-remaining: 0" in head
            and 'ratelimit-policy: "per-minute";q=10;w=60' in head
            and '"status":429' in body)


# A phrase of each step's title → what the output of its commands must show. A step
# with no check here fails the test: a walk-through step nobody verified may be wrong.
STEP_CHECKS = {
    "Mint a demo token": lambda out: bool(JWT.match(out.strip())),
    "Without a token, or with an expired one": lambda out: (
        [s for s, _, _ in answers(out)] == [401, 401]
        and 'www-authenticate: bearer realm="wasmgate"\n' in answers(out)[0][1]
        and 'error="invalid_token", error_description="token expired"' in answers(out)[1][1]),
    "A route to the users service": lambda out: (
        "HTTP/1.1 200" in out and "deprecation: @" in out and "sunset: " in out
        and '"x-gateway":["wasmgate"]' in out and '"x-user-id":["alice"]' in out
        and '"x-tenant-id":["acme"]' in out and "admin" not in out
        and '"authorization"' not in out),
    "The same on v2": lambda out: "HTTP/1.1 200" in out and "deprecation" not in out.lower(),
    "Versions by header": versions_by_header,
    "HTTPS with the demo certificate": lambda out: '"x-forwarded-proto":["https"]' in out,
    "Scopes": lambda out: (
        out.startswith("HTTP/1.1 403") and 'error="insufficient_scope"' in out
        and 'scope="orders:write"' in out),
    "Canary": lambda out: (
        sum(instance_counts(out).values()) == 100
        and 1 <= instance_counts(out).get("orders-v2", 0) <= 30),
    "A/B": ab_pinned,
    "Load balancing, least request": least_request,
    "Retry": lambda out: out.startswith("200") and "upstream_rq_retry_success: 1" in out,
    "Timeout": lambda out: out.startswith("504 "),
    "Outlier detection": lambda out: (
        "200 " * 40 in out and "ejections_active: 1" in out
        and int(re.search(r"retry\.upstream_rq_500: (\d+)", out).group(1)) >= 5),
    # Off by default: no span of Envoy's own, the client's traceparent as it came.
    "Tracing is off": lambda out: out.strip() == (
        '"traceparent":["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]'),
    "Backends for frontends": mobile_host,
    "The partner host": partner_host,
    "Create an API key": lambda out: (
        re.search(r"^api_key +sk_live_[\w-]{43}$", out, re.M) is not None
        and re.search(r"^key_\w+ +acme +gold +active", out, re.M) is not None),
    "The partner route takes API keys": partner_answers,
    "Rate limit": limited,
    "The access log": access_log_lines,
    "Metrics in Prometheus format": lambda out: all(
        f"wasmgate_{name} " in out for name in (
            "headers_requests_total{}", "jwt_allowed_total{}",
            'jwt_denied_total{reason="missing_token"}', 'jwt_denied_total{reason="expired"}',
            "api_key_allowed_total{}", "rate_limit_allowed_total{}", "rate_limit_limited_total{}")),
    "Prometheus scrapes the gateway": lambda out: (
        out.splitlines()[0] == '"health":"up"'
        and {line.split('"')[3] for line in out.splitlines()[1:]}
        >= {"missing_token", "expired", "insufficient_scope"}),
}
# Steps whose output may lag: the access log is written once a second, Prometheus
# scrapes every 5 s.
RETRIED = ("The access log", "Prometheus scrapes the gateway")


def run_commands(commands):
    """Runs a step's commands as printed, from the repository root; their output."""
    out = ""
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        out += result.stdout
    return out


def walk_through_steps(text):
    """[(title, [commands])] from the script's output."""
    steps = []
    for block in re.split(r"\n(?=\[\d+\] )", text)[1:]:
        lines = block.splitlines()
        title = re.sub(r"^\[\d+\] ", "", lines[0])
        steps.append((title, [line[4:] for line in lines[1:] if line.startswith("    ")]))
    return steps


def test_make_run_walk_through_works_and_ctrl_c_stops_everything(tmp_path):
    ports = dict(zip(ENVIRONMENT_PORTS, free_ports(len(ENVIRONMENT_PORTS))))
    env = {**{k: str(v) for k, v in ports.items()},
           "WASMGATE_RUN_DIR": str(tmp_path / "run"), "WASMGATE_CERTS_DIR": str(tmp_path / "certs")}
    output = []
    proc = spawn([ROOT / "scripts" / "run-demo.sh"], tmp_path / "run-demo.log", env=env,
                 stdout=subprocess.PIPE)

    def read():
        for raw in proc.stdout:
            output.append(raw.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: "Ctrl-C stops everything" in "".join(output) or proc.poll() is not None,
                 90, "the walk-through")
        text = "".join(output)
        assert proc.poll() is None, f"run-demo.sh exited:\n{text}\n{(tmp_path / 'run-demo.log').read_text()}"

        steps = walk_through_steps(text)
        assert len(steps) >= len(STEP_CHECKS)
        for title, commands in steps:
            check = next((c for phrase, c in STEP_CHECKS.items() if title.startswith(phrase)), None)
            assert check is not None, f"no check for the walk-through step {title!r}"
            out = run_commands(commands)
            if title.startswith(RETRIED) and not check(out):
                out = wait_for(lambda: (lambda o: o if check(o) else None)(run_commands(commands)),
                               15, f"the output of {title!r}")
            assert check(out), f"step {title!r} printed:\n{out}"

        # Tracing is off: Envoy never tried to export a span (it would log an error
        # each time, with no collector).
        envoy_log = (tmp_path / "run" / "envoy.log").read_text(errors="replace")
        assert "][tracing]" not in envoy_log and "OTLP" not in envoy_log

        # Ctrl-C (SIGINT to the foreground process group) stops the script and
        # everything it started: nothing keeps a port.
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
        for name, port in ports.items():
            if name != "WASMGATE_OTLP_PORT":
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except BaseException:
        print("".join(output))
        for log in sorted((tmp_path / "run").glob("*.log")):
            print(f"===== {log.name} =====\n{log.read_text(errors='replace')[-5000:]}")
        raise
    finally:
        stop_process(proc)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the script left behind
        except ProcessLookupError:
            pass
