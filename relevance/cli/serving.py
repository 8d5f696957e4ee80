"""Online serving: the KServe model server (serve), the student on a real Triton server on loopback (serve-triton),
a request to a running server (score), and the sink for KServe's payload logger (traffic-sink)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from relevance.cli.options import ConfigOption, ProfileOption, WorkdirOption, iso_time, run_config
from relevance.common.console import clear_errors

KSERVE_FLAGS = {"allow_extra_args": True, "ignore_unknown_options": True}
KSERVE_HELP = ("Any model-server flag of KServe's (--http_port, default 8080; --model_name; --predictor_host; "
               "--protocol; …) is accepted and parsed by KServe's own parser: KServe appends them to the container.")


def _kserve_argv(ctx: typer.Context) -> list[str]:
    """KServe's flags, left over by typer. KServe reads its flags from sys.argv when imported (its module-level
    parser), so the process's argv is narrowed to them before the server module is imported: our own options
    (--config could pass for an abbreviation of KServe's --configure_logging) are not KServe's business."""
    sys.argv = [sys.argv[0], *ctx.args]
    return list(ctx.args)


@clear_errors()
def serve(ctx: typer.Context, config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
          workdir: Optional[str] = WorkdirOption,
          bundle: Optional[Path] = typer.Option(None, help="Serving bundle (default: workdir/export)."),
          feature_repo: Optional[Path] = typer.Option(None, help="Materialized Feast repo (default: "
                                                                  "workdir/feature_repo)."),
          predictor_url: Optional[str] = typer.Option(None, help="Score on this Triton / V2 server instead of "
                                                                 "in process: http://127.0.0.1:8000 (REST) or "
                                                                 "grpc://127.0.0.1:8001 (gRPC)."),
          traffic_dir: Optional[Path] = typer.Option(None, help="Write a traffic record per reranked query here "
                                                                "(default: serving.traffic_dir; none if empty).")):
    """The KServe model server: rerank requests (V1 and V2) → cached query embedding + Feast online features →
    the training featurizer → the student (in process, or on --predictor-url / --predictor_host) → reranked
    candidates."""
    argv = _kserve_argv(ctx)
    from relevance.serving.server import model_server_args
    from relevance.serving.server import serve as start

    loaded = run_config(config, profile, workdir)
    if traffic_dir is not None:
        loaded.serving.traffic_dir = str(traffic_dir)
    args, given = model_server_args(argv)
    start(bundle or Path(loaded.workdir) / "export", feature_repo or Path(loaded.workdir) / "feature_repo",
          loaded.serving, args, given, predictor_url)


@clear_errors(RuntimeError)  # the server exiting or not getting ready: its log's tail, in one message
def serve_triton(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                 workdir: Optional[str] = WorkdirOption,
                 bundle: Optional[Path] = typer.Option(None, help="Serving bundle (default: workdir/export)."),
                 http_port: int = typer.Option(8000, help="Triton's HTTP port (127.0.0.1)."),
                 grpc_port: int = typer.Option(8001, help="Triton's gRPC port (127.0.0.1)."),
                 metrics_port: int = typer.Option(8002, help="Triton's Prometheus metrics port (127.0.0.1)."),
                 triton_env: Optional[Path] = typer.Option(None, help="The Triton venv (default: "
                                                                      "$RELEVANCE_TRITON_ENV or .venv-triton; "
                                                                      "`make triton-env` makes it).")):
    """The student on a real Triton Inference Server on loopback (the nvidia-pytriton wheel's tritonserver, Python
    backend running the bundle's ONNX graph), until Ctrl-C. Then: `relevance serve --predictor-url
    http://127.0.0.1:8000` (or grpc://127.0.0.1:8001)."""
    import time

    from relevance.serving.model_repository import build_model_repository
    from relevance.serving.triton import triton_install, triton_server

    triton_install(triton_env)  # before any work: no Triton venv is the likeliest setup error
    loaded = run_config(config, profile, workdir)
    bundle = bundle or Path(loaded.workdir) / "export"
    repo = bundle / "model_repository-python"
    build_model_repository(bundle, repo, loaded.serving, backend="python")
    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    with triton_server(repo, bundle / ".triton", bundle / "triton.log", ports=ports, env=triton_env) as server:
        typer.echo(f"Triton ready: {server.http_url} (HTTP), {server.grpc_url} (gRPC), {server.metrics_url}; "
                   f"log {bundle / 'triton.log'}. Ctrl-C stops it.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@clear_errors()
def traffic_sink(directory: Path = typer.Option(..., "--dir", help="The traffic directory records are written to."),
                 config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                 port: int = typer.Option(8080, help="HTTP port."),
                 host: str = typer.Option("0.0.0.0", help="Address to bind (0.0.0.0 in a pod; 127.0.0.1 "
                                                         "on a workstation).")):
    """The sink for KServe's payload logger: CloudEvents of the rerank server's responses → traffic records
    (partitioned parquet under --dir; serving.traffic_* settings). POST /, GET /healthz, GET /metrics."""
    from relevance.serving.traffic_sink import run_sink

    serving = run_config(config, profile, None).serving
    run_sink(str(directory), port, host, serving.traffic_max_event_bytes, serving.traffic_segment_seconds,
             serving.traffic_fsync, serving.model_name)


@clear_errors()  # a registry that does not answer is no bad input: exit 1, which the CronJob retries
def monitor(traffic_dir: Path = typer.Option(..., help="The captured traffic (relevance serve --traffic-dir, or "
                                                        "the traffic sink's --dir)."),
            config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
            workdir: Optional[str] = WorkdirOption,
            bundle: Optional[Path] = typer.Option(None, help="Serving bundle of the student monitored (default: "
                                                             "workdir/export)."),
            registry_alias: Optional[str] = typer.Option(None, help="Monitor the registry's student under this "
                                                                    "alias (champion), downloaded, instead of "
                                                                    "--bundle."),
            feature_repo: Optional[Path] = typer.Option(None, help="Materialized Feast repo (default: "
                                                                    "workdir/feature_repo)."),
            since: Optional[str] = typer.Option(None, help="Window start, ISO 8601 with an offset (default: "
                                                           "monitor.window_hours before --until)."),
            until: Optional[str] = typer.Option(None, help="Window end, ISO 8601 with an offset (default: now)."),
            out: Optional[Path] = typer.Option(None, help="Report directory (default: workdir/monitor)."),
            pushgateway: Optional[str] = typer.Option(None, help="Also push the gauges to this Prometheus "
                                                                 "Pushgateway (host:port)."),
            judge: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="A teacher (or any saved "
                                                 "cross-encoder) that grades a stratified sample of the served "
                                                 "lists: judged nDCG with its interval, per stratum."),
            registry_judge: bool = typer.Option(False, "--registry-judge", help="With --registry-alias: the judge "
                                                "is the teacher the registered student was distilled from.")):
    """Drift of a window of served traffic against the training reference (features, scores, queries,
    coverage) and, with a judge, the served lists' judged quality: monitor.json, monitor.html, monitor.prom.
    Exit 0: no alert; 3: drift alert; 4: too little traffic of this student in the window; 5: judged quality
    below monitor.judged_ndcg_alert."""
    import tempfile
    from datetime import datetime, timedelta, timezone

    from relevance.serving.monitor import monitor as run_monitor

    loaded = run_config(config, profile, workdir)

    end = iso_time(until, "--until") if until else datetime.now(timezone.utc)
    try:
        start = iso_time(since, "--since") if since else end - timedelta(hours=loaded.monitor.window_hours)
    except OverflowError:
        raise ValueError(f"monitor.window_hours {loaded.monitor.window_hours} reaches before year 1") from None
    if start >= end:
        raise ValueError(f"--since {start.isoformat()} is not before --until {end.isoformat()}")
    if not traffic_dir.is_dir():
        raise ValueError(f"--traffic-dir {traffic_dir}: not a directory")
    if bundle and registry_alias:
        raise ValueError("give --bundle or --registry-alias, not both")
    if registry_judge and (judge or not registry_alias):
        raise ValueError("--registry-judge takes the judge from the registry with --registry-alias, and excludes "
                         "--judge")
    root = Path(loaded.workdir)
    with tempfile.TemporaryDirectory() as scratch:
        if registry_judge:
            from relevance.platform.registry import Registry

            judge = Registry(loaded.registry).download_teacher_of(
                loaded.registry.student_name, registry_alias, loaded.registry.teacher_name, Path(scratch) / "judge")
        if registry_alias:
            from relevance.serving.canary.local import registry_bundle

            try:
                bundle = registry_bundle(loaded, registry_alias, Path(scratch))
            except ValueError:
                raise ValueError(f"--registry-alias {registry_alias}: the registry has no such alias for "
                                 f"{loaded.registry.student_name}") from None
        result = run_monitor(loaded, bundle or root / "export", feature_repo or root / "feature_repo", traffic_dir,
                             start, end, out or root / "monitor", pushgateway, judge, log=typer.echo)
    raise typer.Exit(result.exit_code)


@clear_errors()
def score(query: str = typer.Option(..., help="The search query."),
          candidates: str = typer.Option(..., help="Candidate item ids, comma-separated."),
          locale: str = typer.Option("", help="The query's locale, e.g. en-US."),
          url: str = typer.Option("http://127.0.0.1:8080", help="The model server."),
          model: str = typer.Option("relevance-student", help="Model name on the server."),
          as_json: bool = typer.Option(False, "--json", help="Print the response as JSON.")):
    """Rerank candidates for a query on a running server (V2 protocol, tritonclient.http)."""
    from relevance.serving.client import ScoreError, rerank

    try:
        ranking = rerank(url, model, query, [c.strip() for c in candidates.split(",") if c.strip()], locale)
    except ScoreError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(ranking, indent=2))
        return
    for position, item in enumerate(ranking["items"], 1):
        flag = "  (unknown item: scored with defaults)" if item["unknown"] else ""
        typer.echo(f"{position:3d}. {item['item_id']}  score {item['score']:.3f}  "
                   f"p={[round(p, 3) for p in item['probs']]}{flag}")
