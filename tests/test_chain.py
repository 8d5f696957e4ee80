"""The chain's steps: clear errors before any training."""

from __future__ import annotations

from pathlib import Path

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


def test_the_embedding_channel_ties_the_pool_to_the_student_encoder(tmp_path):
    def chain(workdir: str, encoder: str, embedding_top_k: int) -> Chain:
        return Chain(build_config("quick", {"workdir": str(tmp_path / workdir), "student": {"encoder": encoder},
                                            "candidates": {"embedding_top_k": embedding_top_k}}))

    assert chain("bm25", "minilm-l6", 0).reusable("pool", output_exists=False) is False
    assert chain("bm25", "other-encoder", 0).reusable("pool", output_exists=True)  # BM25 alone: no encoder
    assert chain("both", "minilm-l6", 5).reusable("pool", output_exists=False) is False
    with pytest.raises(ValueError, match="pool output was made with other settings"):
        chain("both", "other-encoder", 5).reusable("pool", output_exists=True)


def test_the_student_channel_settings_matter_only_with_the_channel_on(tmp_path):
    def chain(**candidates) -> Chain:
        return Chain(build_config("quick", {"workdir": str(tmp_path / "w"), "candidates": candidates}))

    assert chain().reusable("pool", output_exists=False) is False
    assert chain(student_model="/elsewhere/student", student_depth=50).reusable("pool", output_exists=True)
    with pytest.raises(ValueError, match="pool output was made with other settings"):
        chain(student_top_k=2, student_model="/elsewhere/student").reusable("pool", output_exists=True)


def test_this_runs_own_student_cannot_choose_its_pool(tmp_path):
    config = build_config("quick", {"workdir": str(tmp_path / "w"), "candidates": {
        "student_top_k": 2, "student_model": str(tmp_path / "w" / "student")}})
    with pytest.raises(ValueError, match="inside this run's workdir"):
        Chain(config).pool(None)


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


def test_trees_grown_under_other_default_settings_are_not_reused(tmp_path):
    """The step hash keeps only non-default settings, so trees grown before LambdaMART's defaults changed would pass
    it: their manifests' settings are compared too. Only LambdaMART reads its own; adding an objective is no change."""
    import json

    chain = Chain(build_config("quick", {"workdir": str(tmp_path)}))
    grown = chain.config.gbdt.model_dump()
    old_lambdamart = {**grown, "lambdamart": {**grown["lambdamart"], "learning_rate": 0.05}, "objectives": ["multiclass"]}
    for name, made in (("gbdt_multiclass", old_lambdamart), ("gbdt_lambdamart", old_lambdamart)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"kind": "gbdt", "config": made}))
    with pytest.raises(ValueError, match=r"gbdt_lambdamart was made with other gbdt settings \(changed: \['lambdamart'\]\)"):
        chain.baselines(None)
    (tmp_path / "gbdt_lambdamart" / "manifest.json").write_text(json.dumps({"kind": "gbdt", "config": grown}))
    chain.reusable("gbdt", output_exists=False)
    assert chain.baselines(None) == chain.gbdt_dirs  # multiclass kept: LambdaMART's settings are not its own


# ---- the one way into teacher training: the step cache here, the launcher choice in relevance.teacher.launch ----


def _tiny_dataset() -> Dataset:
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red sofa", "lamp"]})
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["sofa", "lamp"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2"], "item_id": ["a", "b"], "grade": [2, 0],
                              "split": ["train", "valid"]})
    return Dataset(DatasetInfo("tiny", 3), items, queries, judgments).validated()


def test_the_launcher_is_chosen_in_one_place(tmp_path, monkeypatch):
    from relevance.teacher import launch

    config = build_config("quick", {"workdir": str(tmp_path)})
    assert launch.in_this_process(config)
    torchrun = launch.launch_settings(config, nproc_per_node=2)
    trainjob = launch.launch_settings(config, trainjob=True)
    assert not launch.in_this_process(torchrun) and not launch.in_this_process(trainjob)
    assert config.teacher.distributed.nproc_per_node == 1 and config.teacher.distributed.launcher == "local"
    assert launch.launch_settings(config) == config and launch.launch_settings(config) is not config

    calls = []
    monkeypatch.setattr(launch, "launch_local", lambda *args, **kwargs: calls.append(("local", args)) or args[2])

    def remote(*args, **kwargs):
        calls.append(("remote", args))
        return args[2]

    assert launch.launch_teacher(torchrun, "data", "out", remote=remote) == "out"
    assert launch.launch_teacher(trainjob, "data", "out", remote=remote) == "out"
    assert [(kind, args[0]) for kind, args in calls] == [("local", torchrun), ("remote", trainjob)]
    with pytest.raises(ValueError, match="launcher is trainjob, and nothing here can submit a TrainJob"):
        launch.launch_teacher(trainjob, "data", "out")


def test_chain_teacher_trains_once_where_the_launch_settings_say(tmp_path, monkeypatch):
    """In this process without launch settings (`relevance run`) or with local one-process ones; out of it
    (torchrun, a TrainJob) through the launcher choice, on the prepared dataset; a cached teacher is reused."""
    import json

    from relevance.teacher import launch, train

    dataset = _tiny_dataset()
    calls = []

    def trained(out):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "manifest.json").write_text(json.dumps({"kind": "teacher",
                                                             "train_data_hash": dataset.training_data_hash()}))
        return Path(out)

    monkeypatch.setattr(train, "fit_teacher", lambda config, data, out: calls.append(("here", config)) or trained(out))
    monkeypatch.setattr(launch, "launch_teacher", lambda config, data_dir, out, remote=None, log=None: calls.append(
        ("launched", config, data_dir, out, remote)) or trained(out))
    monkeypatch.setattr(train, "recalibrate_teacher", lambda *args: calls.append(("recalibrated",)) or False)

    here = Chain(build_config("quick", {"workdir": str(tmp_path / "here")}))
    assert here.teacher(dataset, launch=launch.launch_settings(here.config)) == here.teacher_dir
    assert calls == [("here", here.config)]

    calls.clear()
    chain = Chain(build_config("quick", {"workdir": str(tmp_path / "away")}))
    settings, remote = launch.launch_settings(chain.config, nproc_per_node=2), object()
    assert chain.teacher(dataset, launch=settings, remote=remote) == chain.teacher_dir
    assert calls == [("launched", settings, chain.data_dir.absolute(), chain.teacher_dir.absolute(), remote),
                     ("recalibrated",)]
    calls.clear()
    assert chain.teacher(dataset, launch=settings, remote=remote) == chain.teacher_dir  # the step cache
    assert calls == [("recalibrated",)]
