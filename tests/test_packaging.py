"""The wheel works outside the checkout: built with `pip wheel .`, installed into a fresh virtual environment, and
run from a folder that is not the checkout. Its only top-level import name is `relevance`, and the files the CLI
reads at run time (Feast definitions, KServe manifests) come with it.

The fresh environment gets the pinned dependencies from the project's own .venv through a .pth line (installing
them again would take minutes and the network); the project itself comes only from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the fresh environment's bin/, a working directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("relevance-*.whl"))
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return wheel, env_dir / "bin", outside


def _run(installed, *args, check=True, timeout=900):
    _, bin_dir, outside = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"HF_HUB_OFFLINE": "1", "PATH": f"{bin_dir}:{env['PATH']}"})
    result = subprocess.run([str(bin_dir / "relevance"), *map(str, args)], cwd=outside, capture_output=True,
                            text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"relevance {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result


def test_the_wheel_installs_one_top_level_package_with_its_data_files(installed):
    wheel, bin_dir, outside = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("relevance-")} == {"relevance"}
    for data in ("relevance/feature_repo/feature_store.yaml", "relevance/feature_repo/definitions.py",
                 "relevance/kserve/base/inferenceservice.yaml", "relevance/kserve/overlays/canary/kustomization.yaml"):
        assert data in names, data
    assert not any(n.startswith(("relevance/benchmarks", "benchmarks/", "tests/")) for n in names)
    where = subprocess.run([str(bin_dir / "python"), "-c", "import relevance, relevance.common.resources as r; "
                            "print(relevance.__file__); print(r.packaged('kserve'))"],
                           cwd=outside, capture_output=True, text=True, check=True).stdout.split()
    assert all(str(REPO) not in path for path in where), where


def test_help_and_pipeline_compile_outside_the_checkout(installed):
    assert "train-teacher" in _run(installed, "--help").stdout
    _run(installed, "pipeline", "compile", "--out", "p.yaml")
    spec = yaml.safe_load((installed[2] / "p.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "relevance-distillation-training"


def test_canary_dry_run_against_a_registry_with_a_champion(installed, tmp_path):
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not on PATH: --dry-run renders the shipped overlay with it")
    _, bin_dir, _ = installed
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup = (
        "import json, sys; from pathlib import Path\n"
        "from relevance.config import RegistryConfig\n"
        "from relevance.platform.registry import CHAMPION, Registry\n"
        f"registry = Registry(RegistryConfig(tracking_uri={uri!r}))\n"
        "for version in (1, 2):\n"
        f"    model = Path({str(tmp_path)!r}) / f'student-{{version}}'; model.mkdir()\n"
        "    (model / 'manifest.json').write_text(json.dumps({'kind': 'student'}))\n"
        "    registry.register('relevance-student', model, {}, {'accuracy': 0.5}, {'feature_version': '3'},\n"
        "                      alias=CHAMPION if version == 1 else None)\n")
    subprocess.run([str(bin_dir / "python"), "-c", setup], check=True, capture_output=True, cwd=installed[2])
    result = _run(installed, "canary", "start", "--model-version", "2", "--percent", "10", "--dry-run",
                  "--tracking-uri", uri, check=False)
    assert "kubectl patch inferenceservice relevance-student" in result.stdout
    assert "canaryTrafficPercent: 10" in result.stdout and "serviceAccountName: relevance-models" in result.stdout
    # The shipped prod overlay rendered and validated; the one problem is the local registry's file:// URIs,
    # which KServe cannot fetch (a cluster's MLflow keeps its artifacts in object storage).
    problems = [line for line in result.stderr.splitlines() if line.startswith("invalid:")]
    assert result.returncode == 1 and len(problems) == 1 and "file://" in problems[0], result.stderr[-2000:]


@pytest.mark.slow  # minutes: the real quick profile (MiniLM-L6); .ci/run runs it after the default suite
def test_quick_run_outside_the_checkout(installed):
    result = _run(installed, "run", "--profile", "quick")
    report = json.loads((installed[2] / "runs/quick/report.json").read_text())
    assert set(report["models"]) >= {"teacher", "student", "student_human_only", "bm25", "majority"}
    assert report["models"]["teacher"]["overall"]["accuracy"] > report["models"]["majority"]["overall"]["accuracy"]
    assert "| teacher |" in result.stdout
