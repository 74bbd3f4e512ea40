"""Debian's Docker engine (docker.io), started by hand for the compose tests: its own
data and exec roots in a temporary directory, no bridge, no iptables, so nothing on
the machine changes. Containers must use `network_mode: host`. Stopped by its pid;
the network namespace it mounts is unmounted afterwards.

Needs root. No image can be pulled here: tests load stand-in images
(scripts/docker-standin-images.sh).
"""

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .process import spawn
from .wait import wait_for


def docker_cli() -> str:
    return shutil.which("docker") or "/usr/bin/docker"


class PrivateDockerd:
    def __init__(self):
        # Short path: the engine's unix sockets must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="wgd.", dir="/tmp"))
        self.proc = None

    @property
    def env(self) -> dict:
        """Environment for docker and docker compose to talk to this engine."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.dir}/docker.sock"}

    def docker(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        return subprocess.run([docker_cli(), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def start(self, timeout: float = 60):
        self.proc = spawn([shutil.which("dockerd") or "/usr/sbin/dockerd",
                           "--bridge=none", "--iptables=false", "--ip6tables=false",
                           "--ip-masq=false", "--log-level=warn",
                           "--data-root", self.dir / "root", "--exec-root", self.dir / "exec",
                           "--pidfile", self.dir / "pid", "-H", f"unix://{self.dir}/docker.sock"],
                          self.dir / "dockerd.log")

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log()}")
            return self.docker("info", check=False, timeout=10).returncode == 0

        try:
            wait_for(ready, timeout, "dockerd to answer")
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        try:
            return (self.dir / "dockerd.log").read_text(errors="replace")[-10000:]
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            # dockerd stops its containers and containerd itself on SIGTERM.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        netns = self.dir / "exec" / "netns" / "default"
        if netns.exists() and os.path.ismount(netns):
            subprocess.run(["umount", str(netns)], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
