"""Label shards: fixed row ranges, and the teacher-label contract."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relevance.data.schema import DataContractError, validate_teacher_labels
from relevance.labels.labelling import read_shard


def test_shards_are_fixed_row_ranges_across_row_groups(tmp_path):
    pool = pd.DataFrame({"query_id": [f"q{i}" for i in range(23)], "item_id": [f"i{i}" for i in range(23)]})
    pq.write_table(pa.Table.from_pandas(pool), tmp_path / "pool.parquet", row_group_size=4)
    shards = [read_shard(tmp_path / "pool.parquet", s, 10) for s in range(3)]
    assert [len(s) for s in shards] == [10, 10, 3]
    assert pd.concat(shards)["query_id"].tolist() == pool["query_id"].tolist()
    with pytest.raises(ValueError, match="out of range"):
        read_shard(tmp_path / "pool.parquet", 3, 10)


def test_teacher_label_contract():
    good = pd.DataFrame({"query_id": ["q"], "item_id": ["i"], "p_0": [0.25], "p_1": [0.75],
                         "teacher_version": ["t"]})
    validate_teacher_labels(good, 2)
    with pytest.raises(DataContractError, match="sum to 1"):
        validate_teacher_labels(good.assign(p_1=0.5), 2)
    with pytest.raises(DataContractError, match="K mismatch"):
        validate_teacher_labels(good.assign(p_2=0.0), 2)
    with pytest.raises(DataContractError, match="missing column"):
        validate_teacher_labels(good, 3)
