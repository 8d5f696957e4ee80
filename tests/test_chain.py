"""The chain's steps: clear errors before any training."""

from __future__ import annotations

import pandas as pd
import pytest

from relevance.chain import Chain
from relevance.config import build_config
from relevance.data.schema import DataContractError, Dataset, DatasetInfo


def test_an_empty_split_is_a_clear_error(tmp_path):

    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red sofa", "lamp"]})
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["sofa", "lamp"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2"], "item_id": ["a", "b"], "grade": [2, 0],
                              "split": ["train", "test"]})
    dataset = Dataset(DatasetInfo("tiny", 3), items, queries, judgments).validated()
    with pytest.raises(DataContractError, match="split 'valid' is empty"):
        Chain(build_config("quick", {"workdir": str(tmp_path)})).teacher(dataset)
    assert not (tmp_path / "teacher").exists()


def test_an_output_made_with_other_settings_is_an_error_not_a_reuse(tmp_path):
    chain = Chain(build_config("quick", {"workdir": str(tmp_path)}))
    assert chain.reusable("pool", output_exists=False) is False  # records the settings it is about to use
    assert chain.reusable("pool", output_exists=True) is True
    changed = Chain(build_config("quick", {"workdir": str(tmp_path), "candidates": {"top_k": 3}}))
    with pytest.raises(ValueError, match="pool output was made with other settings"):
        changed.reusable("pool", output_exists=True)
    assert changed.reusable("teacher", output_exists=True)  # the teacher does not depend on candidates


def test_gbdt_settings_matter_to_the_students_only_through_a_labeller(tmp_path):
    def chain(**sections):
        return Chain(build_config("quick", {"workdir": str(tmp_path), **sections}))

    assert chain().reusable("students", output_exists=False) is False
    more_trees = {"gbdt": {"objectives": ["multiclass", "lambdamart", "distilled"]}}
    assert chain(**more_trees).reusable("students", output_exists=True)
    assert chain().reusable("gbdt", output_exists=False) is False
    with pytest.raises(ValueError, match="gbdt output was made with other settings"):  # the trees themselves do
        chain(**more_trees).reusable("gbdt", output_exists=True)
    with pytest.raises(ValueError, match="students output was made with other settings"):
        chain(student={"labeller": "teacher+gbdt"}).reusable("students", output_exists=True)
