"""Starting the real Triton: what a user gets without the Triton venv, and the backend directory made of links into
the wheel (the server itself runs in test_server.py)."""

from __future__ import annotations

import pytest

from relevance.serving.triton import TritonInstall, TritonUnavailable, triton_install


def test_no_triton_venv_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.delenv("RELEVANCE_TRITON_ENV", raising=False)
    with pytest.raises(TritonUnavailable, match="make triton-env"):
        triton_install(tmp_path / "nowhere")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    with pytest.raises(TritonUnavailable, match="no pytriton/tritonserver inside"):
        triton_install(tmp_path / "venv")


def test_the_backend_directory_links_the_wheels_stub_and_replaces_stale_links(tmp_path):
    root = tmp_path / "venv/lib/python3.11/site-packages/pytriton/tritonserver"
    for path in ("backends/python/libtriton_python.so", "backends/python/triton_python_backend_utils.py",
                 "python_backend_stubs/3.11/triton_python_backend_stub"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(path)
    install = TritonInstall(tmp_path / "venv")
    python = install.backend_directory(tmp_path / "work") / "python"
    assert (python / "triton_python_backend_stub").read_text() == "python_backend_stubs/3.11/triton_python_backend_stub"
    (python / "libtriton_python.so").unlink()
    (python / "libtriton_python.so").symlink_to(tmp_path / "gone")  # a rebuilt venv leaves this behind
    install.backend_directory(tmp_path / "work")
    assert (python / "libtriton_python.so").read_text() == "backends/python/libtriton_python.so"


def test_serve_triton_without_the_venv_is_a_one_line_error(cli, tmp_path):
    result = cli("serve-triton", "--triton-env", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2 and "make triton-env" in result.stderr and "Traceback" not in result.stderr
