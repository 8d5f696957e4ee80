"""Online scoring (names, request limits, caches, Triton batching) and the canary rollout that decides whether a new
student replaces the one serving."""

from __future__ import annotations

from pydantic import Field, PositiveInt, model_validator

from relevance.config.base import K8S_NAME, Strict


# The most any deployment may allow, whatever its config: what a traffic record (relevance.traffic.records)
# can hold, so that every request the server accepts can be captured.
CANDIDATES_LIMIT = 10_000
QUERY_CHARS_LIMIT = 4096
ITEM_ID_CHARS_LIMIT = 256


class ServingConfig(Strict):
    """Online scoring: the names the InferenceService and Triton use, request limits, and the caches.

    Limits bound what one request may cost: anything over them is refused with a 400 naming the limit.
    """

    model_name: str = Field("relevance-student", pattern=K8S_NAME)  # a Kubernetes name
    max_candidates: int = Field(1000, ge=1, le=CANDIDATES_LIMIT)
    max_query_chars: int = Field(512, ge=1, le=QUERY_CHARS_LIMIT)
    max_item_id_chars: int = Field(256, ge=1, le=ITEM_ID_CHARS_LIMIT)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Query embeddings: W-TinyLFU (theine), which keeps the frequent head of a Zipf stream better than LRU.
    query_cache_size: int = Field(10_000, ge=0)  # 0: no cache
    # Item features read from the online store are kept this long: materialization is hourly at the most.
    item_cache_size: int = Field(200_000, ge=0)
    item_cache_ttl_seconds: float = Field(300.0, gt=0)
    int8: bool = False  # serve the per-channel int8 student and encoder (their quality delta: benchmarks/serving)
    onnx_threads: int = Field(1, ge=1)  # intra-op threads per session: one core per server process
    # uvicorn's access line per request: off, since formatting and writing it took ~5% of a request's CPU on one
    # core and /metrics counts every response by status.
    access_log: bool = False
    triton_max_batch_size: int = Field(4096, ge=1)  # rows (candidates), across the requests Triton batches
    # 0: the dynamic batcher sends what is queued at once. A lone request then never waits for company (a delay
    # of 200 µs cost each request at concurrency 1 ~0.5 ms end to end here); requests that arrive while the
    # model is busy still batch together.
    triton_max_queue_delay_us: int = Field(0, ge=0)
    # Traffic capture (relevance.traffic): where `relevance serve` writes a record per reranked query ("": it
    # writes none; the payload logger's sink, `relevance traffic-sink`, captures it instead). Records become
    # readable within traffic_segment_seconds; traffic_fsync forces each to the disk (a power loss, not only a
    # killed process, then loses nothing), at a disk flush per request.
    traffic_dir: str = ""
    traffic_segment_seconds: float = Field(60.0, gt=0)
    traffic_fsync: bool = False
    traffic_max_event_bytes: int = Field(16 * 1024 * 1024, ge=1024)  # one payload-logger event the sink accepts

    @model_validator(mode="after")
    def _batch_holds_a_request(self) -> ServingConfig:
        if self.triton_max_batch_size < self.max_candidates:
            raise ValueError(f"triton_max_batch_size ({self.triton_max_batch_size}) must be at least "
                             f"max_candidates ({self.max_candidates}): one request is one batch of candidates")
        return self


class CanaryConfig(Strict):
    """Canary rollout of a student on KServe (infra/kserve) and the analysis that decides it.

    The InferenceService is named ``serving.model_name``. A canary splits the predictor (the student on Triton);
    the transformer is shared, so a challenger must have the champion's feature version.
    """

    namespace: str = Field("relevance", pattern=K8S_NAME)
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
    # The challenger's share when a refresh run (the pipeline's `refresh` parameter) starts its canary.
    refresh_percent: int = Field(10, ge=1, le=99)

    @model_validator(mode="after")
    def _watch_urls(self) -> CanaryConfig:
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


class MonitorConfig(Strict):
    """`relevance monitor`: a window of captured traffic (relevance.traffic) against the training reference.

    The reference is the served student on training queries (their BM25 candidates reranked, the top_k kept);
    the window's records are sampled, and their top_k items featurized again by the same scorer. An alert
    (exit 3) when any feature's or the score's PSI, or the query-novelty PSI, exceeds psi_alert, or when more
    than max_unknown_items of the served items are unknown to the feature store.

    Judged quality (with a judge: `relevance monitor --judge`): the judge, once it agrees with humans on the
    judge-check slice at judge_min_agreement (exact), grades the first judge_depth items of judge_lists served
    lists, drawn by strata (seen/unseen query × locale × query length), and the report gives judged nDCG@judge_k
    with its interval overall (the stratified estimator) and per stratum. An alert (exit 5) when
    judged_ndcg_alert is set and the overall interval lies below it."""

    window_hours: float = Field(24.0, gt=0)  # the default window: the last this many hours
    min_records: int = Field(200, ge=1)  # fewer records of the bundle's student in the window: exit 4, no verdict
    max_records: int = Field(2000, ge=1)  # records sampled from the window for the feature and novelty checks
    reference_queries: int = Field(500, ge=10)  # training queries replayed for the reference (and as many held out)
    candidates: int = Field(100, ge=1)  # BM25 candidates per reference query, as a retrieval stage sends
    top_k: int = Field(20, ge=1)  # the items of each ranking whose features are compared: what users see
    psi_alert: float = Field(0.25, gt=0)  # the usual "significant shift"; 0.1–0.25 is reported as moderate
    max_unknown_items: float = Field(0.05, ge=0, le=1)
    judge_lists: int = Field(200, ge=2)  # served lists the judge grades (distinct queries of the window's sample)
    judge_k: PositiveInt = 10
    # Items of each served list the judge grades: more than judge_k, so that the ideal ranking can draw on what the
    # student left below the cut (with judge_depth = judge_k a list is only judged on its own order).
    judge_depth: PositiveInt = 50
    judge_min_agreement: float = Field(0.4, ge=0, le=1)  # judge-eval's floor: below it nothing judged is reported
    judged_ndcg_alert: float | None = Field(None, ge=0, le=1)  # None: judged quality is reported, never alerts
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _judge_depth(self) -> MonitorConfig:
        if self.judge_depth < self.judge_k:
            raise ValueError(f"monitor.judge_depth ({self.judge_depth}) must be at least monitor.judge_k "
                             f"({self.judge_k}): nDCG@k needs the first k items graded")
        return self
