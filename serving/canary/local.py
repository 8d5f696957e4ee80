"""The whole canary loop on one machine: champion and challenger servers on loopback, each behind its revision
proxy, a weighted traffic splitter in front of them (what Knative does with canaryTrafficPercent), replayed
traffic through the splitter, then the canary analysis, or `relevance canary watch` acting on the splitter.

    replay ──► splitter :S ──(100 − P)%──► proxy :A' ──► relevance serve (champion bundle)   :A
                 │      └──────── P% ────► proxy :B' ──► relevance serve (challenger bundle) :B
                 └ /canary/traffic: GET the share, PUT {"percent": 0} (what kubectl patch is to the cluster)
    analysis: labelled + teacher-judged queries to A' and B' directly (paired); SLOs from A''s and B''s /metrics

A revision proxy is the local stand-in for Knative's queue-proxy, the sidecar in every revision pod: it forwards
every request and measures the inference requests as a client sees them. For demonstrations it also injects
faults the way an Istio VirtualService does (``fault.delay``: a fixed delay; ``fault.abort``: HTTP 503 for a share
of requests), so that a challenger breaking an SLO can be shown without fault hooks in the product server.

`relevance canary local` is :func:`run_local`: analysed once (:func:`run_local_canary`) or, with ``--serve``, kept
up for the watch (:func:`serve_local_canary`).
"""

from __future__ import annotations

import asyncio
import random
import threading
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from relevance.serving.process import free_port, model_server, wait_ready

VARIANT_HEADER = "x-canary-variant"
ADMIN_PATH = "/canary/traffic"  # the splitter's traffic control (loopback only, like everything here)
CLIENT_TIMEOUT_S = 10.0  # the rerank client's timeout (relevance.serving.client.rerank): a delay must stay below it
_HOP_HEADERS = ("host", "content-length", "transfer-encoding", "connection")
# The revision proxies' latency buckets: the model server's (serving/server.py LATENCY_BUCKETS, from 0.5 ms), and on
# to the client's timeout, which an injected delay may approach. Not imported from there: importing the server
# imports kserve, whose module-level parser reads this process's argv (where --config passes for an abbreviation of
# its --configure_logging). tests/serving/canary/test_local_proxies.py keeps the two in step.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, CLIENT_TIMEOUT_S)


def _valid_percent(percent, what: str = "percent") -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"{what}: expected an integer in 0..100, got {percent!r}")
    return percent


async def _forward(client: httpx.AsyncClient, base: str, request, extra_headers: dict | None = None):
    """``request`` sent on to ``base`` and its answer returned as is; an unreachable upstream is a 502."""
    from starlette.responses import JSONResponse, Response

    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    try:
        upstream = await client.request(request.method, f"{base}{request.url.path}", content=await request.body(),
                                        headers=headers, params=request.query_params)
    except httpx.HTTPError as error:
        return JSONResponse({"error": f"upstream {base}: {error!r}"}, status_code=502, headers=extra_headers)
    passed = {k: v for k, v in upstream.headers.items()
              if k.lower() not in (*_HOP_HEADERS, "content-encoding")}
    return Response(upstream.content, status_code=upstream.status_code, headers={**passed, **(extra_headers or {})})


@contextmanager
def serve_in_thread(app, port: int):
    """A Starlette app on 127.0.0.1:``port`` in a background thread, yielded as its URL once it is ready."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=30)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Splitter:
    """A weighted reverse proxy: each request goes to the challenger with probability ``percent``/100. The share
    can be changed while it runs (:meth:`set_percent`, or ``PUT /canary/traffic``), which is how the watch rolls a
    local canary back."""

    champion: str
    challenger: str
    percent: int
    seed: int = 0
    counts: dict = field(default_factory=lambda: {"champion": 0, "challenger": 0})

    def __post_init__(self):
        _valid_percent(self.percent)
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def choose(self) -> str:
        with self._lock:
            variant = "challenger" if self._random.random() * 100 < self.percent else "champion"
            self.counts[variant] += 1
        return variant

    def set_percent(self, percent: int) -> int:
        """The challenger's new share; returns the old one."""
        _valid_percent(percent)
        with self._lock:
            previous, self.percent = self.percent, percent
        return previous

    def state(self) -> dict:
        with self._lock:
            return {"percent": self.percent, "requests": dict(self.counts)}

    def app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        client = httpx.AsyncClient(timeout=30)

        async def forward(request: Request) -> Response:
            variant = self.choose()
            base = self.challenger if variant == "challenger" else self.champion
            return await _forward(client, base, request, {VARIANT_HEADER: variant})

        async def ready(_: Request) -> Response:
            return Response("{}", media_type="application/json")

        async def traffic(request: Request) -> Response:
            if request.method == "GET":
                return JSONResponse(self.state())
            try:
                body = await request.json()
            except ValueError:
                body = None
            try:
                if not isinstance(body, dict) or set(body) != {"percent"}:
                    raise ValueError(f'expected a JSON object {{"percent": 0..100}}, got {body!r}')
                previous = self.set_percent(body["percent"])
            except ValueError as error:
                return JSONResponse({"error": str(error)}, status_code=422)
            return JSONResponse({**self.state(), "previous": previous})

        @asynccontextmanager
        async def lifespan(_):
            yield
            await client.aclose()

        return Starlette(routes=[Route("/v2/health/ready", ready),
                                 Route(ADMIN_PATH, traffic, methods=["GET", "PUT"]),
                                 Route("/{path:path}", forward, methods=["GET", "POST"])], lifespan=lifespan)

    def serve(self, port: int):
        return serve_in_thread(self.app(), port)


@dataclass
class Faults:
    """Istio-style faults for a revision proxy: ``delay_ms`` added to every inference request (fault.delay), and
    ``abort_percent`` of them answered with HTTP 503 instead (fault.abort)."""

    delay_ms: float = 0.0
    abort_percent: float = 0.0

    def __post_init__(self):
        if not 0 <= self.delay_ms < CLIENT_TIMEOUT_S * 1000:
            raise ValueError(f"fault delay: expected 0 <= ms < {CLIENT_TIMEOUT_S * 1000:.0f} (the rerank client "
                             f"times out at {CLIENT_TIMEOUT_S:.0f} s), got {self.delay_ms}")
        if not 0 <= self.abort_percent <= 100:
            raise ValueError(f"fault abort: expected a percentage in 0..100, got {self.abort_percent}")

    def __bool__(self) -> bool:
        return bool(self.delay_ms or self.abort_percent)

    def line(self) -> str:
        return f"+{self.delay_ms:g} ms, {self.abort_percent:g}% HTTP 503" if self else "none"


@dataclass
class RevisionProxy:
    """One revision's queue-proxy on loopback: it forwards everything to ``upstream`` and, on its own /metrics,
    exports what clients saw of the inference requests (POSTs) under the names the analysis reads
    (analysis.LATENCY_METRIC, analysis.OUTCOME_METRIC), with the model server's latency buckets and more
    (:data:`LATENCY_BUCKETS`). ``faults``
    apply to inference requests only; health checks pass untouched."""

    upstream: str
    variant: str
    faults: Faults = field(default_factory=Faults)
    seed: int = 0

    def __post_init__(self):
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def _abort(self) -> bool:
        with self._lock:
            return self._random.random() * 100 < self.faults.abort_percent

    def app(self):
        import time

        from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        from relevance.serving.canary.analysis import LATENCY_METRIC, OUTCOME_METRIC

        registry = CollectorRegistry()
        seconds = Histogram(LATENCY_METRIC, "Rerank latency as a client of this revision saw it", ["variant"],
                            registry=registry, buckets=LATENCY_BUCKETS)
        outcomes = Counter(OUTCOME_METRIC.removesuffix("_total"), "Rerank requests by outcome (ok, bad_request, "
                           "error)", ["variant", "outcome"], registry=registry)
        client = httpx.AsyncClient(timeout=30)

        async def metrics(_: Request) -> Response:
            return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

        async def forward(request: Request) -> Response:
            if request.method != "POST":
                return await _forward(client, self.upstream, request)
            start = time.perf_counter()
            if self.faults.delay_ms:
                await asyncio.sleep(self.faults.delay_ms / 1000)
            if self._abort():
                response = JSONResponse({"error": f"fault injected by the revision proxy of the {self.variant} "
                                                  f"(abort {self.faults.abort_percent:g}%)"}, status_code=503)
            else:
                response = await _forward(client, self.upstream, request)
            status = response.status_code
            outcome = "error" if status >= 500 else "bad_request" if status >= 400 else "ok"
            seconds.labels(self.variant).observe(time.perf_counter() - start)
            outcomes.labels(self.variant, outcome).inc()
            return response

        @asynccontextmanager
        async def lifespan(_):
            yield
            await client.aclose()

        return Starlette(routes=[Route("/metrics", metrics),
                                 Route("/{path:path}", forward, methods=["GET", "POST"])], lifespan=lifespan)

    def serve(self, port: int):
        return serve_in_thread(self.app(), port)


@dataclass
class LocalCanary:
    """What :func:`local_canary` started: ``servers`` are the model servers themselves, ``urls`` their revision
    proxies (what the splitter, the analysis and the watch call)."""

    servers: dict[str, str]
    urls: dict[str, str]
    splitter: Splitter
    split_url: str
    faults: Faults

    def to_dict(self) -> dict:
        return {"servers": self.servers, "urls": self.urls, "splitter_url": self.split_url,
                "admin_url": f"{self.split_url}{ADMIN_PATH}", "percent": self.splitter.percent,
                "challenger_faults": self.faults.line()}


@contextmanager
def local_canary(settings: list[str], champion_bundle: Path, challenger_bundle: Path, feature_repo: Path,
                 percent: int, out_dir: Path, seed: int = 0, faults: Faults | None = None, log=print):
    """Both model servers (logs in ``out_dir``), a revision proxy in front of each (``faults`` on the
    challenger's only) and the splitter, started on loopback; stopped on exit."""
    faults = faults or Faults()
    common = ["serve", "--feature-repo", str(feature_repo), *settings]
    with ExitStack() as stack:
        servers, urls = {}, {}
        for variant, bundle in (("champion", champion_bundle), ("challenger", challenger_bundle)):
            servers[variant] = stack.enter_context(model_server([*common, "--bundle", str(bundle)], free_port(),
                                                                Path(out_dir) / f"{variant}.log"))
            proxy = RevisionProxy(servers[variant], variant, faults if variant == "challenger" else Faults(), seed)
            urls[variant] = stack.enter_context(proxy.serve(free_port()))
            log(f"{variant}: {urls[variant]} → {servers[variant]} ({bundle})"
                + (f", faults: {faults.line()}" if variant == "challenger" and faults else ""))
        splitter = Splitter(urls["champion"], urls["challenger"], percent, seed=seed)
        split_url = stack.enter_context(splitter.serve(free_port()))
        log(f"splitter: {split_url} ({percent}% → challenger; traffic control: {split_url}{ADMIN_PATH})")
        yield LocalCanary(servers, urls, splitter, split_url, faults)


def send_traffic(canary: LocalCanary, model: str, traffic: list, requests: int) -> int:
    """``requests`` rerank requests through the splitter, cycling through ``traffic`` (ReplayQuery); returns how
    many failed (a faulty challenger answers some with 5xx, as it would to real clients)."""
    from rich.progress import track

    from relevance.serving.client import ScoreError, rerank

    if not traffic:
        raise ValueError("nothing to replay: the dataset has no judged queries in the split and no impressions")
    failed = 0
    for index in track(range(requests), description="traffic → splitter", transient=True):
        query = traffic[index % len(traffic)]
        try:
            rerank(canary.split_url, model, query.query, query.candidates, query.locale)
        except ScoreError:
            failed += 1
    return failed


def run_local_canary(config, settings: list[str], champion_bundle: Path, challenger_bundle: Path,
                     feature_repo: Path, dataset, teacher, percent: int, requests: int, out_dir: Path,
                     log=print, faults: Faults | None = None) -> dict:
    """Start both servers and the splitter, replay ``requests`` requests through the splitter, analyse, and
    write the report. ``settings``: the servers' config arguments (e.g. ["--config", path]). Returns the report's
    JSON content plus where the files are."""
    from relevance.serving.canary.analysis import replay_queries, scrape, write_report
    from relevance.serving.canary.watch import assess

    out_dir = Path(out_dir)
    with local_canary(settings, champion_bundle, challenger_bundle, feature_repo, percent, out_dir,
                      config.canary.seed, faults, log) as canary:
        before = {variant: scrape(url) for variant, url in canary.urls.items()}
        labelled, _, unlabelled = replay_queries(dataset, config, config.eval.split)
        failed = send_traffic(canary, config.serving.model_name, (unlabelled + labelled) or labelled, requests)
        splitter = canary.splitter
        log(f"traffic: {requests} requests, champion {splitter.counts['champion']}, "
            f"challenger {splitter.counts['challenger']}, failed {failed}")
        # The watch's assessment: a faulty challenger's failed replay is evidence (its SLO window), not a crash.
        decision, _ = assess(config, canary.urls, dataset, teacher, before)
    context = {"champion_bundle": str(champion_bundle), "challenger_bundle": str(challenger_bundle),
               "canary_percent": percent, "split_requests": dict(splitter.counts),
               "observed_challenger_share": splitter.counts["challenger"] / max(1, requests),
               "challenger_faults": canary.faults.line()}
    md, js = write_report(decision, out_dir, context)
    return {**decision.to_dict(), "context": context, "report": str(md), "json": str(js)}


# ------------------------------------------------------------------------------------------------------------
# `relevance canary local`: what it starts from, and the loop itself
# ------------------------------------------------------------------------------------------------------------


def registry_bundle(config, alias: str, directory: Path) -> Path:
    """The serving bundle (the registered student's onnx/ folder) of ``alias``, downloaded into ``directory``."""
    from relevance.platform.registry import Registry

    downloaded = Registry(config.registry).download(config.registry.student_name, alias, directory / alias)
    if downloaded is None:
        raise ValueError(f"no --{alias}-bundle and the registry has no {alias!r} for "
                         f"{config.registry.student_name}")
    return downloaded / "onnx"


def judge_teacher(config, teacher_dir: Path | None, judge: bool):
    """The teacher that judges unlabelled replayed queries (``teacher_dir``, default the run's workdir/teacher);
    None when not asked for (``judge`` off, or ``canary.judge_queries`` 0)."""
    if not judge or config.canary.judge_queries == 0:
        return None
    from relevance.chain import Chain
    from relevance.teacher.model import Teacher

    directory = teacher_dir or Chain(config).teacher_dir
    if not Path(directory).exists():
        raise FileNotFoundError(f"teacher {directory} not found: pass --teacher, or --no-judge to skip the "
                                "teacher-judged queries")
    return Teacher.load(directory)


def wait_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM, so that the caller's context managers stop the servers they started."""
    import signal

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_local_canary(config, settings: list[str], champion_bundle: Path, challenger_bundle: Path,
                       feature_repo: Path, dataset, percent: int, requests: int, out_dir: Path,
                       faults: Faults | None = None, log=print, wait=wait_until_stopped) -> dict:
    """The loop kept up for `relevance canary watch --splitter-url`: both servers and the splitter started,
    ``requests`` requests sent through it, their URLs written to ``out_dir``/local-canary.json, then ``wait()``
    (until Ctrl-C / SIGTERM) before everything stops. Returns what local-canary.json says."""
    import shlex

    from relevance.common.files import atomic_write_json
    from relevance.serving.canary.analysis import replay_queries

    with local_canary(settings, champion_bundle, challenger_bundle, feature_repo, percent, out_dir,
                      config.canary.seed, faults, log=log) as canary:
        labelled, _, unlabelled = replay_queries(dataset, config, config.eval.split)
        if requests:
            failed = send_traffic(canary, config.serving.model_name, unlabelled + labelled, requests)
            log(f"traffic: {requests} requests {canary.splitter.counts}, failed {failed}")
        state = canary.to_dict()
        atomic_write_json(Path(out_dir) / "local-canary.json", state)
        log(f"serving until Ctrl-C / SIGTERM ({Path(out_dir) / 'local-canary.json'}); watch it with:\n  "
            + shlex.join(["relevance", "canary", "watch", *settings, "--splitter-url", canary.split_url,
                          "--champion-url", canary.urls["champion"], "--challenger-url", canary.urls["challenger"]]))
        wait()
    return state


def run_local(config, settings: list[str], champion_bundle: Path | None = None,
              challenger_bundle: Path | None = None, feature_repo: Path | None = None, percent: int = 10,
              requests: int = 200, out_dir: Path | None = None, teacher_dir: Path | None = None, judge: bool = True,
              faults: Faults | None = None, serve: bool = False, log=print) -> dict:
    """What `relevance canary local` runs: the registry's champion and challenger bundles where none are given,
    the run's dataset and feature repo (workdir/feature_repo by default), then either the loop analysed once
    (:func:`run_local_canary`; returns the analysis) or, with ``serve``, kept up for the watch
    (:func:`serve_local_canary`; returns where it ran). ``settings``: the servers' config arguments."""
    import tempfile

    from relevance.chain import Chain
    from relevance.platform.registry import CHALLENGER, CHAMPION, Registry
    from relevance.serving.canary.rollout import CANARY

    out_dir = out_dir or Path(config.workdir) / "canary-local"
    with tempfile.TemporaryDirectory() as tmp:
        champion = champion_bundle or registry_bundle(config, CHAMPION, Path(tmp))
        if challenger_bundle is None:
            # The version under canary (a refresh run's start step set the alias), else the latest challenger.
            under_canary = Registry(config.registry).alias_version(config.registry.student_name, CANARY)
            challenger_bundle = registry_bundle(config, CANARY if under_canary else CHALLENGER, Path(tmp))
        challenger = challenger_bundle
        dataset = Chain(config).dataset(with_impressions=True)
        repo = feature_repo or Path(config.workdir) / "feature_repo"
        if serve:
            return serve_local_canary(config, settings, champion, challenger, repo, dataset, percent, requests,
                                      out_dir, faults, log=log)
        return run_local_canary(config, settings, champion, challenger, repo, dataset,
                                judge_teacher(config, teacher_dir, judge), percent, requests, out_dir, log=log,
                                faults=faults)
