"""The whole canary loop on one machine: champion and challenger servers on loopback, a weighted traffic
splitter in front of them (what Knative does with canaryTrafficPercent), replayed traffic through the
splitter, then the canary analysis.

    replay ──► splitter :S ──(100 − P)%──► relevance serve (champion bundle)   :A
                        └──────── P% ────► relevance serve (challenger bundle) :B
    analysis: labelled + teacher-judged queries to A and B directly (paired); SLOs from A's and B's /metrics
"""

from __future__ import annotations

import random
import threading
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from relevance.serving.process import free_port, model_server, wait_ready

VARIANT_HEADER = "x-canary-variant"


@dataclass
class Splitter:
    """A weighted reverse proxy: each request goes to the challenger with probability ``percent``/100."""

    champion: str
    challenger: str
    percent: int
    seed: int = 0
    counts: dict = field(default_factory=lambda: {"champion": 0, "challenger": 0})

    def __post_init__(self):
        if not 0 <= self.percent <= 100:
            raise ValueError(f"percent: expected 0..100, got {self.percent}")
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def choose(self) -> str:
        with self._lock:
            variant = "challenger" if self._random.random() * 100 < self.percent else "champion"
            self.counts[variant] += 1
        return variant

    def app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        client = httpx.AsyncClient(timeout=30)

        async def forward(request: Request) -> Response:
            variant = self.choose()
            base = self.challenger if variant == "challenger" else self.champion
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
            upstream = await client.request(request.method, f"{base}{request.url.path}", content=await request.body(),
                                            headers=headers, params=request.query_params)
            passed = {k: v for k, v in upstream.headers.items()
                      if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
            return Response(upstream.content, status_code=upstream.status_code,
                            headers={**passed, VARIANT_HEADER: variant})

        async def ready(_: Request) -> Response:
            return Response("{}", media_type="application/json")

        @asynccontextmanager
        async def lifespan(_):
            yield
            await client.aclose()

        return Starlette(routes=[Route("/v2/health/ready", ready),
                                 Route("/{path:path}", forward, methods=["GET", "POST"])], lifespan=lifespan)

    @contextmanager
    def serve(self, port: int):
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, timeout=30)
            yield url
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def run_local_canary(config, settings: list[str], champion_bundle: Path, challenger_bundle: Path,
                     feature_repo: Path, dataset, teacher, percent: int, requests: int, out_dir: Path,
                     log=print) -> dict:
    """Start both servers and the splitter, replay ``requests`` requests through the splitter, analyse, and
    write the report. ``settings``: the servers' config arguments (e.g. ["--config", path]). Returns the report's
    JSON content plus where the files are."""
    from rich.progress import track

    from relevance.serving.canary.analysis import analyze, replay_queries, scrape, write_report
    from relevance.serving.client import rerank

    out_dir = Path(out_dir)
    common = ["serve", "--feature-repo", str(feature_repo), *settings]
    with ExitStack() as stack:
        urls = {}
        for variant, bundle in (("champion", champion_bundle), ("challenger", challenger_bundle)):
            urls[variant] = stack.enter_context(model_server([*common, "--bundle", str(bundle)], free_port(),
                                                             out_dir / f"{variant}.log"))
            log(f"{variant}: {urls[variant]} ({bundle})")
        before = {variant: scrape(url) for variant, url in urls.items()}
        splitter = Splitter(urls["champion"], urls["challenger"], percent, seed=config.canary.seed)
        split_url = stack.enter_context(splitter.serve(free_port()))
        log(f"splitter: {split_url} ({percent}% → challenger)")
        labelled, _, unlabelled = replay_queries(dataset, config, config.eval.split)
        traffic = (unlabelled + labelled) or labelled
        if not traffic:
            raise ValueError("nothing to replay: the dataset has no judged queries in the split and no impressions")
        model = config.serving.model_name
        for index in track(range(requests), description="traffic → splitter", transient=True):
            query = traffic[index % len(traffic)]
            rerank(split_url, model, query.query, query.candidates, query.locale)
        log(f"traffic: {requests} requests, champion {splitter.counts['champion']}, "
            f"challenger {splitter.counts['challenger']}")
        decision = analyze(config, urls["champion"], urls["challenger"], dataset, teacher, before=before)
    context = {"champion_bundle": str(champion_bundle), "challenger_bundle": str(challenger_bundle),
               "canary_percent": percent, "split_requests": dict(splitter.counts),
               "observed_challenger_share": splitter.counts["challenger"] / max(1, requests)}
    md, js = write_report(decision, out_dir, context)
    return {**decision.to_dict(), "context": context, "report": str(md), "json": str(js)}
