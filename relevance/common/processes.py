"""A server as a child process on loopback: started in a process group of its own, waited for until it answers,
stopped (or killed, to test a fault) as a group, and restarted on the same ports and data.

One harness for every real service the project runs next to itself: the model servers and Triton
(relevance.serving.process, relevance.serving.triton) and the platform's services, Redis, an MLflow tracking
server and Label Studio (relevance.platform.services).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Self


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log: Path | None, chars: int = 3000) -> str:
    return Path(log).read_text(errors="replace")[-chars:] if log and Path(log).exists() else ""


def http_ready(url: str, body: Callable[[bytes], bool] | None = None, timeout: float = 2.0) -> Callable[[], bool]:
    """A readiness check: GET ``url`` answers 200 (and ``body`` accepts its content, when given)."""
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status == 200 and (body is None or body(response.read()))
        except (OSError, ValueError):  # refused, timed out, an HTTP error status, a body that does not parse
            return False
    return ready


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen | None = None,
               log: Path | None = None, timeout: float = 180.0, every: float = 0.3) -> float:
    """Poll ``ready()`` until it is true; returns the seconds it took. A process that exits first, or a deadline
    passed, fails with the log's tail (a server that cannot start may neither answer nor exit)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready:\n{log_tail(log)}")
        try:
            if ready():
                return time.monotonic() - started
        except OSError:  # refused, reset, timed out: not up yet (httpx's and redis's errors derive from it or
            pass         # are caught by the caller's ready())
        time.sleep(every)
    tail = log_tail(log)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s" + (f"; its log ends:\n{tail}" if tail else ""))


def stop_group(process: subprocess.Popen, kill: bool = False, grace: float = 20.0) -> None:
    """SIGTERM to the process's group (the server and its workers or stubs), SIGKILL after ``grace`` seconds or
    at once when ``kill`` (a crash, for the fault tests)."""
    steps = ((signal.SIGKILL, 10.0),) if kill else ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0))
    for sig, wait in steps:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()


class LoopbackProcess:
    """``command`` run with ``env`` (added to this process's, unless ``clean_env``), output to ``log``; ready when
    ``ready()`` is true. A context manager that starts it and stops it on exit; :meth:`stop` and :meth:`start`
    in between simulate an outage with the same ports and data (the command is the same)."""

    def __init__(self, name: str, command: list[str], log: str | Path, ready: Callable[[], bool],
                 env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 180.0,
                 clean_env: bool = False):
        self.name, self.command, self.log = name, [str(part) for part in command], Path(log)
        self.ready, self.env, self.cwd, self.timeout = ready, env or {}, cwd, timeout
        self.clean_env = clean_env
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> Self:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = self.env if self.clean_env else {**os.environ, **self.env}
        with open(self.log, "a") as handle:  # appended: a restart keeps the first run's output
            self.process = subprocess.Popen(self.command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.cwd, start_new_session=True)
        try:
            self.startup_seconds = wait_until(self.ready, self.name, self.process, self.log, self.timeout)
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        # Once it has exited (and was reaped), its pid may be another process's: never signal it again.
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, kill=kill)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
