"""Data: the contract (schema), adapters that produce it, the synthetic shop, splits and BM25 candidates."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Protocol

from relevance.data.schema import DataContractError, Dataset, DatasetInfo


class DataSource(Protocol):
    """What preparing a dataset reads of the run config (relevance.config.DataConfig has these fields). A protocol,
    so that the data layer, which the config builds on, does not import it back."""

    source: str
    path: str | None
    seed: int
    synthetic_items: int
    synthetic_judged_queries: int
    synthetic_impressions: int
    judge_holdout_fraction: float
    judge_check_fraction: float

ADAPTERS = ("homedepot", "esci", "wands", "generic")


def prepare(config: DataSource, out_dir: str | Path) -> Path:
    """Write the canonical dataset directory for ``config`` (an adapter's output, or the synthetic shop)."""
    out_dir = Path(out_dir)
    slices = judge_slices(config)
    if config.source == "synthetic":
        from relevance.data import synthetic

        return synthetic.generate(out_dir, num_items=config.synthetic_items,
                                  num_judged_queries=config.synthetic_judged_queries,
                                  num_impressions=config.synthetic_impressions, seed=config.seed, info_fields=slices)
    if config.source == "prepared":
        return copy_prepared(config.path, out_dir, slices)
    if config.source not in ADAPTERS:
        raise DataContractError(f"unknown data source {config.source!r}; expected synthetic or one of {ADAPTERS}")
    if not Path(config.path).exists():
        raise DataContractError(f"data.path {config.path} does not exist")
    adapter = importlib.import_module(f"relevance.data.{config.source}")
    dataset = adapter.load(config.path)
    dataset.info = dataclasses.replace(dataset.info, **slices)
    return dataset.save(out_dir)


def judge_slices(config: DataSource) -> dict:
    """What dataset.json records of the judge's slices (DatasetInfo.judge_holdout_fraction and
    judge_check_fraction): the config's, written once at preparation so that every step reads the same."""
    return {"judge_holdout_fraction": config.judge_holdout_fraction,
            "judge_check_fraction": config.judge_check_fraction}


def copy_prepared(source: str | Path, out_dir: str | Path, info_fields: dict | None = None) -> Path:
    """Copy a directory already in the contract's layout, table by table, without validating values; its
    dataset.json gets ``info_fields`` (the judge's slices, :func:`judge_slices`).

    Value checks (nulls, grade range, duplicates, drift) are the Great Expectations gate's job in the pipeline:
    it reports every failure with Data Docs, where the contract checks would stop at the first one.
    """
    import shutil

    from relevance.common.files import atomic_directory

    source = Path(source)
    if not (source / "dataset.json").exists():
        raise DataContractError(f"{source}: not a prepared dataset directory (no dataset.json)")
    info = dataclasses.replace(DatasetInfo.load(source), **(info_fields or {}))
    missing = [f"{name}.parquet" for name in ("items", "queries", "judgments") if not (source / f"{name}.parquet").exists()]
    if missing:
        raise DataContractError(f"{source}: missing {missing}")
    with atomic_directory(out_dir) as tmp:
        for path in source.iterdir():
            if path.suffix == ".parquet":
                shutil.copy2(path, tmp / path.name)
        info.save(tmp)
    return Path(out_dir)


__all__ = ["ADAPTERS", "Dataset", "DataContractError", "DataSource", "DatasetInfo", "prepare"]
