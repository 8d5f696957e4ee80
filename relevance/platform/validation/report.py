"""The gate's outcome: a :class:`ValidationReport` (what failed, how much was checked) and the error that stops the
pipeline, and how a failed GX expectation result becomes one line an operator can act on (the expectation, the
column, what was got and what was expected; GX's own result objects are nested dicts, unreadable in a log).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relevance.data.schema import DataContractError

# How many unexpected values a failure line quotes (Data Docs shows up to 20).
EXAMPLES = 3


class DataValidationError(DataContractError):
    """The data-quality gate failed. ``.report`` holds the full :class:`ValidationReport`."""

    def __init__(self, report: "ValidationReport") -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass
class ValidationReport:
    """The outcome of one gate run: what failed (one line per failed expectation), how much was checked."""

    success: bool
    failures: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # suite name -> number of expectations evaluated
    data_docs: Path | None = None  # the Data Docs index.html, when docs_dir was given

    def summary(self) -> str:
        total = sum(self.checked.values())
        suites = ", ".join(f"{name} {n}" for name, n in self.checked.items()) or "none"
        if self.success:
            lines = [f"Data validation passed: {total} expectation(s) in {len(self.checked)} suite(s) ({suites})."]
        else:
            lines = [f"Data validation FAILED: {len(self.failures)} failure(s) among {total} expectation(s) in "
                     f"{len(self.checked)} suite(s) ({suites}):"]
            lines += [f"  - {line}" for line in self.failures]
        if self.data_docs is not None:
            lines.append(f"Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.success:
            raise DataValidationError(self)

    def to_dict(self) -> dict:
        return {
            "success": bool(self.success),
            "failures": list(self.failures),
            "num_failures": len(self.failures),
            "checked": {name: int(n) for name, n in self.checked.items()},
            "num_expectations": int(sum(self.checked.values())),
            "data_docs": str(self.data_docs) if self.data_docs is not None else None,
        }


# ------------------------------------------------------------------------------------------ failure lines

_EXPECTED_KEYS = ("min_value", "max_value", "value_set", "column_set", "exact_match", "type_list", "regex",
                  "sum_total")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, float) else f"{value:.6g}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, so lines read 0.43 and not np.float64(0.43)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def describe_failure(suite: str, result) -> str:
    """'judgments: expect_column_values_to_be_between on column 'grade' failed: 3 of 1200 values unexpected
    (e.g. 7, 9, -1); expected min_value=0, max_value=4'."""
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    where = ""
    if "column" in kwargs:
        where = f" on column {kwargs['column']!r}"
    elif "column_list" in kwargs:
        where = f" on columns {list(kwargs['column_list'])}"
    head = f"{suite}: {config.type}{where}"
    exception = result.exception_info or {}
    messages = [v.get("exception_message") for v in exception.values() if isinstance(v, dict)] \
        if "raised_exception" not in exception else [exception.get("exception_message")]
    messages = [m for m in messages if m]
    if messages:
        return f"{head} could not run: {messages[0]}"

    details = _plain(dict(result.result or {}))
    if "unexpected_count" in details and details.get("element_count") is not None:
        # Duplicated keys come back once per row; quote each distinct value once.
        distinct = list(dict.fromkeys(_short(v, 60) for v in details.get("partial_unexpected_list") or []))
        examples = ", ".join(distinct[:EXAMPLES])
        unit = "rows" if "column_list" in kwargs else "values"
        got = (f"{details['unexpected_count']} of {details['element_count']} {unit} unexpected"
               + (f" (e.g. {examples})" if examples else ""))
    elif config.type == "expect_table_columns_to_match_set":
        mismatched = (details.get("details") or {}).get("mismatched") or {}
        # Without exact_match, extra columns are allowed, so only the missing ones are news.
        kinds = ("missing", "unexpected") if kwargs.get("exact_match") else ("missing",)
        parts = [f"{kind} {sorted(map(str, mismatched[kind]))}" for kind in kinds if mismatched.get(kind)]
        got = "; ".join(parts) if parts else f"observed columns {_short(details.get('observed_value'), 200)}"
    elif "observed_value" in details:
        got = f"observed {_short(details['observed_value'])}"
    else:
        got = "no observed value"
    expected = ", ".join(f"{k}={_short(_plain(kwargs[k]))}" for k in _EXPECTED_KEYS
                         if k in kwargs and kwargs[k] is not None)
    line = f"{head} failed: {got}" + (f"; expected {expected}" if expected else "")
    notes = getattr(config, "notes", None)
    if notes:
        line += f" ({_notes_text(notes)})"
    return line


def _notes_text(notes: Any) -> str:
    if isinstance(notes, dict):  # GX renders notes as {"format": ..., "content": [...]} in some versions
        notes = notes.get("content", "")
    if isinstance(notes, (list, tuple)):
        notes = " ".join(map(str, notes))
    return re.sub(r"\s+", " ", str(notes)).strip()
