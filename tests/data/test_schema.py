"""relevance.data.schema: the contract's checks name what is wrong."""

from __future__ import annotations

import pandas as pd
import pytest


def test_a_query_in_two_splits_is_rejected():
    from relevance.data.schema import DataContractError, validate_judgments

    judgments = pd.DataFrame({"query_id": ["q1", "q1"], "item_id": ["a", "b"], "grade": [1, 0],
                              "split": ["train", "test"]})
    with pytest.raises(DataContractError, match="more than one split"):
        validate_judgments(judgments, 3)
