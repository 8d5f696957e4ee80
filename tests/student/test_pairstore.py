"""Out-of-core distillation: embedding tables, the pair store, batches assembled on the fly, and a distillation
killed mid-epoch that resumes without losing or repeating a batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from relevance.config import StudentConfig
from relevance.data.schema import DataContractError
from relevance.student.featurizer import LEXICAL_FEATURES, assemble
from relevance.student.model import ArrayBatches, fit_student
from relevance.student.pairstore import EmbeddingTable, StoreBatches, build_pair_store

DIM, K = 8, 3
LEX = len(LEXICAL_FEATURES) - 1


def _unit(rng, rows):
    v = rng.normal(size=(rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def world(tmp_path):
    """Tables of 30 queries and 20 items, and a labelling of 600 pairs in 5 chunks (+ one judged chunk)."""
    rng = np.random.default_rng(0)
    queries, items = [f"q{i}" for i in range(30)], [f"i{i}" for i in range(20)]
    qv, iv = dict(zip(queries, _unit(rng, 30))), dict(zip(items, _unit(rng, 20)))
    query_table = EmbeddingTable.build(tmp_path / "tables/queries", queries, queries,
                                       lambda keys: np.stack([qv[k] for k in keys]), "test", "float32", chunk_rows=7)
    item_table = EmbeddingTable.build(tmp_path / "tables/items", items, items,
                                      lambda keys: np.stack([iv[k] for k in keys]), "test", "float32", chunk_rows=7)
    pairs = pd.DataFrame([(q, i) for q in queries for i in items], columns=["query_id", "item_id"])
    pairs = pairs.sample(n=600, random_state=0).reset_index(drop=True)
    logits = rng.normal(size=(600, K))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = pairs.assign(**{f"p_{k}": probs[:, k] for k in range(K)}, teacher_version="teacher-x")
    lexical = {(q, i): rng.normal(size=LEX).astype(np.float32) for q, i in zip(pairs["query_id"], pairs["item_id"])}

    def lex(frame):
        return np.stack([lexical[(q, i)] for q, i in zip(frame["query_id"], frame["item_id"])])

    chunks = [(f"chunk-{c}", lambda part=labels.iloc[c * 120:(c + 1) * 120]: part) for c in range(5)]
    return {"tmp": tmp_path, "qv": qv, "iv": iv, "tables": (query_table, item_table), "labels": labels,
            "lex": lex, "chunks": chunks}


def test_batches_assemble_exactly_the_featurizers_vectors_and_visit_each_pair_once(world):
    query_table, item_table = world["tables"]
    store = build_pair_store(world["tmp"] / "pairs", world["chunks"], world["lex"], query_table, item_table, K)
    batches = StoreBatches(store, query_table, item_table, batch_size=64, seed=3, window_shards=2)
    labels = world["labels"]
    expected = assemble(np.stack([world["qv"][q] for q in labels["query_id"]]),
                        np.stack([world["iv"][i] for i in labels["item_id"]]), world["lex"](labels))
    seen = [(x, t) for x, t, _ in batches.epoch(0)]
    x = np.concatenate([b[0] for b in seen])
    targets = np.concatenate([b[1] for b in seen])
    assert x.shape == expected.shape == (600, 4 * DIM + len(LEXICAL_FEATURES))
    # The same 600 vectors (one definition: relevance.student.featurizer.assemble), each once, with its own label.
    order_x, order_e = np.lexsort(x.T[::-1]), np.lexsort(expected.T[::-1])
    np.testing.assert_allclose(x[order_x], expected[order_e], rtol=1e-6)
    np.testing.assert_allclose(targets[order_x], labels[[f"p_{k}" for k in range(K)]].to_numpy()[order_e], rtol=1e-6)
    assert len(seen) == batches.num_batches(0)
    # Epochs differ in order; an epoch started at batch b is exactly the tail of the full epoch.
    assert not np.array_equal(np.concatenate([b[0] for b, _, _ in [(x, 0, 0) for x, *_ in batches.epoch(1)]]), x)
    tail = [b for b, _, _ in batches.epoch(0, start_batch=4)]
    np.testing.assert_array_equal(np.concatenate(tail), x[sum(len(b[0]) for b in seen[:4]):])


def test_a_rebuild_reuses_written_shards_and_bad_chunks_are_clear_errors(world):
    query_table, item_table = world["tables"]
    calls = []

    def counted(chunks):
        return [(source, lambda load=load, source=source: calls.append(source) or load()) for source, load in chunks]

    build_pair_store(world["tmp"] / "pairs", counted(world["chunks"][:3]), world["lex"], query_table, item_table, K)
    assert len(calls) == 3
    calls.clear()  # a resumed build (e.g. after a kill) writes only the shards it lacks
    build_pair_store(world["tmp"] / "pairs", counted(world["chunks"]), world["lex"], query_table, item_table, K)
    assert calls == ["chunk-3", "chunk-4"]
    unknown = world["labels"].iloc[:5].assign(query_id="nobody")
    with pytest.raises(DataContractError, match="query id.*nobody"):
        build_pair_store(world["tmp"] / "bad", [("x", lambda: unknown)], world["lex"], query_table, item_table, K)
    with pytest.raises(DataContractError, match=r"missing column\(s\) \['p_2'\]"):
        build_pair_store(world["tmp"] / "bad", [("y", lambda: world["labels"].drop(columns="p_2"))], world["lex"],
                         query_table, item_table, K)
    with pytest.raises(DataContractError, match="not a complete pair store"):
        StoreBatches(world["tmp"] / "bad", query_table, item_table, 8)


def test_float16_tables_halve_the_bytes_and_are_released(world, tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"x{i}" for i in range(50)]
    vectors = _unit(rng, 50)
    table = EmbeddingTable.build(tmp_path / "t16", ids, ids, lambda keys: vectors[[ids.index(k) for k in keys]],
                                 "test", "float16")
    assert table.vectors.dtype == np.float16 and table.vectors.nbytes == 50 * DIM * 2
    np.testing.assert_allclose(table.gather(np.array([3, 7])), vectors[[3, 7]], atol=1e-3)
    table.release()  # pages dropped from the process, data still readable
    np.testing.assert_allclose(table.gather(np.array([3])), vectors[[3]], atol=1e-3)
    assert EmbeddingTable.build(tmp_path / "t16", ids, ids, None, "test", "float16").fingerprint == table.fingerprint
    with pytest.raises(DataContractError, match="no row"):
        table.rows(["x1", "missing"])


def test_a_distillation_killed_mid_epoch_resumes_from_its_checkpoint(world, tmp_path):
    """Killed in the middle of epoch 2, the rerun resumes from the last checkpoint and ends with exactly the
    weights of a run never interrupted: no batch lost, none seen twice."""
    query_table, item_table = world["tables"]
    store = build_pair_store(world["tmp"] / "pairs", world["chunks"], world["lex"], query_table, item_table, K)
    rng = np.random.default_rng(2)
    valid_x, valid_y = rng.normal(size=(40, 4 * DIM + len(LEXICAL_FEATURES))).astype(np.float32), rng.integers(0, K, 40)
    config = StudentConfig(hidden=[16], epochs=3, batch_size=32, early_stopping_patience=5, calibration="none")

    def fit(checkpoint, on_batch=None, log=lambda _: None):
        batches = StoreBatches(store, query_table, item_table, config.batch_size, config.seed, window_shards=2)
        return fit_student(batches, valid_x, valid_y, K, config, log=log, checkpoint=checkpoint, checkpoint_every=4,
                           on_batch=on_batch)

    reference, _ = fit(tmp_path / "reference.pt")

    class Killed(Exception):
        pass

    def kill(epoch, batch):
        if epoch == 1 and batch == 10:  # 19 batches per epoch: two checkpoints in, mid-epoch
            raise Killed

    with pytest.raises(Killed):
        fit(tmp_path / "run.pt", on_batch=kill)
    messages = []
    resumed, metrics = fit(tmp_path / "run.pt", log=messages.append)
    assert any("resuming" in m and "epoch 2, batch 8" in m for m in messages), messages
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_array_batches_and_store_batches_train_the_same_loop(world):
    x = np.random.default_rng(3).normal(size=(100, 5)).astype(np.float32)
    batches = ArrayBatches(x, np.zeros((100, K), np.float32), None, batch_size=30, seed=0)
    rows = np.concatenate([b for b, _, _ in batches.epoch(0)])
    assert sorted(map(tuple, rows)) == sorted(map(tuple, x)) and batches.num_batches(0) == 4
    with pytest.raises(ValueError, match="100 feature rows but 99 targets"):
        ArrayBatches(x, np.zeros((99, K)), None, 30)


def test_a_new_teacher_on_the_same_pairs_never_reuses_the_old_labels(world):
    """An in-memory labelling (relevance.student.distillation's frame chunks, as the scaling study passes) names its
    chunks by their content: a work directory left by a killed run with teacher A's labels must not serve
    teacher B's labels of the same pairs."""
    from relevance.student.distillation import _frame_chunks

    query_table, item_table = world["tables"]
    old = world["labels"]
    probs = [f"p_{k}" for k in range(K)]
    new = old.assign(teacher_version="teacher-y", **{p: old[probs[::-1]].to_numpy()[:, i] for i, p in enumerate(probs)})
    directory = world["tmp"] / "pairs"
    build_pair_store(directory, _frame_chunks(old, 200), world["lex"], query_table, item_table, K)
    store = build_pair_store(directory, _frame_chunks(new, 200), world["lex"], query_table, item_table, K)
    batches = StoreBatches(store, query_table, item_table, batch_size=600, seed=0, window_shards=5)
    targets = np.concatenate([t for _, t, _ in batches.epoch(0)])
    assert np.allclose(np.sort(targets[:, 0]), np.sort(new["p_0"].to_numpy()), atol=1e-6)
    assert not np.allclose(np.sort(targets[:, 0]), np.sort(old["p_0"].to_numpy()), atol=1e-6)


def test_a_window_mixes_queries_from_the_whole_pool_when_the_labels_come_grouped_by_query(world, monkeypatch):
    """A pool comes grouped by query (bucketed by a hash of its id): a window of whole shards would hold a few
    queries' candidates. A window gathers shuffled row groups from every shard instead, each pair still once an
    epoch; a shard written by the old layout is rewritten, not reused."""
    from relevance.student import pairstore

    query_table, item_table = world["tables"]
    grouped = world["labels"].sort_values(["query_id", "item_id"]).reset_index(drop=True)
    chunks = [(f"grouped-{c}", lambda part=grouped.iloc[c * 120:(c + 1) * 120]: part) for c in range(5)]
    chunk_of = {q: c for c in range(5) for q in grouped["query_id"].iloc[c * 120:(c + 1) * 120]}
    monkeypatch.setattr(pairstore, "PAIR_ROW_GROUP", 16)
    store = build_pair_store(world["tmp"] / "pairs", chunks, world["lex"], query_table, item_table, K)
    batches = StoreBatches(store, query_table, item_table, batch_size=120, seed=0, window_shards=1)
    assert all(s["row_groups"] == [16] * 7 + [8] for s in batches.meta["shards"])
    seen, windows = [], [window for window, _ in batches._windows(0)]
    for window in windows:
        rows = batches.read(window)
        # About one shard's rows each (whole groups, so a window may overshoot), the rest in the last.
        assert 120 <= len(rows) < 136 or window is windows[-1]
        queries = {f"q{row}" for row in rows["query_row"]}  # the table's rows are q0..q29 in order
        assert len({chunk_of[q] for q in queries}) >= 3  # one shard in label order would be one chunk's queries
        seen += list(zip(rows["query_row"], rows["item_row"]))
    full = [x for x, _, _ in batches.epoch(0)]
    assert len(seen) == len(set(seen)) == 600 == sum(len(x) for x in full) and len(full) == batches.num_batches(0)
    np.testing.assert_array_equal(np.concatenate([x for x, _, _ in batches.epoch(0, start_batch=3)]),
                                  np.concatenate(full[3:]))  # a resumed epoch is exactly the tail
    # A shard left by a build of another layout (here: other row groups) is written again.
    calls = []
    monkeypatch.setattr(pairstore, "PAIR_ROW_GROUP", 32)
    build_pair_store(store, [(s, lambda load=load, s=s: calls.append(s) or load()) for s, load in chunks],
                     world["lex"], query_table, item_table, K)
    rebuilt = StoreBatches(store, query_table, item_table, batch_size=120, seed=0, window_shards=1)
    assert len(calls) == 5 and all(s["row_groups"] == [32] * 3 + [24] for s in rebuilt.meta["shards"])
