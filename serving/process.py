"""A model server as a subprocess on loopback: the one harness behind the local canary loop, the serving tests
and the serving benchmark (the process handling is relevance.common.processes, shared with the platform's
services)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from relevance.common.processes import LoopbackProcess, free_port, http_ready, wait_until

__all__ = ["free_port", "model_server", "v2_ready", "wait_ready"]


def v2_ready(url: str):
    """A readiness check: ``url`` answers the V2 readiness probe with 200."""
    return http_ready(f"{url}/v2/health/ready", timeout=1)


def wait_ready(url: str, process: subprocess.Popen | None = None, log: Path | None = None,
               timeout: float = 180.0) -> None:
    """Until ``url`` answers the V2 readiness probe; a process that exits first fails with its log's tail."""
    wait_until(v2_ready(url), f"server for {url}", process, log, timeout)


@contextmanager
def model_server(args: list[str], port: int, log: Path, env: dict | None = None, prefix: list[str] | None = None,
                 cwd: Path | None = None, timeout: float = 180.0):
    """``relevance <args> --http_port <port>`` as a subprocess (after ``prefix``, e.g. ``taskset -c 1``), yielded
    as its URL once ready, stopped on exit. Output goes to ``log``."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    url = f"http://127.0.0.1:{port}"
    command = [*(prefix or []), sys.executable, "-m", "relevance.cli", *args, "--http_port", str(port)]
    with LoopbackProcess(f"server for {url}", command, log, v2_ready(url), env=env, cwd=cwd, timeout=timeout):
        yield url
