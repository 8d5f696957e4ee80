"""The Great Expectations data-quality gate that runs before training.

Why a second set of checks next to ``relevance.data.schema``: the contract checks there raise on the *first*
problem, which is right for a step that is about to consume the tables, but wrong for the pipeline's gate,
where an operator wants to see *every* problem of a bad delivery at once, with evidence. Here each table gets
one GX ExpectationSuite, every expectation is evaluated, and the results go

* into a :class:`ValidationReport` (one line per failed expectation, naming the expectation and the column,
  what was expected and what was got), which raises :class:`DataValidationError` to stop the pipeline, and
* into GX Data Docs (HTML) under ``docs_dir`` when one is given, kept as the pipeline step's artifact, also
  (especially) on failure.

Drift is checked with ordinary GX expectations on numbers computed from a reference: the mean item-text and
query lengths with ``ExpectColumnMeanToBeBetween`` (bounds from the reference's means), and the grade
distribution with ``ExpectColumnSumToBeBetween`` over a small per-grade table whose column sums to the
total-variation distance (see :func:`relevance.platform.validation.suites.grade_distribution`), so that every drift
failure also shows in Data Docs.

The package, by concept:

* :mod:`.gate`: what the pipeline calls (a prepared dataset, or a labelling) and which suites run on it;
* :mod:`.suites`: the expectations for each table (schema, ids, grades, drift), as plain lists of GX objects;
* :mod:`.checkpoints`: running the suites through one ephemeral GX context, with Data Docs;
* :mod:`.report`: the outcome, and each failed expectation as one readable line.

``great_expectations`` takes seconds to import, so it is imported inside the functions that need it
(:func:`.checkpoints.import_gx`): the core library must import fast, and only the validation step pays for GX.
Nothing here imports an orchestration or serving framework.
"""

from relevance.platform.validation.gate import validate_dataset, validate_label_chunks, validate_label_expectations
from relevance.platform.validation.report import DataValidationError, ValidationReport

__all__ = ["DataValidationError", "ValidationReport", "validate_dataset", "validate_label_expectations",
           "validate_label_chunks"]
