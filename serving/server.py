"""`relevance serve`: the KServe model server for the student.

:class:`RerankModel` is a kserve.Model with load / preprocess / predict / postprocess: the transformer and (by
default) the predictor in one process. preprocess turns a rerank request into the student's inputs
(relevance.student.scoring: cached ONNX query encoder, Feast online item features, the training featurizer's
lexical block); predict runs the student's serving graph with ONNX Runtime, or, with ``predictor_url``, on a
Triton (or any Open Inference Protocol V2) server over REST or gRPC (relevance.serving.client.RemoteStudent);
postprocess reranks. Triton itself runs from the same model repository (relevance.serving.triton on loopback).

It takes KServe's model-server flags (``--http_port``, ``--model_name``, ``--predictor_host``, ``--protocol``, …:
what KServe appends to a transformer container's args), parsed by KServe's own parser (:func:`model_server_args`).
Importing this module changes nothing: the Prometheus collectors (relevance.serving.metrics) are created on
first use.

Request schema (documented in docs/serving.md, and in /v2/models/<name> metadata):

- V1 ``POST /v1/models/<name>:predict`` ``{"instances": [{"query": str, "locale": str?, "candidates": [str]}]}``
  → ``{"predictions": [{"query", "locale", "items": [{"item_id", "score", "probs", "unknown"}]}]}``.
- V2 ``POST /v2/models/<name>/infer`` with BYTES inputs ``query`` [1], ``candidates`` [N], ``locale`` [1]
  (optional) → outputs ``item_id`` BYTES [N], ``score`` FP32 [N], ``probs`` FP32 [N, K], ``unknown`` BOOL [N],
  best first.

Every malformed request gets a 400 naming what is wrong (KServe maps InvalidInput to 400). When the feature store's
online store does not answer, a request gets a 503 saying so (``{"error": "the feature store (online store) does
not answer: ...; retry"}``, counted as an ``error`` in relevance_requests) and the server stays up: the next request
reads the store again.
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from relevance.config import ServingConfig
from relevance.serving.client import PredictorError, RemoteStudent, check_predictor_url
# LATENCY_BUCKETS is also named here for the canary's proxies, which measure with the server's buckets.
from relevance.serving.metrics import LATENCY_BUCKETS as LATENCY_BUCKETS
from relevance.serving.metrics import metrics
from relevance.serving.traffic import response_records
from relevance.student.scoring import (
    ItemSourceUnavailable,
    OnlineScorer,
    OnnxStudent,
    Prepared,
    RequestError,
    batch_inputs,
    rank,
)
from relevance.traffic.records import MAX_REQUEST_ID_CHARS

V2_INPUTS = {"query": "BYTES", "candidates": "BYTES", "locale": "BYTES"}


class _RefusingParser(argparse.ArgumentParser):
    def error(self, message):  # a ValueError the CLI reports in one line, not argparse's exit
        raise ValueError(f"{self.prog}: {message}")


_UNSET = object()


def model_server_args(argv: list[str], prog: str = "relevance serve") -> tuple[argparse.Namespace, set[str]]:
    """KServe's model-server flags parsed by KServe's own parser (kserve.model_server.parser, as KServe's custom
    transformer examples do): the values, and the names given explicitly. An unknown flag is an error."""
    from kserve.model_server import parser as kserve_parser

    parser = _RefusingParser(prog=prog, parents=[kserve_parser], add_help=False, allow_abbrev=False)
    values = parser.parse_args(argv)
    given = parser.parse_args(argv, namespace=argparse.Namespace(**{name: _UNSET for name in vars(values)}))
    return values, {name for name, value in vars(given).items() if value is not _UNSET}


@dataclass
class Batch:
    """preprocess → predict → postprocess hand-off: the request's queries prepared for the student."""

    protocol: str  # "v1" or "v2"
    prepared: list[Prepared]
    request_id: str
    # The traffic record's id: the gateway's x-request-id (what the payload logger's events carry as ce-id), or
    # one of the server's own; never a V2 body's id, which clients need not make unique.
    capture_id: str = ""
    probs: np.ndarray | None = None


def _strings(tensor, name: str) -> list[str]:
    """A BYTES tensor's elements as str, whatever JSON or binary form they came in."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {name!r}: expected datatype BYTES, got {tensor.datatype}")
    try:  # JSON requests carry a (nested) list; binary ones raw bytes that as_numpy decodes
        data = tensor.data if tensor.data is not None else tensor.as_numpy()
    except (ValueError, TypeError, IndexError) as error:
        raise InvalidInput(f"input {name!r}: cannot decode its binary data ({error})") from None
    if not isinstance(data, (list, np.ndarray)):
        raise InvalidInput(f"input {name!r}: expected a list of strings")
    flat = list(np.asarray(data, dtype=object).reshape(-1)) if isinstance(data, np.ndarray) else _flatten(data)
    values = []
    for value in flat:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidInput(f"input {name!r}: not valid UTF-8 ({error.reason} at byte {error.start})")
        if not isinstance(value, str):
            raise InvalidInput(f"input {name!r}: expected strings, got {type(value).__name__}")
        values.append(value)
    return values


def _flatten(data: list) -> list:
    out = []
    for value in data:
        out.extend(_flatten(value) if isinstance(value, list) else [value])
    return out


def _check_shape(tensor, name: str, values: list, single: bool) -> None:
    shape = list(tensor.shape or [])
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be non-negative integers, got {shape}")
    if int(np.prod(shape)) != len(values):
        raise InvalidInput(f"input {name!r}: shape {shape} holds {int(np.prod(shape))} elements, data has "
                           f"{len(values)}")
    if single and len(values) != 1:
        raise InvalidInput(f"input {name!r}: expected shape [1] (one per request), got {shape}")
    if not single and (len(shape) > 2 or (len(shape) == 2 and shape[0] != 1)):
        raise InvalidInput(f"input {name!r}: expected shape [N] or [1, N], got {shape}")


class RerankModel(kserve.Model):
    """The transformer (+ in-process predictor) for rerank requests; see the module docstring."""

    def __init__(self, config: ServingConfig, scorer_factory, predictor_url: str | None = None,
                 predictor_timeout_s: float = 5.0, traffic=None):
        super().__init__(config.model_name)
        self.config = config
        self.scorer_factory = scorer_factory
        self.scorer: OnlineScorer | None = None
        self.predictor_url = predictor_url
        self.predictor_timeout_s = predictor_timeout_s
        self.predictor = None  # relevance.serving.client.RemoteStudent, made on the first request
        self.num_grades = 0
        # What each response names: the student's content version and the feature version its items come from.
        self.versions = {"model_version": "", "embedding_version": ""}
        self.traffic = traffic  # a relevance.traffic.TrafficLog: each response's records are appended to it
        self._capture_warned = -1e9

    def load(self) -> bool:
        self.scorer = self.scorer_factory()
        manifest = self.scorer.bundle.manifest
        self.num_grades = int(manifest["num_grades"])
        # The feature project actually read (the bundle's, or the repo's for a bundle naming none).
        project = manifest.get("feature_project") or getattr(self.scorer.items, "project", None) or ""
        self.versions = {"model_version": str(manifest.get("student_version", "")), "embedding_version": str(project)}
        if self.traffic is not None and not self.versions["model_version"]:
            raise RuntimeError("traffic capture needs the bundle's student_version (bundle.json names none); "
                               "re-export the bundle with `relevance export`")
        if self.predictor_url:
            import asyncio

            async def ready() -> bool:
                client = RemoteStudent(self.predictor_url, self.predictor_timeout_s)
                try:
                    return await client.is_ready(self.name)
                finally:
                    await client.close()

            # A loop of its own, closed after: the server's loop does not exist yet (and asyncio.run would leave
            # the main thread without one), and predict makes its own client there.
            loop = asyncio.new_event_loop()
            try:
                if not loop.run_until_complete(ready()):
                    raise RuntimeError(f"predictor {self.predictor_url} has no ready model {self.name!r}")
            finally:
                loop.close()
        elif self.scorer.student is None:
            raise RuntimeError("no predictor: give the scorer an in-process student or a predictor URL")
        self.ready = True
        return self.ready

    # -- metadata: what /v2/models/<name> advertises ------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": "query", "datatype": "BYTES", "shape": [1]},
                {"name": "candidates", "datatype": "BYTES", "shape": [-1]},
                {"name": "locale", "datatype": "BYTES", "shape": [1], "optional": True}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "item_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "score", "datatype": "FP32", "shape": [-1]},
                {"name": "probs", "datatype": "FP32", "shape": [-1, self.num_grades]},
                {"name": "unknown", "datatype": "BOOL", "shape": [-1]}]

    # -- the request path -----------------------------------------------------------------------------------
    async def __call__(self, body, headers=None, verb=InferenceVerb.PREDICT):
        protocol = "v2" if isinstance(body, InferRequest) else "v1"
        collectors = metrics()
        started = time.perf_counter()
        try:
            result = await super().__call__(body, headers, verb)
        except (InvalidInput, RequestError) as error:
            collectors.requests.labels(self.name, protocol, "bad_request").inc()
            raise InvalidInput(str(error)) from None
        except Exception:
            collectors.requests.labels(self.name, protocol, "error").inc()
            raise
        collectors.request_seconds.labels(self.name, protocol).observe(time.perf_counter() - started)
        collectors.requests.labels(self.name, protocol, "ok").inc()
        return result

    def _queries_v1(self, payload) -> list[tuple]:
        if not isinstance(payload, dict):
            raise InvalidInput("expected a JSON object body (Content-Type: application/json) of the form "
                               '{"instances": [{"query": ..., "locale": ..., "candidates": [...]}]}')
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('expected "instances": a non-empty list of {"query", "locale", "candidates"}')
        queries, total = [], 0
        for position, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise InvalidInput(f"instances[{position}]: expected an object, got {type(instance).__name__}")
            unknown = sorted(set(instance) - {"query", "locale", "candidates"})
            if unknown:
                raise InvalidInput(f"instances[{position}]: unknown field(s) {unknown}; expected query, locale, "
                                   "candidates")
            if "query" not in instance or "candidates" not in instance:
                raise InvalidInput(f"instances[{position}]: query and candidates are required")
            total += len(instance["candidates"]) if isinstance(instance["candidates"], list) else 0
            queries.append((instance["query"], instance.get("locale"), instance["candidates"]))
        if total > self.config.max_candidates:
            raise InvalidInput(f"at most {self.config.max_candidates} candidates per request (all instances "
                               f"together), got {total}")
        return queries

    def _query_v2(self, request: InferRequest) -> tuple:
        names = [tensor.name for tensor in request.inputs]
        unknown = sorted(set(names) - set(V2_INPUTS))
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}; expected query (BYTES [1]), candidates (BYTES [N]) "
                               "and optionally locale (BYTES [1])")
        if len(set(names)) != len(names):
            raise InvalidInput(f"each input may appear once, got {names}")
        tensors = {tensor.name: tensor for tensor in request.inputs}
        for required in ("query", "candidates"):
            if required not in tensors:
                raise InvalidInput(f"missing input {required!r}; got {names}")
        values = {}
        for name, tensor in tensors.items():
            values[name] = _strings(tensor, name)
            _check_shape(tensor, name, values[name], single=name != "candidates")
        locale = values["locale"][0] if "locale" in values else None
        return values["query"][0], locale, values["candidates"]

    def preprocess(self, payload, headers=None) -> Batch:
        if isinstance(payload, InferRequest):
            protocol, queries = "v2", [self._query_v2(payload)]
            request_id = payload.id or str(uuid.uuid4())
        else:
            protocol, queries = "v1", self._queries_v1(payload)
            request_id = (headers or {}).get("x-request-id", str(uuid.uuid4()))
        prepared = [self.scorer.prepare(*query) for query in queries]
        collectors = metrics()
        for item in prepared:
            (collectors.cache_hits if item.query_cache_hit else collectors.cache_misses).labels(self.name).inc()
            collectors.unknown_items.labels(self.name).inc(int(item.unknown.sum()))
            collectors.candidates.labels(self.name).observe(len(item.item_ids))
        lookups = self.scorer.query_cache_hits + self.scorer.query_cache_misses
        collectors.cache_hit_rate.labels(self.name).set(self.scorer.query_cache_hits / lookups if lookups else 0.0)
        capture_id = (headers or {}).get("x-request-id") or ""
        if not capture_id or len(capture_id) > MAX_REQUEST_ID_CHARS:  # none, or one a record cannot hold
            capture_id = str(uuid.uuid4())
        return Batch(protocol, prepared, request_id, capture_id)

    def stop(self) -> None:
        """KServe's shutdown hook: compact the traffic log (every record readable), and close the predictor's
        connections (an open aiohttp session warns on exit)."""
        try:
            if self.traffic is not None:
                self.traffic.close()
        finally:
            if self.predictor is not None:
                import asyncio

                try:
                    asyncio.get_running_loop().create_task(self.predictor.close())
                except RuntimeError:  # no loop running any more: nothing to close it on
                    pass
            super().stop()

    async def predict(self, batch: Batch, headers=None) -> Batch:
        if self.predictor_url is None:  # in process: one query row each, its first-layer share computed once
            batch.probs = np.concatenate([self.scorer.student.predict(p.student_inputs()) for p in batch.prepared])
            return batch
        if self.predictor is None:  # made in the server's event loop, which its connections belong to
            self.predictor = RemoteStudent(self.predictor_url, self.predictor_timeout_s)
        try:
            batch.probs = await self.predictor.predict(self.name, batch_inputs(batch.prepared), batch.request_id)
        except PredictorError as error:
            raise kserve.errors.InferenceError(str(error)) from None
        return batch

    def postprocess(self, batch: Batch, headers=None):
        rankings, start = [], 0
        for prepared in batch.prepared:
            end = start + len(prepared.item_ids)
            rankings.append((prepared, rank(prepared, batch.probs[start:end])))
            start = end
        if batch.protocol == "v1":
            response = {"predictions": [{"query": p.query, "locale": p.locale, **self.versions,
                                         "query_cache_hit": p.query_cache_hit, **r.to_dict()} for p, r in rankings]}
            self._capture(batch, response)
            return response
        prepared, ranking = rankings[0]
        n = len(ranking.item_ids)
        outputs = [InferOutput("item_id", [n], "BYTES", ranking.item_ids),
                   InferOutput("score", [n], "FP32"), InferOutput("probs", [n, self.num_grades], "FP32"),
                   InferOutput("unknown", [n], "BOOL")]
        outputs[1].set_data_from_numpy(ranking.scores.astype(np.float32), binary_data=False)
        outputs[2].set_data_from_numpy(ranking.probs.astype(np.float32), binary_data=False)
        outputs[3].set_data_from_numpy(ranking.unknown.astype(bool), binary_data=False)
        response = InferResponse(batch.request_id, self.name, outputs, parameters={
            "query": prepared.query, "locale": prepared.locale, **self.versions,
            "query_cache_hit": prepared.query_cache_hit})
        if self.traffic is not None:
            self._capture(batch, response.to_rest()[0])
        return response

    def _capture(self, batch: Batch, body: dict) -> None:
        """Append the response's traffic records (serving.traffic: the payload logger's sink reads responses the
        same way). Never an error for the request: a record the log refuses is counted there, and a log that
        fails (a full disk) is counted in relevance_traffic_capture_failures and logged once a minute."""
        if self.traffic is None:
            return
        try:
            for record in response_records(body, batch.capture_id, datetime.now(timezone.utc), self.name,
                                           "transformer"):
                self.traffic.append(record)
        except Exception as error:
            metrics().capture_failures.labels(self.name).inc()
            now = time.monotonic()
            if now - self._capture_warned > 60:
                from kserve.logging import logger

                self._capture_warned = now
                logger.warning("traffic capture failed (the request was answered): %s: %s",
                               type(error).__name__, error)


def run_server(models: list, config: ServingConfig, args: argparse.Namespace, given: set[str] | None = None) -> None:
    """Start the KServe model server with KServe's flags ``args`` (see :func:`model_server_args`; ``given``: the
    ones set explicitly): REST only, one worker (the caches live in the process). It binds 0.0.0.0, as KServe
    does in a pod.

    KServe's per-request latency lines (``--enable_latency_logging``, and its timing middleware's lines on the
    ``kserve.trace`` logger) are off unless the flag is given: two log lines a request cost about a tenth of a
    millisecond on one core, and relevance_request_seconds already holds the latencies. Uvicorn's access line
    per request is off too unless ``serving.access_log`` is on: formatting and writing it took ~5% of a
    request's CPU, and relevance_http_responses counts every response by status (traffic capture, when on,
    records each request)."""
    import logging

    from fastapi.exceptions import RequestValidationError
    from kserve.logging import KSERVE_TRACE_LOGGER_NAME
    from kserve.model_server import app

    from relevance.serving.guards import HttpGuard, invalid_request_body, item_source_unavailable

    if "access_log_format" in (given or set()):  # KServe's middleware for it needs asgi-logger: not installed
        raise ValueError("--access_log_format: use serving.access_log (uvicorn's access line) instead")
    if args.workers != 1:
        raise ValueError(f"--workers {args.workers}: the server runs one worker (the query and item caches live in "
                         "the process); scale with replicas instead, and leave containerConcurrency unset")
    latency_logging = bool(args.enable_latency_logging) if "enable_latency_logging" in (given or set()) else False
    metrics()
    app.add_middleware(HttpGuard, max_request_bytes=config.max_request_bytes)
    app.add_exception_handler(RequestValidationError, invalid_request_body)
    app.add_exception_handler(ItemSourceUnavailable, item_source_unavailable)
    for model in models:
        model.load()
    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1,
                                enable_docs_url=args.enable_docs_url, timeout_keep_alive=args.timeout_keep_alive,
                                enable_latency_logging=latency_logging, access_log_format=None,
                                event_loop=args.event_loop, ssl_certfile=args.ssl_certfile,
                                ssl_keyfile=args.ssl_keyfile)
    if not latency_logging:  # after ModelServer, which configures KServe's loggers
        logging.getLogger(KSERVE_TRACE_LOGGER_NAME).setLevel(logging.WARNING)
    if not config.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start(models)


def predictor_url(args: argparse.Namespace, given: set[str], config: ServingConfig) -> str | None:
    """Where the transformer's predictor is, from KServe's flags: ``--predictor_host`` (with ``--protocol`` /
    ``--predictor_protocol`` v2 for REST or grpc-v2 for gRPC, and ``--predictor_use_ssl``), checked against the
    serving config."""
    if "model_name" in given and args.model_name != config.model_name:
        raise ValueError(f"--model_name {args.model_name!r} (the InferenceService name) must equal "
                         f"serving.model_name {config.model_name!r}: the transformer serves, and asks the predictor "
                         "for, that one model name")
    protocols = {getattr(args, flag) for flag in ("protocol", "predictor_protocol") if flag in given}
    if not protocols <= {"v2", "grpc-v2"} or len(protocols) > 1:
        raise ValueError(f"--protocol / --predictor_protocol: the transformer calls its predictor over the V2 "
                         f"protocol, REST (v2) or gRPC (grpc-v2), got {sorted(protocols)}")
    if not args.predictor_host:
        return None
    scheme = "grpc" if protocols == {"grpc-v2"} else "http"
    return f"{scheme}{'s' if args.predictor_use_ssl else ''}://{args.predictor_host}"


def serve(bundle_dir, feature_repo, config: ServingConfig, args: argparse.Namespace, given: set[str],
          predictor: str | None = None) -> None:
    """The transformer with KServe's flags ``args`` (``given``: the ones set explicitly): the student in process,
    or on the predictor that ``predictor`` (a URL) or ``--predictor_host`` names."""
    from relevance.platform.item_source import FeastItemSource
    from relevance.student.scoring import ServingBundle

    from_flags = predictor_url(args, given, config)
    if predictor and from_flags:
        raise ValueError("give --predictor-url or --predictor_host, not both")
    predictor = predictor or from_flags
    if predictor:
        check_predictor_url(predictor)
    # KServe's default predictor timeout (600 s) suits batch models; a rerank request has milliseconds.
    timeout = float(args.predictor_request_timeout_seconds) if "predictor_request_timeout_seconds" in given else 5.0

    def scorer() -> OnlineScorer:
        bundle = ServingBundle(bundle_dir)
        # The bundle's feature project (refused at start unless its item vectors are its query tower's encoder's).
        items = FeastItemSource.for_bundle(feature_repo, bundle.manifest, config.item_cache_size,
                                           config.item_cache_ttl_seconds)
        student = None
        if predictor is None:  # serving.int8 picks the int8 student, as it picks the int8 encoder
            student = OnnxStudent(bundle.in_process_graph(config.int8), config.onnx_threads)
        return OnlineScorer(bundle, items, config, student=student)

    traffic = None
    if config.traffic_dir:  # closed (every record compacted) by RerankModel.stop, KServe's shutdown hook
        from relevance.traffic import TrafficLog

        traffic = TrafficLog(config.traffic_dir, segment_seconds=config.traffic_segment_seconds,
                             fsync=config.traffic_fsync, background=True)
    run_server([RerankModel(config, scorer, predictor, timeout, traffic)], config, args, given)
