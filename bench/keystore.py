"""The key store's own measurement (scenario `keystore`): lookups per second, p99 and
CPU per lookup of `wasmgate-keystore serve` on Redis, against the server it replaced
(the thread-per-connection `crates/fixture-http` one, at main 2ad4e41), in the same run
on the same machine, and the Redis commands each lookup costs.

No Envoy is involved: wrk sends the filter's request (`GET /v1/keys/<hash>`) straight
to one key store replica. Both servers are built with the same optimization settings
(the workspace's `service` profile; the old commit, which has no such profile, gets it
through CARGO_PROFILE_RELEASE_* variables), run on the measured CPU, and read the same
keys from one redis-server (TCP on 127.0.0.1) on the load CPU with wrk. Two loads:
`found` cycles through keys that exist (200), `unknown` through hashes that do not
(404). Rounds alternate the servers' order. Redis commands come from its own
`INFO stats` (`total_commands_processed`, less the INFO calls); neither server
pipelines a lookup's commands, so each is one round trip.
"""

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from harness import Service
from harness.paths import BUILD, ROOT, tool_path
from harness.ports import free_ports
from harness.process import spawn, stop_process
from harness.wait import wait_for

from .cpus import pinned
from .load import Load, Rotate, run_wrk

OLD_COMMIT = "2ad4e41"
KEYS = 64
LOADS = ("found", "unknown")
SERVERS = ("new", "old")
# The new profile's settings, for a tree that predates it (see Cargo.toml).
SERVICE_PROFILE = {"CARGO_PROFILE_RELEASE_LTO": "thin", "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
                   "CARGO_PROFILE_RELEASE_PANIC": "unwind"}


@dataclass
class KeystoreSample:
    server: str  # "new" or "old"
    load: str  # "found" or "unknown"
    round: int
    requests: int
    seconds: float
    latency_p50_us: int
    latency_p99_us: int
    status_errors: int  # non-2xx answers (every answer of `unknown` is a 404)
    socket_errors: int
    server_cpu_seconds: float
    redis_commands: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def commands_per_lookup(self) -> float:
        return self.redis_commands / self.requests if self.requests else 0.0

    @property
    def cpu_us_per_lookup(self) -> float:
        return self.server_cpu_seconds * 1e6 / self.requests if self.requests else 0.0

    @property
    def clean(self) -> bool:
        expected_errors = self.requests if self.load == "unknown" else 0
        return self.requests > 0 and self.socket_errors == 0 and \
            self.status_errors == expected_errors

    def as_dict(self) -> dict:
        return {**asdict(self), "rps": self.rps, "commands_per_lookup": self.commands_per_lookup,
                "cpu_us_per_lookup": self.cpu_us_per_lookup}


def process_cpu_seconds(pid: int) -> float:
    """User and system time of the whole process, threads that have exited included
    (the old server's threads end with their connections; per-thread counters would
    lose them)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def toolchain() -> str:
    for line in (ROOT / "rust-toolchain.toml").read_text().splitlines():
        if line.startswith("channel"):
            return line.split("=", 1)[1].strip().strip('"')
    raise ValueError("rust-toolchain.toml names no channel")


def old_keystore(say, override: Path = None) -> Path:
    """The key store at OLD_COMMIT, built once into build/bench/keystore-<commit>/
    (a few minutes; kept for later runs). `override`: use that binary instead."""
    if override:
        return Path(override)
    out = BUILD / "bench" / f"keystore-{OLD_COMMIT}"
    binary = out / "wasmgate-keystore"
    if binary.is_file():
        return binary
    source = out / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    say(f"building the key store of {OLD_COMMIT} into {out} (once)")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", OLD_COMMIT],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    built = subprocess.run(
        ["cargo", f"+{toolchain()}", "build", "--release", "--locked", "-p", "wasmgate-keystore"],
        cwd=source, env={**os.environ, **SERVICE_PROFILE, "CARGO_TARGET_DIR": str(out / "target")},
        capture_output=True, text=True, timeout=3600)
    if built.returncode != 0:
        raise RuntimeError(f"building the key store of {OLD_COMMIT} failed:\n{built.stderr[-3000:]}")
    shutil.copy(out / "target" / "release" / "wasmgate-keystore", binary)
    return binary


class KeystoreBench:
    """Redis, the keys, and one server at a time on the measured CPU."""

    def __init__(self, settings, placement, workdir: Path, say, old_binary: Path = None):
        self.settings = settings
        self.placement = placement
        self.workdir = Path(workdir) / "keystore"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.binaries = {"new": Path(tool_path("keystore")), "old": old_keystore(say, old_binary)}
        self.redis_proc = None
        self.redis_port = None

    def __enter__(self):
        self.redis_port = free_ports(1)[0]
        self.redis_proc = spawn(pinned(self.placement.load_cpu, [
            "redis-server", "--port", self.redis_port, "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]), self.workdir / "redis.log")
        wait_for(lambda: self.redis().ping(), 10, "redis-server to answer PING")
        return self

    def __exit__(self, *exc):
        if self.redis_proc is not None:
            stop_process(self.redis_proc)

    def redis(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=5)

    @property
    def store(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}"

    def paths_file(self, load: str) -> Path:
        """The lookup paths wrk cycles through: KEYS keys made with the new CLI (both
        servers read the same stored form), or as many hashes of no key."""
        path = self.workdir / f"{load}.paths"
        if not path.is_file():
            hashes = []
            for _ in range(KEYS):
                if load == "found":
                    done = subprocess.run(
                        [self.binaries["new"], "--store", self.store, "keys", "create", "--tenant",
                         "tenant-bench", "--plan", "gold", "--json"],
                        capture_output=True, text=True, timeout=30, check=True)
                    key = json.loads(done.stdout)["api_key"]
                else:
                    key = "sk_live_" + secrets.token_urlsafe(32)
                hashes.append(hashlib.sha256(key.encode()).hexdigest())
            path.write_text("".join(f"/v1/keys/{h}\n" for h in hashes))
        return path

    def server(self, server: str) -> Service:
        """The server, not yet started (`with` starts and stops it)."""
        argv = pinned(self.placement.envoy_cpu, [
            self.binaries[server], "--store", self.store, "serve", "--listen", "127.0.0.1:0"])
        return Service(argv, f"keystore-{server}", self.workdir)

    def commands(self) -> int:
        return int(self.redis().info("stats")["total_commands_processed"])

    def measure(self, server: str, load: str, round_: int, seconds: int) -> KeystoreSample:
        with self.server(server) as service:
            pid = service.proc.pid
            spec = Load(path="/", rotate=Rotate(":path", self.paths_file(load)))
            run = lambda s, name: run_wrk(  # noqa: E731
                f"http://{service.address}/", spec, seconds=s,
                connections=self.settings.connections, threads=self.settings.threads,
                cpu=self.placement.load_cpu, workdir=self.workdir, name=name)
            run(self.settings.warmup or 1, f"{server}-{load}-warmup-r{round_}")
            time.sleep(0.2)  # the warm-up's connections end (and the old server's threads)
            commands0, cpu0 = self.commands(), process_cpu_seconds(pid)
            result = run(seconds, f"{server}-{load}-r{round_}")
            cpu1 = process_cpu_seconds(pid)
            # Last-use writes the run caused (the new server batches them) count too.
            time.sleep(1.2)
            commands1 = self.commands()
        return KeystoreSample(server, load, round_, result.requests, result.seconds,
                              result.latency_p50_us, result.latency_p99_us, result.status_errors,
                              result.socket_errors, cpu1 - cpu0, commands1 - commands0 - 1)

    def run(self) -> list:
        samples = []
        for round_ in range(self.settings.rounds):
            order = SERVERS if round_ % 2 == 0 else SERVERS[::-1]
            for load in LOADS:
                for server in order:
                    sample = self.measure(server, load, round_, self.settings.seconds)
                    samples.append(sample)
                    self.say(f"round {round_ + 1}/{self.settings.rounds} keystore {server} "
                             f"{load}: {sample.rps:,.0f} lookups/s, p99 "
                             f"{sample.latency_p99_us / 1000:.2f} ms, "
                             f"{sample.commands_per_lookup:.3f} Redis commands/lookup"
                             + ("" if sample.clean else " (NOT CLEAN)"))
        return samples
