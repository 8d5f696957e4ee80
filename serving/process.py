"""A model server as a subprocess on loopback: the one harness behind the local canary loop, the serving tests
and the serving benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None = None, log: Path | None = None,
               timeout: float = 180.0) -> None:
    """Until ``url`` answers the V2 readiness probe; a process that exits first fails with its log's tail."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server for {url} exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s" + (f"; its log ends:\n{tail}" if tail else ""))


@contextmanager
def model_server(args: list[str], port: int, log: Path, env: dict | None = None, prefix: list[str] | None = None,
                 cwd: Path | None = None, timeout: float = 180.0):
    """``relevance <args> --http_port <port>`` as a subprocess (after ``prefix``, e.g. ``taskset -c 1``), yielded
    as its URL once ready, stopped on exit. Output goes to ``log``."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [*(prefix or []), sys.executable, "-m", "relevance.cli", *args, "--http_port", str(port)]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                                   env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
