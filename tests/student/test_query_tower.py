"""A separate query tower (relevance.student.query_tower): a smaller copy of the tower trained into its space,
resumed to the same weights when killed, and carried by the featurizer, the student's manifest and its bundle."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from relevance.config.ml import QueryTowerConfig
from relevance.data.schema import DataContractError
from relevance.student import query_tower
from relevance.student.encoder import BiEncoder

WORDS = ["drill", "sofa", "hose", "lamp", "tile", "faucet", "mug", "rug"]
KINDS = ["cordless", "leather", "garden", "modern", "ceramic", "shower", "blue", "wool"]


def _titles() -> pd.Series:
    return pd.Series({f"i{w}{k}": f"{kind} {word} set {k}" for w, word in enumerate(WORDS)
                      for k, kind in enumerate(KINDS)})


def _config(**overrides) -> QueryTowerConfig:
    settings = {"layers": 1, "epochs": 2, "learning_rate": 3e-3, "batch_size": 8, "checkpoint_every_batches": 2,
                "precision": "fp32", "early_stopping_patience": 5}
    return QueryTowerConfig(**{**settings, **overrides})


TRAIN = [f"{kind} {word}" for word in WORDS for kind in KINDS[:3]]
VALID = [f"{word} {kind}" for word in WORDS[:4] for kind in KINDS[3:5]]


@pytest.fixture(scope="module")
def tower(tiny_bert, tmp_path_factory):
    """The tiny BERT with wider random weights: its vectors differ from text to text (the tiny BERT's own all
    point about the same way, so any copy would already match them), and so do its two layers' outputs."""
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(0)
    model = BertModel.from_pretrained(str(tiny_bert))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embeddings" not in name:
                weight.normal_(0, 0.5)
    directory = tmp_path_factory.mktemp("query-tower-base")
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(directory)
    return directory


def _cosine(a: BiEncoder, b: BiEncoder, texts: list[str]) -> float:
    return float((a.encode(texts) * b.encode(texts)).sum(1).mean())


def test_kept_layers_are_evenly_spaced_and_end_with_the_last():
    assert query_tower.kept_layers(6, 3) == [1, 3, 5]
    assert query_tower.kept_layers(6, 2) == [2, 5]
    assert query_tower.kept_layers(2, 2) == [0, 1]
    with pytest.raises(ValueError, match="between 1 and the tower's 6"):
        query_tower.kept_layers(6, 7)


def test_pseudo_queries_are_spans_of_the_titles_and_repeatable():
    titles = pd.Series(["Cordless Drill Kit 20V", "", "mug"])
    spans = query_tower.pseudo_queries(titles, 3, seed=0)
    assert spans == query_tower.pseudo_queries(titles, 3, seed=0)
    assert "mug" in spans and all(s in "cordless drill kit 20v" or s == "mug" for s in spans)
    assert all(1 <= len(s.split()) <= 5 for s in spans)


def test_a_query_tower_learns_the_towers_space_with_fewer_layers(tower, tmp_path):
    out = query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, _config(epochs=4),
                                         tmp_path / "qt", tmp_path / "work")
    manifest = json.loads((out / query_tower.QUERY_TOWER_MANIFEST).read_text())
    assert manifest["layers"] == 1 and manifest["kept_layers"] == [1]
    # Valid's queries were never trained on, and the trained copy sits closer to the tower there than at its start.
    assert manifest["best"]["valid_loss"] < manifest["start_valid_loss"]
    assert manifest["valid_texts"] == len(VALID)
    small, full = BiEncoder(str(out), 16, "fp32"), BiEncoder(str(tower), 16, "fp32")
    assert small.model.config.num_hidden_layers == 1 and small.dimension == full.dimension
    assert small.fingerprint != full.fingerprint
    assert 1 - _cosine(small, full, VALID) == pytest.approx(manifest["best"]["valid_loss"], abs=1e-4)
    # The same inputs again: the output is reused as is.
    logs = []
    query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, _config(epochs=4),
                                   tmp_path / "qt", tmp_path / "work", log=logs.append)
    assert any("already holds" in line for line in logs)


def test_a_killed_query_tower_run_resumes_and_ends_as_an_uninterrupted_one(tower, tmp_path, monkeypatch):
    config = _config(epochs=3, max_texts_per_epoch=40)  # 5 batches an epoch, a checkpoint every 2
    whole = query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, config, tmp_path / "whole",
                                           tmp_path / "work-whole")
    original = query_tower._QueryTowerRun.after_step

    def killed(self, state, loss):
        original(self, state, loss)
        if (state.epoch, state.batch) == (1, 3):
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(query_tower._QueryTowerRun, "after_step", killed)
    with pytest.raises(KeyboardInterrupt):
        query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, config, tmp_path / "resumed",
                                       tmp_path / "work-resumed")
    assert (tmp_path / "work-resumed" / "checkpoint.pt").exists() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(query_tower._QueryTowerRun, "after_step", original)
    resumed = query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, config,
                                             tmp_path / "resumed", tmp_path / "work-resumed")
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    read = lambda d: json.loads((d / query_tower.QUERY_TOWER_MANIFEST).read_text())["history"]  # noqa: E731
    assert read(whole) == read(resumed)


def test_bad_inputs_are_refused_before_training(tower, tmp_path):
    with pytest.raises(ValueError, match="between 1 and the tower's 2"):
        query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, _config(layers=3),
                                       tmp_path / "a", tmp_path / "w")
    with pytest.raises(DataContractError, match="no valid query texts"):
        query_tower.distil_query_tower(str(tower), TRAIN, ["", None], _titles(), 16, _config(), tmp_path / "b",
                                       tmp_path / "w")
    with pytest.raises(DataContractError, match="every training text is a valid query"):
        query_tower.distil_query_tower(str(tower), VALID, VALID, pd.Series([], dtype=str), 16, _config(),
                                       tmp_path / "c", tmp_path / "w")
    with pytest.raises(ValueError, match="is the tower itself"):
        query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, _config(), tower,
                                       tmp_path / "w")
    with pytest.raises(ValueError, match="student.towers.enabled with student.query_encoder"):
        from relevance.config import build_config

        build_config("quick", {"student": {"towers": {"enabled": True}, "query_encoder": str(tower)}})


def test_the_featurizer_embeds_queries_with_the_query_tower_and_items_with_the_tower(tower, tmp_path):
    from relevance.student.featurizer import build_featurizer

    out = query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, _config(epochs=1),
                                         tmp_path / "qt", tmp_path / "work")
    items = pd.DataFrame({"item_id": _titles().index, "title": _titles().values})
    settings = {"text": {}, "encoder": str(tower), "encoder_max_length": 16, "bm25": {"k1": 1.2, "b": 0.75}}
    shared = build_featurizer(items, settings, tmp_path / "cache")
    separate = build_featurizer(items, {**settings, "query_encoder": str(out)}, tmp_path / "cache")
    queries, ids = ["cordless drill", "mug"], list(items["item_id"][:2])
    np.testing.assert_allclose(separate.item_vectors_for(ids), shared.item_vectors_for(ids), atol=1e-6)
    np.testing.assert_allclose(separate.query_vectors(queries), BiEncoder(str(out), 16).encode(queries), atol=1e-5)
    assert not np.allclose(separate.query_vectors(queries), shared.query_vectors(queries), atol=1e-3)
    assert separate.query_fingerprint == BiEncoder(str(out), 16).fingerprint != shared.query_fingerprint


def test_a_model_manifest_names_the_encoders_that_made_its_features(tower, tiny_bert, tmp_path):
    """Evaluation and export rebuild a model's featurizer from the encoders its manifest names: a config naming
    other encoders than the featurizer's is refused, not recorded."""
    from relevance.config import build_config
    from relevance.student.featurizer import build_featurizer, model_manifest

    out = query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, _config(epochs=1),
                                         tmp_path / "qt", tmp_path / "work")
    items = pd.DataFrame({"item_id": _titles().index, "title": _titles().values})
    settings = {"text": {}, "encoder": str(tower), "encoder_max_length": 16, "bm25": {"k1": 1.2, "b": 0.75},
                "query_encoder": str(out)}
    featurizer = build_featurizer(items, settings, tmp_path / "cache")
    for student, side in (({"encoder": str(tiny_bert), "query_encoder": str(out)}, "student.encoder"),
                          ({"encoder": str(tower)}, "student.query_encoder")):
        config = build_config("quick", {"student": {**student, "encoder_max_length": 16}})
        with pytest.raises(ValueError, match=f"the config names {side}"):
            model_manifest(config, None, featurizer, 10)
    # A model's encoders retrained since (the same path, other weights) are refused when its featurizer is rebuilt.
    from relevance.student.featurizer import model_featurizer

    recorded = {**settings, "encoder_fingerprint": BiEncoder(str(tower), 16).fingerprint,
                "query_encoder_fingerprint": BiEncoder(str(out), 16).fingerprint}
    assert model_featurizer(items, recorded, tmp_path / "cache")[0].query_fingerprint == recorded[
        "query_encoder_fingerprint"]
    with pytest.raises(ValueError, match="retrain the model"):
        model_featurizer(items, {**recorded, "query_encoder_fingerprint": "0" * 16}, tmp_path / "cache")


def test_a_query_tower_through_the_run_its_features_and_its_bundle(finished_run, cli, tmp_path):
    """`relevance distil-query-tower` on a finished run, then the run's students on it (student.query_encoder):
    the student records both towers, the feature store keeps the item tower's version, and the bundle embeds
    queries with the query tower, as training did."""
    import shutil

    import yaml

    from relevance.common.files import read_manifest
    from relevance.platform.feature_store import built_encoder
    from relevance.student.scoring import QueryEncoder

    source, config_path = finished_run
    settings = yaml.safe_load(config_path.read_text())
    settings["student"] = {**settings.get("student", {}), "query_tower": {"layers": 1, "epochs": 1,
                                                                          "precision": "fp32"}}
    distil_config = tmp_path / "distil.yaml"
    distil_config.write_text(yaml.safe_dump(settings))
    result = cli("distil-query-tower", "--config", distil_config, "--out", tmp_path / "qt")
    assert "set student.query_encoder" in result.stdout
    assert json.loads((tmp_path / "qt" / query_tower.QUERY_TOWER_MANIFEST).read_text())["layers"] == 1

    run = tmp_path / "run"
    shutil.copytree(source / "run", run, ignore=shutil.ignore_patterns(
        "student*", "gbdt_*", "export", "feature_repo", "report.*"))
    settings["workdir"] = str(run)
    settings["student"]["query_encoder"] = str(tmp_path / "qt")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    cli("run", "--config", config)
    student = read_manifest(run / "student", "student")
    length = student["encoder_max_length"]
    small, item_tower = BiEncoder(str(tmp_path / "qt"), length), BiEncoder(settings["student"]["encoder"], length)
    assert student["query_encoder"] == str(tmp_path / "qt")
    assert student["query_encoder_fingerprint"] == small.fingerprint != student["encoder_fingerprint"]
    assert student["encoder_fingerprint"] == item_tower.fingerprint  # the items' vectors: the item tower's
    cli("features", "--config", config)
    cli("export", "--config", config)
    bundle = json.loads((run / "export" / "bundle.json").read_text())
    assert built_encoder(run / "feature_repo") == bundle["encoder_fingerprint"] == item_tower.fingerprint
    assert bundle["query_encoder_fingerprint"] == small.fingerprint
    queries = ["cordless drill", "red leather sofa"]
    online = QueryEncoder(run / "export", bundle["encoder_max_length"]).encode(queries)
    np.testing.assert_allclose(online, BiEncoder(str(tmp_path / "qt"), bundle["encoder_max_length"], "fp32")
                               .encode(queries), atol=1e-4)
    assert not np.allclose(online, item_tower.encode(queries), atol=1e-3)


def test_a_query_tower_of_another_tower_or_separate_towers_without_theirs_are_refused(tower, tiny_bert, tmp_path):
    """The featurizer refuses query vectors from another space than its items': a query tower distilled from
    another tower, or separate towers named as the encoder without their query/ folder."""
    import shutil

    from relevance.student.encoder import QUERY_TOWER_DIR, TOWER_MANIFEST
    from relevance.student.featurizer import build_featurizer

    out = query_tower.distil_query_tower(str(tower), TRAIN, VALID, _titles(), 16, _config(epochs=1),
                                         tmp_path / "qt", tmp_path / "work")
    items = pd.DataFrame({"item_id": _titles().index, "title": _titles().values})
    settings = {"text": {}, "encoder": str(tiny_bert), "encoder_max_length": 16, "bm25": {"k1": 1.2, "b": 0.75}}
    with pytest.raises(ValueError, match="was distilled into the space of encoder"):
        build_featurizer(items, {**settings, "query_encoder": str(out)}, tmp_path / "cache")
    separate = tmp_path / "separate"  # separate tuned towers, as relevance.student.towers writes them
    shutil.copytree(tower, separate)
    shutil.copytree(tiny_bert, separate / QUERY_TOWER_DIR)
    (separate / TOWER_MANIFEST).write_text(json.dumps({"kind": "towers", "shared": False}))
    with pytest.raises(ValueError, match="holds separate towers"):
        build_featurizer(items, {**settings, "encoder": str(separate)}, tmp_path / "cache")
    both = build_featurizer(items, {**settings, "encoder": str(separate),
                                    "query_encoder": str(separate / QUERY_TOWER_DIR)}, tmp_path / "cache")
    assert both.query_fingerprint == BiEncoder(str(tiny_bert), 16).fingerprint
    with pytest.raises(ValueError, match="is the query tower of separate towers"):
        build_featurizer(items, {**settings, "encoder": str(tower), "query_encoder": str(separate / QUERY_TOWER_DIR)},
                         tmp_path / "cache")
    # The pool's embedding channel searches with separate towers' own query tower.
    from types import SimpleNamespace

    from relevance.config import build_config
    from relevance.labels.pool import _pool_featurizer

    pool_config = build_config("quick", {"student": {"encoder": str(separate), "encoder_max_length": 16}})
    channel = _pool_featurizer(pool_config, SimpleNamespace(items=items), tmp_path / "cache")
    assert channel.query_fingerprint == both.query_fingerprint
    # A query tower from separate towers shrinks and matches their query tower, in the item tower's space.
    small = query_tower.distil_query_tower(str(separate), TRAIN, VALID, _titles(), 16, _config(epochs=1),
                                           tmp_path / "qt-separate", tmp_path / "work-separate")
    manifest = json.loads((small / query_tower.QUERY_TOWER_MANIFEST).read_text())
    assert manifest["trained_from"] == str(separate / QUERY_TOWER_DIR)
    assert manifest["tower_fingerprint"] == BiEncoder(str(separate), 16).fingerprint
    build_featurizer(items, {**settings, "encoder": str(separate), "query_encoder": str(small)}, tmp_path / "cache")
