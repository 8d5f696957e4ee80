"""A real Triton Inference Server on loopback, from the ``tritonserver`` binary of the nvidia-pytriton wheel.

The wheel (installed by ``make triton-env`` into a venv of its own, ``.venv-triton``: the server is a separate
process, and the wheel's pins need not agree with the project's) ships Triton 2.51 with the Python backend but no
ONNX Runtime backend, so the model repository is the python-backend variant (relevance.serving.model_repository).
What it takes to start it outside Triton's container:

- a backend directory holding ``python/`` with the wheel's libtriton_python.so, triton_python_backend_utils.py and
  the Python-backend stub built for this Python version (the wheel ships one per version);
- the stub must load the venv's Python: its ``bin`` first on PATH (the stub imports numpy and onnxruntime from
  there) and the interpreter's shared libpython on LD_LIBRARY_PATH;
- every endpoint bound to 127.0.0.1 on a free port (HTTP, gRPC, metrics), no GPU metrics, no auto-completed
  config (config.pbtxt is complete and checked offline).

In a cluster, Triton's own image serves the onnxruntime variant of the same folder (infra/); nothing here runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from relevance.serving.process import v2_ready

from relevance.common.processes import LoopbackProcess, free_port

ENV_VARIABLE = "RELEVANCE_TRITON_ENV"


class TritonUnavailable(ValueError):
    """No usable Triton install (a setup error a user fixes, reported in one line by the CLI)."""


@dataclass
class TritonInstall:
    """Where the wheel's server lives, and the Python it runs the model with."""

    env: Path  # the venv

    @property
    def python(self) -> Path:
        return self.env / "bin" / "python"

    @property
    def root(self) -> Path:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        found = sorted(self.env.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
        if not found:
            raise TritonUnavailable(f"{self.env}: no pytriton/tritonserver inside; `make triton-env` installs it "
                                    f"(this process runs {version})")
        return found[0]

    def python_version(self) -> str:
        return self.root.parts[-4].removeprefix("python")  # lib/python3.X/site-packages/pytriton/tritonserver

    def backend_directory(self, work: Path) -> Path:
        """backends/python/ made of links into the wheel, with the stub of the venv's Python version."""
        python = work / "backends" / "python"
        python.mkdir(parents=True, exist_ok=True)
        sources = {"libtriton_python.so": self.root / "backends/python/libtriton_python.so",
                   "triton_python_backend_utils.py": self.root / "backends/python/triton_python_backend_utils.py",
                   "triton_python_backend_stub": self.root / "python_backend_stubs" / self.python_version()
                   / "triton_python_backend_stub"}
        for name, source in sources.items():
            if not source.exists():
                raise TritonUnavailable(f"{source}: missing from the nvidia-pytriton wheel")
            link = python / name
            if link.is_symlink() and link.resolve() != source.resolve():  # a rebuilt venv leaves stale links
                link.unlink()
            if not link.is_symlink():
                link.symlink_to(source)
        return work / "backends"

    def environment(self) -> dict[str, str]:
        code = "import sysconfig as s; print(s.get_config_var('LIBDIR')); print(s.get_config_var('Py_ENABLE_SHARED'))"
        libdir, shared = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True,
                                        check=True).stdout.split()
        if shared != "1":  # the stub links libpython; without it the server hangs, neither ready nor exited
            raise TritonUnavailable(f"{self.python}: this Python has no shared libpython, which Triton's Python "
                                    "backend stub loads; make the Triton venv from a Python built with "
                                    "--enable-shared (Debian's python3, or pyenv with PYTHON_CONFIGURE_OPTS)")
        return {"PATH": f"{self.env / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
                "LD_LIBRARY_PATH": libdir, "OMP_NUM_THREADS": "1"}


def triton_install(env: str | Path | None = None) -> TritonInstall:
    """The Triton venv: ``env``, else $RELEVANCE_TRITON_ENV, else ``.venv-triton`` in the working directory."""
    path = Path(env or os.environ.get(ENV_VARIABLE) or ".venv-triton").resolve()
    if not (path / "bin" / "python").exists():
        raise TritonUnavailable(f"no Triton environment at {path}: `make triton-env` makes one (nvidia-pytriton and "
                                f"onnxruntime in a venv of their own), or set {ENV_VARIABLE}")
    install = TritonInstall(path)
    install.root  # noqa: B018  (fails early, with the install hint, if the wheel is missing)
    return install


@dataclass
class TritonServer:
    http_url: str
    grpc_url: str
    metrics_url: str
    pid: int


def server_command(install: TritonInstall, repo: Path, work: Path, ports: dict[str, int]) -> list[str]:
    return [str(install.root / "bin" / "tritonserver"), f"--model-repository={repo}",
            f"--backend-directory={install.backend_directory(work)}", f"--cache-directory={install.root / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={ports['http']}",
            "--grpc-address=127.0.0.1", f"--grpc-port={ports['grpc']}",
            "--metrics-address=127.0.0.1", f"--metrics-port={ports['metrics']}",
            # No GPU: no GPU metrics, no pinned (CUDA host) memory pool. The config is complete and checked offline:
            # auto-completing it would start one more backend stub (READY in ~2 s instead of ~0.5 s).
            "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--disable-auto-complete-config",
            "--exit-timeout-secs=5", "--log-verbose=0"]


@contextmanager
def triton_server(repo: str | Path, work: str | Path, log: str | Path, prefix: list[str] | None = None,
                  ports: dict[str, int] | None = None, env: str | Path | None = None, timeout: float = 120.0):
    """``tritonserver`` serving ``repo`` on loopback (after ``prefix``, e.g. ``taskset -c 0``), yielded as its
    URLs once every model is ready, stopped on exit. Output goes to ``log``."""
    install = triton_install(env)
    work, log = Path(work), Path(log)
    work.mkdir(parents=True, exist_ok=True)
    ports = ports or {name: free_port() for name in ("http", "grpc", "metrics")}
    command = [*(prefix or []), *server_command(install, Path(repo).resolve(), work, ports)]
    log.write_text("")
    server = TritonServer(f"http://127.0.0.1:{ports['http']}", f"grpc://127.0.0.1:{ports['grpc']}",
                          f"http://127.0.0.1:{ports['metrics']}/metrics", 0)
    # Its own deadline: a backend stub that cannot start (a missing shared library) leaves the server neither
    # ready nor exited. Stopped as a process group: the server and its backend stubs.
    with LoopbackProcess("tritonserver", command, log, v2_ready(server.http_url), env=install.environment(),
                         timeout=timeout, clean_env=True) as process:
        server.pid = process.pid
        yield server
