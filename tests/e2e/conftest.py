"""pytest fixtures for the end-to-end tests. See harness/__init__.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Envoy, Service, tool_path  # noqa: E402
from harness.certs import make_demo_certs  # noqa: E402
from harness.demo_gateway import DemoGateway  # noqa: E402
from harness.deployment import KINDS, Deployment  # noqa: E402
from harness.envoy import run_to_exit  # noqa: E402
from harness.keystore import hung_server, keystore, redis_server  # noqa: E402,F401 (fixtures)
from harness.mesh import Mesh  # noqa: E402
from harness.recording_store import recording_store  # noqa: E402,F401 (fixture)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


@pytest.fixture
def start_envoy(request, tmp_path):
    """`start_envoy(config, **kwargs) -> Envoy`, stopped after the test. When the test
    fails, every Envoy log it started is printed (pytest shows it with the failure)."""
    started = []

    def start(config, **kwargs):
        kwargs.setdefault("name", f"envoy{len(started)}")
        envoy = Envoy(config, tmp_path, **kwargs)
        started.append(envoy)
        return envoy.start()

    yield start
    for envoy in started:
        envoy.stop()
    if _failed(request):
        for envoy in started:
            print(f"\n===== {envoy.name} log ({envoy.log_file}) =====\n{envoy.log()[-30000:]}")


@pytest.fixture(params=KINDS)
def deployment(request):
    """`Deployment`: the test runs once with the separate filters and once with the
    combined module running them as stages (harness/deployment.py)."""
    return Deployment(request.param)


@pytest.fixture
def refused_envoy(tmp_path):
    """`refused_envoy(config) -> (returncode, log)` for configs Envoy must refuse."""

    def run(config):
        return run_to_exit(config, tmp_path)

    return run


@pytest.fixture
def start_service(request, tmp_path):
    """`start_service(argv, name) -> Service`, stopped after the test; logs printed on
    failure."""
    started = []

    def start(argv, name, **kwargs):
        service = Service(argv, name, tmp_path, **kwargs)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()
    if _failed(request):
        for service in started:
            print(f"\n===== {service.name} log =====\n{service.log()[-10000:]}")


@pytest.fixture
def echo(start_service):
    """An echo upstream (`wasmgate-demo echo`): answers with the request it received."""
    return start_service([tool_path("demo"), "echo", "--name", "echo"], "echo")


@pytest.fixture(scope="session")
def demo_certs(tmp_path_factory):
    """A directory of demo certificates (scripts/demo-certs.sh), made once per test
    worker: the gateway's TLS certificate and the mesh identities."""
    return make_demo_certs(tmp_path_factory.mktemp("certs") / "certs")


@pytest.fixture
def on_failure(request):
    """`on_failure(report)`: if the test fails, `report()` (text) is printed with it."""
    reports = []
    yield reports.append
    if _failed(request):
        for report in reports:
            print(report())


def _started(stack_class, tmp_path_factory, certs):
    stack = stack_class(tmp_path_factory.mktemp(stack_class.__name__.lower()), certs).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory, demo_certs):
    """The demo gateway (harness/demo_gateway.py), one per test module."""
    yield from _started(DemoGateway, tmp_path_factory, demo_certs)


@pytest.fixture
def gateway(shared_gateway, on_failure):
    """The module's demo gateway; its logs are printed when the test fails. For tests
    that only read: one that breaks something starts a `DemoGateway` of its own."""
    on_failure(shared_gateway.logs)
    return shared_gateway


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory, demo_certs):
    """The mesh of envoy-config/mesh/ (harness/mesh.py), one per test module."""
    yield from _started(Mesh, tmp_path_factory, demo_certs)


@pytest.fixture
def mesh(shared_mesh, on_failure):
    """The module's mesh; its logs are printed when the test fails."""
    on_failure(shared_mesh.logs)
    return shared_mesh


# Tests that load both CPUs on purpose (the bench smoke test pins Envoy and wrk to
# one core each). Run in parallel with the rest, they starve other tests' Envoys and
# fixtures past their health-check timeouts; `make e2e` runs them on their own after
# the parallel pass.
SERIAL_MODULES = {"test_bench_smoke.py", "test_bench_keystore.py", "test_keystore_image.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "serial: run alone, after the parallel tests (loads every CPU)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
