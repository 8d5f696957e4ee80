"""relevance.common.console: an input error is one red line and exit code 2; a bug keeps its traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from relevance.common.console import clear_errors
from relevance.data.schema import DataContractError


def _app(error: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @clear_errors()
    def fail():
        raise error

    return app


@pytest.mark.parametrize("error", [DataContractError("judgments.grade: expected 0..4, found 7"),
                                   FileNotFoundError("no such config"), ValueError("bad value")])
def test_an_input_error_is_one_line_and_exit_code_2(error):
    result = CliRunner().invoke(_app(error), [])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {error}"


def test_a_bug_is_not_dressed_up_as_an_input_error():
    result = CliRunner().invoke(_app(KeyError("bug")), [])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
