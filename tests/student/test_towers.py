"""Tower distillation (relevance.student.towers): learns the teacher's order, resumes to the same towers, and
writes a bi-encoder of its own version."""

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from relevance.config.ml import TowerConfig
from relevance.data.schema import DataContractError
from relevance.student import end_to_end, tower_groups, towers
from relevance.student.encoder import BiEncoder

WORDS = ["drill", "sofa", "hose", "lamp", "tile", "faucet", "mug", "rug"]
KINDS = ["cordless", "leather", "garden", "modern", "ceramic", "shower", "blue", "wool"]


def _catalog() -> pd.Series:
    texts = {f"i{w}{k}": f"{kind} {word} {k}" for w, word in enumerate(WORDS) for k, kind in enumerate(KINDS[:4])}
    return pd.Series(texts)


def _labels(queries: list[str], items: pd.Series, seed: int) -> pd.DataFrame:
    """The teacher's soft labels: grade 4 for items of the query's word, 0 for the others."""
    rng = np.random.default_rng(seed)
    rows = []
    for query in queries:
        word = query.split("-")[1]
        for item_id in rng.choice(items.index, 10, replace=False):
            grade = 4 if items[item_id].split()[-2] == word else 0
            p = np.full(5, 0.02)
            p[grade] = 0.92
            rows.append({"query_id": query, "item_id": item_id, **{f"p_{k}": p[k] for k in range(5)}})
        own = next(i for i in items.index if items[i].split()[-2] == word)
        if own not in {r["item_id"] for r in rows if r["query_id"] == query}:
            p = np.full(5, 0.02)
            p[4] = 0.92
            rows.append({"query_id": query, "item_id": own, **{f"p_{k}": p[k] for k in range(5)}})
    return pd.DataFrame(rows)


@pytest.fixture
def task():
    items = _catalog()
    query_text = pd.Series({f"q-{word}-{n}": f"{word}" if n else f"a {word}" for word in WORDS for n in range(2)})
    queries = list(query_text.index)
    chunks_data = [_labels(queries[:8], items, 0), _labels(queries[8:], items, 1)]
    chunks = [(f"shard-{n}", functools.partial(frame.copy)) for n, frame in enumerate(chunks_data)]
    valid = _labels(queries[::3], items, 2)
    valid["grade"] = valid[[f"p_{k}" for k in range(5)]].to_numpy().argmax(1)
    return chunks, query_text, items, valid[["query_id", "item_id", "grade"]]


def _config(**overrides) -> TowerConfig:
    settings = {"epochs": 2, "learning_rate": 5e-3, "queries_per_batch": 4, "candidates_per_query": 6,
                "checkpoint_every_batches": 1, "precision": "fp32", "early_stopping_patience": 5}
    return TowerConfig(**{**settings, **overrides})


def _train_loss(model_dir, task, config) -> float:
    """The listwise KL of ``model_dir``'s tower on every training group of epoch 0."""
    chunks, query_text, items, _ = task
    model = towers.TowerModel(str(model_dir)).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    q_table = tower_groups.token_table(model_dir.parent / f"{model_dir.name}-tq", list(query_text.index),
                                 query_text.tolist(), tokenizer, 16, "t")
    i_table = tower_groups.token_table(model_dir.parent / f"{model_dir.name}-ti", list(items.index), items.tolist(),
                                 tokenizer, 16, "t")
    losses = []
    with torch.no_grad():
        groups = tower_groups.QueryGroups.build(model_dir.parent / f"{model_dir.name}-buckets", chunks, q_table,
                                                i_table, 5, config)
        for queries, item_rows, valid, targets in groups.epoch(0):
            q = model(*tower_groups.batch_tokens(q_table, queries))
            i = model(*tower_groups.batch_tokens(i_table, item_rows.reshape(-1))).reshape(*item_rows.shape, -1)
            losses.append(float(towers.listwise_kl(q, i, torch.from_numpy(valid), torch.from_numpy(targets),
                                                   config.temperature, config.teacher_temperature)))
    return float(np.mean(losses))


def test_tuned_towers_rank_as_the_teacher_and_are_a_version_of_their_own(tiny_bert, task, tmp_path):
    chunks, query_text, items, valid = task
    config = _config(epochs=4)
    out = towers.distil_towers(chunks, query_text, items, valid, 5, str(tiny_bert), 16, config,
                               tmp_path / "towers", tmp_path / "work")
    tuned_loss, base_loss = _train_loss(out, task, config), _train_loss(tiny_bert, task, config)
    print("train listwise KL", base_loss, "->", tuned_loss)
    assert tuned_loss < 0.8 * base_loss
    manifest = json.loads((out / towers.TOWER_MANIFEST).read_text())
    assert manifest["steps"] > 0 and len(manifest["history"]) >= 1 and np.isfinite(manifest["best"]["valid_loss"])
    assert not (tmp_path / "work" / "checkpoint.pt").exists()
    # The tuned and the base towers read by the same valid loss as early stopping.
    assert towers.tower_valid_loss(out, valid, query_text, items, 16, config, tmp_path / "v1") == \
        pytest.approx(manifest["best"]["valid_loss"], abs=1e-5)
    assert towers.tower_valid_loss(tiny_bert, valid, query_text, items, 16, config, tmp_path / "v2") == \
        pytest.approx(manifest["base_valid_loss"], abs=1e-5)
    assert manifest["best"]["valid_loss"] < manifest["base_valid_loss"]
    tuned, base = BiEncoder(str(out), max_length=16), BiEncoder(str(tiny_bert), max_length=16)
    assert tuned.fingerprint != base.fingerprint  # a new version: cached and stored apart from the frozen one
    assert not np.allclose(tuned.encode(["cordless drill"]), base.encode(["cordless drill"]))
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert towers.distil_towers(chunks, query_text, items, valid, 5, str(tiny_bert), 16, config,
                                tmp_path / "towers", tmp_path / "work") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == before  # same inputs: not trained again


def test_separate_towers_tune_a_query_tower_of_their_own(tiny_bert, task, tmp_path):
    """shared: false: the queries get their own tower, written to the output's query/ folder, and the run names it
    as the student's query encoder."""
    from relevance.config import build_config
    from relevance.chain import Chain

    chunks, query_text, items, valid = task
    config = _config(epochs=4, shared=False)
    out = towers.distil_towers(chunks, query_text, items, valid, 5, str(tiny_bert), 16, config,
                               tmp_path / "towers", tmp_path / "work")
    manifest = json.loads((out / towers.TOWER_MANIFEST).read_text())
    # Not asserted: a lower valid loss. The tiny random BERT gives every text about the same vector, and only
    # shared word embeddings let a query and its items move together there; the real MiniLM starts aligned (the
    # towers study compares both on Home Depot).
    assert manifest["shared"] is False and manifest["steps"] > 0
    shared = towers.distil_towers(chunks, query_text, items, valid, 5, str(tiny_bert), 16, _config(epochs=4),
                                  tmp_path / "shared", tmp_path / "work-shared")
    assert not (shared / towers.QUERY_TOWER_DIR).exists()
    item_tower = BiEncoder(str(out), max_length=16)
    query_tower = BiEncoder(str(out / towers.QUERY_TOWER_DIR), max_length=16)
    prints = {item_tower.fingerprint, query_tower.fingerprint, BiEncoder(str(tiny_bert), max_length=16).fingerprint,
              BiEncoder(str(shared), max_length=16).fingerprint}
    assert len(prints) == 4  # each a version of its own: both towers were trained, apart
    texts = ["cordless drill", "a sofa"]
    assert not np.allclose(query_tower.encode(texts), item_tower.encode(texts), atol=1e-4)
    # As a step of the run, the student reads the item tower and its query tower.
    run = build_config("quick", {"workdir": str(tmp_path / "run"),
                                 "student": {"towers": {"enabled": True, "shared": False}}})
    chain = Chain(run)
    chain.towers_dir.parent.mkdir(parents=True, exist_ok=True)
    chain.towers_dir.symlink_to(out, target_is_directory=True)
    student = chain.student_config(None, tune=False).student
    assert student.encoder == str(out.resolve())
    assert student.query_encoder == str(out.resolve() / towers.QUERY_TOWER_DIR)


@pytest.mark.parametrize("objective", ["listwise_kl", "end_to_end"])
def test_a_killed_tower_run_resumes_and_ends_as_an_uninterrupted_one(tiny_bert, task, tmp_path, monkeypatch,
                                                                     objective):
    chunks, query_text, items, valid = task
    # 10 of the 16 queries an epoch, 4 a batch (3 batches), a checkpoint every 2 batches and at each epoch's end:
    # killed after epoch 1's first batch, the run replays that batch from the end of epoch 0.
    settings = {"epochs": 3, "max_queries_per_epoch": 10, "checkpoint_every_batches": 2}

    def distil(name: str):
        if objective == "end_to_end":  # the towers and the MLP: both must end as uninterrupted
            return _end_to_end(tiny_bert, task, tmp_path, name, **settings)
        return towers.distil_towers(chunks, query_text, items, valid, 5, str(tiny_bert), 16, _config(**settings),
                                    tmp_path / name, tmp_path / f"work-{name}")

    whole = distil("whole")
    run_class = end_to_end.EndToEndRun if objective == "end_to_end" else towers._TowerRun
    original = run_class.after_step
    seen = []

    def killed(self, state, loss):
        original(self, state, loss)
        seen.append((state.epoch, state.batch))
        if (state.epoch, state.batch) == (1, 1):
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(run_class, "after_step", killed)
    with pytest.raises(KeyboardInterrupt):
        distil("resumed")
    assert seen == [(0, 1), (0, 2), (0, 3), (1, 1)]
    assert (tmp_path / "work-resumed" / "checkpoint.pt").exists() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(run_class, "after_step", original)
    resumed = distil("resumed")
    from safetensors.torch import load_file

    files = ["model.safetensors"] + ([end_to_end.END_TO_END_MLP] if objective == "end_to_end" else [])
    for file in files:
        a, b = load_file(whole / file), load_file(resumed / file)
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=f"{file}: {name}")
    assert json.loads((whole / towers.TOWER_MANIFEST).read_text())["history"] == \
        json.loads((resumed / towers.TOWER_MANIFEST).read_text())["history"]


def test_a_query_split_across_label_shards_is_one_group(tiny_bert, task, tmp_path):
    """Label shards are row ranges of the pool: a query's candidates from every shard rank together."""
    _, query_text, items, _ = task
    labels = _labels(["q-drill-0"], items, 0)
    chunks = [("a", functools.partial(labels.iloc[:5].copy)), ("b", functools.partial(labels.iloc[5:].copy))]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    q_table = tower_groups.token_table(tmp_path / "q", list(query_text.index), query_text.tolist(), tokenizer, 16, "t")
    i_table = tower_groups.token_table(tmp_path / "i", list(items.index), items.tolist(), tokenizer, 16, "t")
    groups = tower_groups.QueryGroups.build(tmp_path / "b", chunks, q_table, i_table, 5,
                                            _config(candidates_per_query=len(labels)))
    batches = list(groups.epoch(0))
    assert len(batches) == 1 and batches[0][2].sum() == len(labels)  # one query, every candidate of both shards


def test_bad_inputs_are_refused_before_training(tiny_bert, task, tmp_path):
    chunks, query_text, items, valid = task
    with pytest.raises(DataContractError, match="lack column"):
        towers.distil_towers(chunks, query_text, items, valid.drop(columns="grade"), 5, str(tiny_bert), 16,
                             _config(), tmp_path / "t", tmp_path / "w")
    with pytest.raises(DataContractError, match="integers"):
        towers.distil_towers(chunks, query_text, items, valid.assign(grade=1.5), 5, str(tiny_bert), 16, _config(),
                             tmp_path / "t", tmp_path / "w")
    with pytest.raises(DataContractError, match="have no text"):
        towers.distil_towers(chunks, query_text.iloc[2:], items, valid, 5, str(tiny_bert), 16, _config(),
                             tmp_path / "t", tmp_path / "w")
    broken = chunks[0][1]()
    broken.loc[broken.index[0], "p_0"] = np.nan
    with pytest.raises(DataContractError, match="not a distribution"):
        towers.distil_towers([("x", functools.partial(broken.copy))], query_text, items, valid, 5, str(tiny_bert),
                             16, _config(), tmp_path / "t", tmp_path / "w")
    with pytest.raises(DataContractError, match="lacks column"):
        towers.distil_towers([("x", lambda: chunks[0][1]().drop(columns="p_4"))], query_text, items, valid, 5,
                             str(tiny_bert), 16, _config(), tmp_path / "t", tmp_path / "w")
    with pytest.raises(DataContractError, match="2 or more judged item"):
        towers.distil_towers(chunks, query_text, items, valid.drop_duplicates("query_id"), 5, str(tiny_bert), 16,
                             _config(), tmp_path / "t", tmp_path / "w")
    with pytest.raises(DataContractError, match="nothing to rank"):
        towers.distil_towers([("x", lambda: chunks[0][1]().drop_duplicates("query_id"))], query_text, items, valid,
                             5, str(tiny_bert), 16, _config(), tmp_path / "t", tmp_path / "w2")
    with pytest.raises(ValueError, match="the base model itself"):
        towers.distil_towers(chunks, query_text, items, valid, 5, str(tiny_bert), 16, _config(), tiny_bert,
                             tmp_path / "w")
    orphan = [("x", lambda: chunks[0][1]().assign(item_id="nowhere"))]
    with pytest.raises(DataContractError, match="item id"):
        towers.distil_towers(orphan, query_text, items, valid, 5, str(tiny_bert), 16, _config(), tmp_path / "t",
                             tmp_path / "w")
    assert not (tmp_path / "t").exists()


def test_distil_towers_on_a_finished_run(finished_run, cli, tmp_path, tiny_bert):
    """`relevance distil-towers` reads the run's labelled pool and valid lists and writes a tuned encoder."""
    _, config = finished_run
    result = cli("distil-towers", "--config", config, "--out", tmp_path / "towers")
    assert "set student.encoder" in result.stdout
    manifest = (tmp_path / "towers" / towers.TOWER_MANIFEST).read_text()
    assert '"kind": "towers"' in manifest and '"history"' in manifest
    assert BiEncoder(str(tmp_path / "towers")).fingerprint != BiEncoder(str(tiny_bert)).fingerprint


def test_towers_as_a_step_of_the_run_feed_the_student_its_features_and_its_bundle(finished_run, cli, tmp_path):
    """`relevance run` with student.towers.enabled and student.query_tower.enabled on a finished run's data,
    teacher and labels: the towers are tuned after the labels and a smaller query tower is distilled from them, the
    run's student and GBDTs read both, the frozen encoder's student stays a report row, and `relevance features` /
    `relevance export` carry the tuned encoder's version and the query tower to serving."""
    import shutil

    import yaml

    from relevance.common.files import read_manifest
    from relevance.platform.feature_store import built_encoder

    source, config_path = finished_run
    run = tmp_path / "run"
    shutil.copytree(source / "run", run, ignore=shutil.ignore_patterns(
        "student*", "gbdt_*", "export", "feature_repo", "report.*", "towers"))
    settings = yaml.safe_load(config_path.read_text())
    settings["workdir"] = str(run)
    settings["student"] = {**settings.get("student", {}),
                           "towers": {"enabled": True, "epochs": 1, "queries_per_batch": 4, "precision": "fp32"},
                           "query_tower": {"enabled": True, "layers": 1, "epochs": 1, "precision": "fp32"}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    cli("run", "--config", config)
    report = json.loads((run / "report.json").read_text())["models"]
    assert {"student", "student_frozen_towers", "student_human_only"} <= set(report)
    tuned, frozen = read_manifest(run / "student", "student"), read_manifest(run / "student_frozen_towers", "student")
    human = read_manifest(run / "student_human_only", "student")
    assert tuned["encoder"] == str((run / "towers").resolve())
    assert frozen["encoder"] == human["encoder"] == settings["student"]["encoder"]
    assert frozen.get("query_encoder") is None and human.get("query_encoder") is None
    assert tuned["encoder_fingerprint"] != frozen["encoder_fingerprint"]
    # The query tower: distilled from the tuned towers (their space), one layer, and what the student reads.
    query = json.loads((run / "query_tower" / "query_tower.json").read_text())
    assert query["layers"] == 1 and query["tower_fingerprint"] == tuned["encoder_fingerprint"]
    length = tuned["encoder_max_length"]
    assert tuned["query_encoder"] == str((run / "query_tower").resolve())
    assert tuned["query_encoder_fingerprint"] == BiEncoder(str(run / "query_tower"), length).fingerprint
    assert tuned["query_encoder_fingerprint"] not in (tuned["encoder_fingerprint"], frozen["encoder_fingerprint"])
    gbdts = sorted(run.glob("gbdt_*"))
    assert gbdts
    for gbdt in gbdts:  # the baselines read the student's features, and name the encoders that made them
        made = read_manifest(gbdt)
        assert made["encoder_fingerprint"] == tuned["encoder_fingerprint"]
        assert (made["encoder"], made["query_encoder"]) == (tuned["encoder"], tuned["query_encoder"])
    steps = (run / "steps.json").read_text()
    cli("run", "--config", config)  # a rerun reuses every step, the query tower's included
    assert (run / "steps.json").read_text() == steps
    cli("features", "--config", config)
    cli("export", "--config", config)
    bundle = json.loads((run / "export" / "bundle.json").read_text())
    assert built_encoder(run / "feature_repo") == bundle["encoder_fingerprint"] == tuned["encoder_fingerprint"]
    assert bundle["query_encoder_fingerprint"] == tuned["query_encoder_fingerprint"]


def test_towers_as_a_step_are_refused_where_they_cannot_hold():
    from relevance.config import build_config, require_pipeline_settings

    towers_on = {"student": {"towers": {"enabled": True}}}
    with pytest.raises(ValueError, match="labeller 'teacher\\+gbdt'"):
        build_config("quick", {"student": {"towers": {"enabled": True}, "labeller": "teacher+gbdt"}})
    with pytest.raises(ValueError, match="the pipeline has no towers step"):
        require_pipeline_settings(build_config("quick", towers_on))
    from relevance.pipelines.training import build_pipeline

    with pytest.raises(ValueError, match="the pipeline has no towers step"):
        build_pipeline("quick", towers_on)
    query_tower_on = {"student": {"query_tower": {"enabled": True}}}
    with pytest.raises(ValueError, match="the pipeline has no query-tower step"):
        require_pipeline_settings(build_config("quick", query_tower_on))
    with pytest.raises(ValueError, match="student.query_tower.enabled with student.query_encoder"):
        build_config("quick", {"student": {"query_tower": {"enabled": True}, "query_encoder": "some/tower"}})


def _lexical(items: pd.Series):
    """The featurizer's lexical block over the tiny catalog (titles: the item texts), without an encoder."""
    from relevance.models.bm25 import BM25Index
    from relevance.student.featurizer import PairFeaturizer

    return PairFeaturizer(items, items, None, BM25Index(items.index.to_numpy(), items.tolist()))


def _end_to_end(tiny_bert, task, tmp_path, name: str, **overrides):
    from relevance.config import StudentConfig

    chunks, query_text, items, valid = task
    config = _config(objective="end_to_end", **overrides)
    student = StudentConfig(hidden=[16], learning_rate=1e-2, dropout=0.0)
    return towers.distil_towers(chunks, query_text, items, valid, 5, str(tiny_bert), 16, config, tmp_path / name,
                                tmp_path / f"work-{name}", student=student, lexical=_lexical(items))


def test_towers_and_mlp_trained_end_to_end_learn_the_teacher(tiny_bert, task, tmp_path):
    """objective end_to_end: the towers and the student's MLP on the KL to the teacher per pair; the MLP is written
    beside the towers and predicts valid's grades better than the most common grade."""
    from safetensors.torch import load_file

    _, _, _, valid = task
    out = _end_to_end(tiny_bert, task, tmp_path, "e2e", epochs=4)
    manifest = json.loads((out / towers.TOWER_MANIFEST).read_text())
    assert manifest["objective"] == "end_to_end" and manifest["mlp"]["student"]["hidden"] == [16]
    majority = valid["grade"].value_counts(normalize=True).max()
    print("valid accuracy", manifest["best"]["valid_accuracy"], "majority", majority)
    assert manifest["best"]["valid_accuracy"] > majority + 0.05
    assert manifest["history"][-1]["valid_loss"] < manifest["history"][0]["valid_loss"] or manifest["best"]["epoch"] > 1
    state = load_file(out / end_to_end.END_TO_END_MLP)
    assert state["feature_std"].shape == (manifest["mlp"]["num_features"],) and (state["feature_std"] > 0).all()
    assert BiEncoder(str(out), max_length=16).fingerprint != BiEncoder(str(tiny_bert), max_length=16).fingerprint
    # Its own buckets (with the teacher's probabilities) and its own key: the listwise towers are another output.
    assert (tmp_path / "work-e2e" / "buckets-probs" / "buckets.json").exists()
    listwise = json.loads((towers.distil_towers(*task[:4], 5, str(tiny_bert), 16, _config(epochs=1), tmp_path / "lw",
                                                tmp_path / "work-lw") / towers.TOWER_MANIFEST).read_text())
    assert listwise["key"] != manifest["key"] and listwise["mlp"] is None
    with pytest.raises(ValueError, match="student's settings"):
        towers.distil_towers(*task[:4], 5, str(tiny_bert), 16, _config(objective="end_to_end"), tmp_path / "x",
                             tmp_path / "work-x")


def test_the_end_to_end_mlp_becomes_a_student_on_its_towers(finished_run, tmp_path, monkeypatch):
    """Chain.towers with objective end_to_end on a finished run's labels (the MLP reads the run's lexical block),
    then relevance.student.end_to_end.end_to_end_student: a student directory whose featurizer embeds with those
    towers, calibrated on valid, which loads and scores like any student; towers without an MLP are refused."""
    import shutil

    from relevance.chain import Chain
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.student.end_to_end import end_to_end_student
    from relevance.student.featurizer import build_featurizer, featurizer_settings
    from relevance.student.model import Student

    source, config_path = finished_run
    monkeypatch.setenv("RELEVANCE_CPU_BF16", "0")  # the featurizer's encoder in fp32, as the towers train here
    run = tmp_path / "run"
    shutil.copytree(source / "run", run, ignore=shutil.ignore_patterns("student*", "gbdt_*", "export", "towers"))
    config = load_config(config_path)
    config.workdir = str(run)
    config.student.towers = config.student.towers.model_copy(update={
        "objective": "end_to_end", "epochs": 1, "queries_per_batch": 4, "precision": "fp32"})
    chain = Chain(config)
    dataset = chain.dataset()
    out = chain.towers(dataset, tmp_path / "towers")
    tuned = config.model_copy(deep=True)
    tuned.student.encoder = str(out.resolve())
    featurizer = build_featurizer(dataset.items, featurizer_settings(tuned), chain.embeddings_dir)
    teacher = read_manifest(chain.teacher_dir, "teacher")["teacher_version"]
    student_dir = end_to_end_student(tuned, dataset, out, featurizer, tmp_path / "student", teacher)
    student = Student.load(student_dir)
    manifest = student.manifest
    assert manifest["encoder"] == str(out.resolve()) and "end to end" in manifest["trained_on"]
    assert manifest["encoder_fingerprint"] == featurizer.cache.encoder.fingerprint
    valid = dataset.split("valid")
    probs = student.predict_proba(featurizer.pair_features(valid, dataset.query_text), calibrated=False)
    accuracy = float((probs.argmax(1) == valid["grade"].to_numpy()).mean())
    assert accuracy == pytest.approx(manifest["metrics"]["best"]["valid_accuracy"], abs=1e-6)
    # Training's valid measure and the featurizer's agree: the same pairs, the same vectors (fp32 here).
    trained = json.loads((out / towers.TOWER_MANIFEST).read_text())["best"]["valid_accuracy"]
    assert accuracy == pytest.approx(trained, abs=1e-6)
    assert "calibration" in manifest["metrics"]
    other_bm25 = build_featurizer(dataset.items, {**featurizer_settings(tuned), "bm25": {"k1": 0.9, "b": 0.3}},
                                  chain.embeddings_dir)
    with pytest.raises(ValueError, match="lexical features"):
        end_to_end_student(tuned, dataset, out, other_bm25, tmp_path / "other", teacher)
    with pytest.raises(ValueError, match="student.hidden"):
        end_to_end_student(tuned.model_copy(update={"student": tuned.student.model_copy(update={"hidden": [7]})}),
                           dataset, out, featurizer, tmp_path / "other", teacher)
    listwise = config.model_copy(deep=True)
    listwise.student.towers = listwise.student.towers.model_copy(update={"objective": "listwise_kl"})
    plain = Chain(listwise).towers(dataset, tmp_path / "plain")
    with pytest.raises(ValueError, match="not towers trained end to end"):
        end_to_end_student(tuned, dataset, plain, featurizer, tmp_path / "other", teacher)


def test_the_listwise_key_is_the_one_finished_runs_hold_and_end_to_end_keys_follow_their_inputs(task):
    """The key a finished run's towers were written under (before end to end existed) must not move, or every run
    would tune its towers again; end to end, the MLP's settings and the lexical block's inputs retrain."""
    from types import SimpleNamespace

    from relevance.config import StudentConfig

    valid = pd.DataFrame({"query_id": ["q1", "q1", "q2"], "item_id": ["a", "b", "a"], "grade": [3, 0, 1]})
    groups = SimpleNamespace(fingerprint="fp")
    # Computed with the code of 44c048d, the last commit before the objective setting.
    assert towers._key(groups, "origin", valid, TowerConfig(epochs=2), None, None) == "94aa618dbaf7bce1"
    assert towers._key(groups, "origin", valid, TowerConfig(epochs=2, shared=False), None, None) == "25b489397e7b55d8"
    items = task[2]
    lexical, other = _lexical(items), _lexical(items.str.upper())
    assert lexical.lexical_fingerprint != other.lexical_fingerprint
    e2e = TowerConfig(epochs=2, objective="end_to_end")
    keys = {towers._key(groups, "origin", valid, e2e, StudentConfig(hidden=[16]), lexical),
            towers._key(groups, "origin", valid, e2e, StudentConfig(hidden=[32]), lexical),
            towers._key(groups, "origin", valid, e2e, StudentConfig(hidden=[16]), other),
            towers._key(groups, "origin", valid, TowerConfig(epochs=2), None, None)}
    assert len(keys) == 4
