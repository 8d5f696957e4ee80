import json

import numpy as np
import pytest

from relevance.config import TeacherConfig, TextConfig
from relevance.teacher.model import Teacher
from relevance.teacher.train import train_teacher


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
