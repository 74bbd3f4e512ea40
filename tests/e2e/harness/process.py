"""Child processes that die with the test: their own process group, stopped on
teardown, and killed by the kernel if the test runner itself dies."""

import ctypes
import os
import signal
import subprocess
import threading
from pathlib import Path

from .wait import wait_for

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def spawn(argv, log_file: Path, env=None, stdout=None):
    """Starts `argv` in a new session, stderr (and stdout unless piped) to `log_file`."""
    log = open(log_file, "ab")
    return subprocess.Popen(
        [str(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else log,
        stderr=log,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop_process(proc: subprocess.Popen, grace: float = 5.0):
    """SIGTERM the process group, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Service:
    """A fixture server that prints `listening on http://HOST:PORT` when ready.

    All of the project's servers (`wasmgate-demo echo`, the JWKS issuer, the key
    store, ...) follow that convention, so port 0 can be asked for and the real port
    read back.
    """

    def __init__(self, argv, name: str, workdir: Path, env=None, ready_timeout: float = 20.0):
        self.argv = [str(a) for a in argv]
        self.name = name
        self.log_file = Path(workdir) / f"{name}.log"
        self.env = env
        self.ready_timeout = ready_timeout
        self.proc = None
        self.address = None
        self._lines = []

    def start(self):
        self.proc = spawn(self.argv, self.log_file, env=self.env, stdout=subprocess.PIPE)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            wait_for(self._ready, self.ready_timeout, f"{self.name} to print its address")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {' '.join(self.argv)}\n{self.log()}")
        return self

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._lines.append(line)
            with open(self.log_file, "a") as log:
                log.write(line + "\n")

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
        for line in self._lines:
            if line.startswith("listening on http://"):
                self.address = line.split("http://", 1)[1].strip()
                return True
        return False

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def url(self, path: str = "/") -> str:
        return f"http://{self.address}{path}"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
