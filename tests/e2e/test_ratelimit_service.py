"""wasmgate-ratelimit itself (docs/ratelimit-service.md), in real processes on loopback:
replicas on one real redis-server, its own gRPC client for the calls. What stock Envoy
does with it: test_ratelimit_service_envoy.py.

Every load here is bounded in calls and time; counts are checked exactly, against the
answers, the service's metrics and the counters in Redis."""

import datetime
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import ROOT, tool_path, wait_for
from harness.ratelimit_service import (  # noqa: F401 (ratelimit_redis: a fixture)
    CertificateFiles, RedisTcp, ask, load, ratelimit_redis, replace_file, start_ratelimit,
)

LIMITS = """
domain: test
descriptors:
  - key: user
    rate_limit: {name: per-user, unit: hour, requests_per_unit: 300}
  - key: tenant
    rate_limit: {unit: hour, requests_per_unit: 500}
  - key: small
    rate_limit: {unit: hour, requests_per_unit: 3}
"""


@pytest.fixture
def limits_file(tmp_path) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(LIMITS)
    return path


def replicas(start_service, limits_file, store, count=2, extra=()):
    return [start_ratelimit(start_service, limits_file, store, name=f"ratelimit{i}", extra_args=extra)
            for i in range(count)]


def run_tool(*args, timeout=60):
    return subprocess.run([tool_path("ratelimit"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


# --- the command line --------------------------------------------------------------------


def test_check_accepts_the_shipped_limits(tmp_path):
    configmap = yaml.safe_load((ROOT / "istio/ratelimit-service/limits.yaml").read_text())
    for name, text in configmap["data"].items():
        assert name.endswith(".yaml")
        path = tmp_path / name
        path.write_text(text)
        result = run_tool("check", "--config", path)
        assert result.returncode == 0, result.stderr
    result = run_tool("check", "--config", ROOT / "envoy-config/ratelimit-limits.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok: 4 rules in 1 domains (edge)" in result.stdout


def test_check_refuses_a_bad_file_naming_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n"
                   "      requests_per_unit: 1\n")
    result = run_tool("check", "--config", bad)
    assert result.returncode == 1
    assert f"{bad}:5:" in result.stderr and "unknown rate_limit unit `fortnight`" in result.stderr


def test_serve_refuses_to_start_on_a_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: d\ndescriptors:\n  - key: a\n    rate_limits: {}\n")
    result = run_tool("serve", "--config", bad, "--listen", "127.0.0.1:0",
                      "--metrics-listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert f"{bad}:4:" in result.stderr and "rate_limits" in result.stderr


def test_help_explains_every_flag_and_its_environment_variable():
    text = run_tool("serve", "--help").stdout
    for flag, variable in [("--config", "CONFIG"), ("--listen", "LISTEN"),
                           ("--metrics-listen", "METRICS_LISTEN"), ("--store", "STORE"),
                           ("--redis-timeout", "REDIS_TIMEOUT"),
                           ("--response-headers", "RESPONSE_HEADERS"),
                           ("--shadow-mode", "SHADOW_MODE"), ("--lease-validity", "LEASE_VALIDITY"),
                           ("--lease-margin", "LEASE_MARGIN"),
                           ("--reload-interval", "RELOAD_INTERVAL"), ("--log-level", "LOG_LEVEL"),
                           ("--log-format", "LOG_FORMAT")]:
        assert flag in text and f"WASMGATE_RATELIMIT_{variable}" in text, flag


def test_flags_come_from_the_environment(start_service, limits_file, tmp_path):
    service = start_service(
        [tool_path("ratelimit"), "serve"], "ratelimit-env",
        env={"WASMGATE_RATELIMIT_CONFIG": str(limits_file),
             "WASMGATE_RATELIMIT_LISTEN": "127.0.0.1:0",
             "WASMGATE_RATELIMIT_METRICS_LISTEN": "127.0.0.1:0",
             "WASMGATE_RATELIMIT_RESPONSE_HEADERS": "true"})
    answer = ask(service.address, "test", "small=s")
    assert answer["headers"]["x-ratelimit-limit"] == "3, 3;w=3600"


# --- exact counting across replicas --------------------------------------------------------


def test_two_replicas_on_one_redis_admit_exactly_the_limit(start_service, limits_file, ratelimit_redis):
    services = replicas(start_service, limits_file, ratelimit_redis.url)
    counts = load([s.address for s in services], "test", "user=alice", requests=1200, concurrency=32)
    assert (counts["ok"], counts["over_limit"], counts["errors"]) == (300, 900, 0), counts
    assert list(ratelimit_redis.counters().values()) == [300]
    admitted = sum(s.metric("wasmgate_ratelimit_decisions_total", domain="test", code="ok")
                   for s in services)
    assert admitted == 300
    assert all(s.metric("wasmgate_ratelimit_decisions_total", code="ok") > 0 for s in services), \
        "both replicas answered"


def test_hits_statuses_and_headers_over_grpc(start_service, limits_file, ratelimit_redis):
    service = replicas(start_service, limits_file, ratelimit_redis.url, count=1,
                       extra=["--response-headers"])[0]
    answer = service.ask("test", "user=bob", "tenant=t", hits=7)
    assert answer["overall_code"] == "OK"
    user, tenant = answer["statuses"]
    assert user["limit"] == {"name": "per-user", "requests_per_unit": 300, "unit": 3}
    assert (user["remaining"], tenant["remaining"]) == (293, 493)
    assert 0 < user["reset_ms"] <= 3_600_000
    assert answer["headers"] == {
        "x-ratelimit-limit": '300, 300;w=3600;name="per-user", 500;w=3600',
        "x-ratelimit-remaining": "293",
        "x-ratelimit-reset": str(user["reset_ms"] // 1000),
    }
    refused = service.ask("test", "user=bob", "tenant=t", hits=294)
    assert refused["overall_code"] == "OVER_LIMIT"
    assert [s["code"] for s in refused["statuses"]] == ["OVER_LIMIT", "OK"]
    assert refused["statuses"][1]["remaining"] == 493, "a refused request counts nowhere"
    unknown = service.ask("nowhere", "user=bob")
    assert unknown["overall_code"] == "OK" and unknown["statuses"][0]["limit"] is None
    assert "InvalidArgument" in service.ask("", "user=bob")["error"]


def test_leases_across_replicas_never_grant_past_the_limit(start_service, limits_file, ratelimit_redis):
    services = replicas(start_service, limits_file, ratelimit_redis.url)
    counts = load([s.address for s in services], "test", "tenant=leased", mode="lease", want=7,
                  requests=400, concurrency=8)
    # Every holder spends each grant in full: the hits granted are the hits admitted.
    assert counts["granted"] == 500, counts
    assert counts["errors"] == 0 and counts["unknown"] == 0
    assert counts["ok"] < 100, "about one renewal per 7 hits"
    assert list(ratelimit_redis.counters().values()) == [500]
    assert all(not holds for holds in ratelimit_redis.holds().values()), "every lease settled"
    settled = sum(s.metric("wasmgate_ratelimit_lease_settled_hits_total", domain="test")
                  for s in services)
    assert settled == 500


def test_a_repeated_settlement_counts_once(start_service, limits_file, ratelimit_redis):
    service = replicas(start_service, limits_file, ratelimit_redis.url, count=1)[0]
    grant = service.ask("test", "small=x", want=3)["grants"][0]
    assert (grant["code"], grant["granted"], grant["remaining"]) == ("OK", 3, 0)
    assert 0 < grant["valid_for_ms"] <= 10_000
    for _ in range(2):
        again = service.ask("test", "small=x", want=0, lease=grant["lease_id"], used=2)["grants"][0]
        assert again["code"] == "OK"
    assert list(ratelimit_redis.counters().values()) == [2]
    assert service.metric("wasmgate_ratelimit_lease_unknown_total", domain="test") == 1
    assert service.ask("test", "small=x", want=5)["grants"][0]["granted"] == 1


# --- faults ------------------------------------------------------------------------------


def test_redis_stopped_refused_then_counting_resumes(start_service, limits_file, ratelimit_redis):
    service = replicas(start_service, limits_file, ratelimit_redis.url, count=1,
                       extra=["--redis-timeout", "300ms"])[0]
    assert service.ask("test", "small=r")["overall_code"] == "OK"
    ratelimit_redis.stop()
    started = time.monotonic()
    down = service.ask("test", "small=r")
    assert "Unavailable" in down["error"], down
    assert time.monotonic() - started < 5
    lease = service.ask("test", "small=r", want=1)["grants"][0]
    assert lease["code"] == "UNKNOWN"
    assert service.metric("wasmgate_ratelimit_store_errors_total") >= 2
    assert service.alive()
    ratelimit_redis.start()
    # A new Redis (no persistence): counting starts again, exactly.
    wait_for(lambda: service.ask("test", "small=r").get("overall_code") == "OK", 15,
             "the service to reconnect to Redis")
    assert [service.ask("test", "small=r")["overall_code"] for _ in range(3)] == ["OK", "OK", "OVER_LIMIT"]
    assert list(ratelimit_redis.counters().values()) == [3]


def test_redis_frozen_times_out_then_counting_resumes_without_double_counting(
        start_service, limits_file, ratelimit_redis):
    service = replicas(start_service, limits_file, ratelimit_redis.url, count=1,
                       extra=["--redis-timeout", "200ms"])[0]
    assert service.ask("test", "user=f")["overall_code"] == "OK"
    ratelimit_redis.freeze()
    try:
        started = time.monotonic()
        frozen = [service.ask("test", "user=f", timeout="5s") for _ in range(3)]
        took = time.monotonic() - started
    finally:
        ratelimit_redis.thaw()
    assert all("Unavailable" in answer.get("error", "") for answer in frozen), frozen
    assert took < 10
    assert service.metric("wasmgate_ratelimit_store_errors_total", kind="timeout") >= 1
    wait_for(lambda: service.ask("test", "user=f").get("overall_code") == "OK", 15,
             "answers again after SIGCONT")
    oks = 1 + 1
    for _ in range(5):
        assert service.ask("test", "user=f")["overall_code"] == "OK"
        oks += 1
    # The calls that timed out were queued in Redis and may have run when it woke up:
    # counted, never more than once each.
    counted = list(ratelimit_redis.counters().values())[0]
    assert oks <= counted <= oks + len(frozen), (oks, counted)


def test_a_killed_replica_leaves_the_other_counting_exactly(start_service, limits_file, ratelimit_redis):
    first, second = replicas(start_service, limits_file, ratelimit_redis.url)
    counts = load([first.address, second.address], "test", "user=k", requests=200, concurrency=8)
    assert counts["ok"] == 200
    second.kill()
    assert first.alive()
    rest = load([first.address], "test", "user=k", requests=200, concurrency=8)
    assert (rest["ok"], rest["over_limit"]) == (100, 100)
    assert list(ratelimit_redis.counters().values()) == [300]


# --- configuration reloads -------------------------------------------------------------------


def test_a_bad_new_file_is_refused_and_the_old_limits_keep_serving(start_service, limits_file):
    service = start_ratelimit(start_service, limits_file)
    assert service.ask("test", "small=c")["statuses"][0]["remaining"] == 2
    replace_file(limits_file, LIMITS.replace("requests_per_unit: 3}", "requests_per_unit: three}"))
    wait_for(lambda: service.metric("wasmgate_ratelimit_config_reloads_total", result="error") >= 1, 10,
             "the bad file to be refused")
    log = service.log()
    assert "limits.yaml:9:" in log and "requests_per_unit must be a whole number" in log, log
    assert "previous limits stay in force" in log
    assert [service.ask("test", "small=c")["overall_code"] for _ in range(3)] == ["OK", "OK", "OVER_LIMIT"]
    replace_file(limits_file, LIMITS.replace("requests_per_unit: 3}", "requests_per_unit: 5}"))
    wait_for(lambda: service.metric("wasmgate_ratelimit_config_reloads_total", result="ok") >= 2, 10,
             "the good file to be loaded")
    answer = service.ask("test", "small=c")
    assert answer["overall_code"] == "OK", "the counter carried on: 3 used of 5"
    assert answer["statuses"][0]["limit"]["requests_per_unit"] == 5
    assert answer["statuses"][0]["remaining"] == 1


def test_sigterm_drains_and_exits_cleanly(start_service, limits_file):
    service = start_ratelimit(start_service, limits_file)
    assert service.ask("test", "small=t")["overall_code"] == "OK"
    service.service.proc.send_signal(signal.SIGTERM)
    assert service.service.proc.wait(timeout=15) == 0
    assert "SIGTERM: draining" in service.log() and "stopped" in service.log()


# --- Redis over TLS ------------------------------------------------------------------------


def _tls_files(directory: Path) -> CertificateFiles:
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def certificate(subject, issuer, public_key, signer, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(validity[0]).not_valid_after(validity[1]))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasmgate test redis CA")])
    ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key,
                     [(x509.BasicConstraints(ca=True, path_length=None), True)])
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name,
        key.public_key(), ca_key,
        [(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)])
    files = CertificateFiles(cert=directory / "redis.crt", key=directory / "redis.key",
                             ca=directory / "ca.crt")
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


def test_rediss_verifies_the_server_and_counts(start_service, limits_file, tmp_path):
    files = _tls_files(tmp_path)
    redis_tls = RedisTcp(tmp_path, "redis-tls", tls=files).start()
    try:
        assert redis_tls.url.startswith("rediss://")
        trusted = start_ratelimit(start_service, limits_file, redis_tls.url, name="ratelimit-tls",
                                  env={"SSL_CERT_FILE": str(files.ca)})
        assert [trusted.ask("test", "small=tls")["overall_code"] for _ in range(4)] == \
            ["OK", "OK", "OK", "OVER_LIMIT"]
        assert list(redis_tls.counters().values()) == [3]
        # Without the CA, the server's certificate is not trusted: no counting over TLS
        # to an unverified Redis.
        untrusted = start_ratelimit(start_service, limits_file, redis_tls.url,
                                    name="ratelimit-untrusted",
                                    env={"SSL_CERT_FILE": str(tmp_path / "no-such-ca.pem")})
        assert "Unavailable" in untrusted.ask("test", "small=tls2").get("error", "")
    finally:
        redis_tls.stop()
