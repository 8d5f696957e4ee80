"""Running the suites: one ephemeral GX context per gate run, a suite, validation definition and checkpoint per
table, and Data Docs written by the checkpoints when a docs directory is given. The only module of the gate that
talks to GX's context and checkpoint API (the suites only build expectation objects).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from relevance.platform.validation.report import ValidationReport, describe_failure

# The one Data Docs site this gate writes (its base directory is the caller's docs_dir).
DOCS_SITE = "relevance_gate"


def import_gx():
    """great_expectations, imported on first use (it takes seconds; the core library must import fast)."""
    # Before the import: GX reads it at import time, and a pipeline pod must not phone home.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def _context(docs_dir: Path | None):
    """An ephemeral (in-memory) context whose only Data Docs site, if any, is a local one at docs_dir."""
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # The ephemeral context comes with a default site in a temp directory; building it too would be wasted time.
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    if docs_dir is not None:
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    # tqdm bars per metric batch would flood the pipeline logs.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def run_checks(checks: list[tuple[str, pd.DataFrame, list]], docs_dir: str | Path | None) -> ValidationReport:
    """One suite + validation definition + checkpoint per table; Data Docs updated by the checkpoints."""
    gx = import_gx()
    docs_path = Path(docs_dir) if docs_dir is not None else None
    if docs_path is not None:
        docs_path.mkdir(parents=True, exist_ok=True)
    context = _context(docs_path)
    source = context.data_sources.add_pandas("relevance")
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if docs_path else []

    report = ValidationReport(success=True, data_docs=docs_path / "index.html" if docs_path else None)
    # One run id for all tables, so Data Docs groups this gate's validations under one run name and time.
    from great_expectations.core.run_identifier import RunIdentifier

    run_id = RunIdentifier(run_name="relevance_gate", run_time=datetime.now(timezone.utc))
    for name, df, expectations in checks:
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        # A checkpoint per table because a dataframe batch is passed at run time and a checkpoint takes one set
        # of batch parameters for all its validation definitions.
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{name}_gate", validation_definitions=[definition], actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20}))
        result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
        report.checked[name] = len(expectations)
        for run_result in result.run_results.values():
            # GX returns results in metric-resolution order; report them in the suite's order instead.
            order = {id(e): i for i, e in enumerate(suite.expectations)}
            failed = [r for r in run_result.results if not r.success]
            failed.sort(key=lambda r: order.get(id(_match(suite, r)), len(order)))
            for expectation_result in failed:
                report.failures.append(describe_failure(name, expectation_result))
        report.success = report.success and bool(result.success)
    return report


def _match(suite, result):
    """The suite's expectation a result belongs to (by its configuration's id)."""
    config_id = getattr(result.expectation_config, "id", None)
    return next((e for e in suite.expectations if e.id is not None and e.id == config_id), None)

