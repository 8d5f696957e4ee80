"""An MLflow tracking server on loopback: what a cluster's registry is, run from the project's own venv (mlflow is
a platform dependency; ``mlflow server`` needs nothing more).

Backend store: a SQLite file under ``work_dir``. Artifacts: a local folder that the clients write to directly
(``--no-serve-artifacts``), as they write to S3 or GCS in a cluster, so a model version's source is a URI a
KServe storage initializer could read (file:// here, s3:// there), never the ``mlflow-artifacts:`` proxy scheme
(infra/README.md). Stopping and starting it again keeps both: the fault tests kill it mid-operation and bring
it back.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from relevance.common.processes import LoopbackProcess, free_port, http_ready


@dataclass
class MlflowServer:
    url: str  # the tracking URI (and registry URI) clients use
    process: LoopbackProcess
    artifacts: Path


def server_command(work_dir: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{work_dir / 'mlflow.db'}",
            "--no-serve-artifacts", "--default-artifact-root", (work_dir / "artifacts").as_uri(),
            # One worker: the registry is small, and each worker is a full Python process (~200 MB).
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


@contextmanager
def mlflow_server(work_dir: str | Path, port: int | None = None, log: str | Path | None = None,
                  timeout: float = 180.0):
    """``mlflow server`` on 127.0.0.1 (a free port unless ``port``), yielded once /health answers, stopped on
    exit. Its output goes to ``log`` (default ``work_dir/mlflow-server.log``)."""
    work_dir = Path(work_dir).resolve()
    (work_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    process = LoopbackProcess("mlflow server", server_command(work_dir, port), log or work_dir / "mlflow-server.log",
                              http_ready(f"{url}/health"), timeout=timeout)
    with process:
        yield MlflowServer(url, process, work_dir / "artifacts")
