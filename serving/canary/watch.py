"""`relevance canary watch`: the canary analysis on a schedule, acting on its own decision, so that a bad canary is
rolled back with no person in the loop. It runs as a Kubernetes CronJob (infra/kserve/overlays/canary-watch),
from a workstation against the cluster, or on this machine against the local loop's splitter (local.py); the
command is :func:`watch_canary`, which sets up the target and the evidence and runs :func:`watch`.

One round:

1. **Is a canary running?** The registry's ``canary`` alias is the record (rollout.py). None: nothing to do,
   nothing changes, exit 0. The traffic controller must agree (the InferenceService's ``canaryTrafficPercent``,
   or the local splitter's share, above 0): if it does not, a step was left half done (e.g. traffic moved but
   the registry failed), and the round changes nothing and fails, so that a person finishes it.
2. **Evidence** (analysis.py). From the second round of one process on (``--rounds N --every S``), SLOs first,
   over the servers' metrics since the last round: a challenger already breaking one is rolled back without
   waiting for a replay. (A CronJob's Job runs one round, so there the replay's own window is the evidence.)
   Then the paired replay, whose window's SLOs
   and quality go through :func:`analysis.decide`; too little evidence is a hold there. A replay cut short by a
   failed request (a challenger answering 5xx) does not crash the round: the SLO window it leaves decides, and
   with no breach in it the round holds.
3. **Act.** rollback → :func:`rollout.plan_rollback`, promote → :func:`rollout.plan_promote` (unless
   ``canary.auto_promote`` is off), hold → nothing. The plan goes through :func:`rollout.apply` with the
   target's sender (kubectl, or the splitter's traffic endpoint), which moves the registry aliases only after
   the traffic has moved.
4. **Report**: :func:`analysis.write_report`, with the action taken, the aliases before and after, and why.

Exit codes, for a CronJob to surface (the Job's podFailurePolicy reads them):

- **0** nothing to do (no canary), held, or promoted;
- **2** bad input: config, URLs, missing data (one line on stderr, as every `relevance` command);
- **3** rolled back. The Job fails on purpose and is not retried: a failed Job is what cluster alerting sees, and
  a retry would find no canary and succeed, hiding the rollback;
- **4** a decision that could not be carried out, no evidence (a server that does not start or answer), or a
  registry and traffic controller that disagree; stderr and the report (when the round got that far) say what
  is left to do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from relevance.config import RunConfig
from relevance.platform.registry import CHAMPION, Registry, RegistryError, is_not_found
from relevance.serving.canary import analysis
from relevance.serving.canary.analysis import HOLD, PROMOTE, ROLLBACK, Decision
from relevance.serving.canary.local import ADMIN_PATH
from relevance.serving.canary.manifests import ManifestError, kubectl, kubectl_binary
from relevance.serving.canary.rollout import (
    CANARY,
    CanaryError,
    Plan,
    apply,
    plan_promote,
    plan_rollback,
    send_with_kubectl,
)
from relevance.serving.client import ScoreError
from relevance.serving.process import free_port, model_server

NO_CANARY = "no canary"
EXIT_OK, EXIT_ROLLED_BACK, EXIT_NOT_DONE = 0, 3, 4


class WatchError(RuntimeError):
    """A round that could not do what it decided, or that found the registry and the traffic disagreeing."""

    exit_code = EXIT_NOT_DONE


@dataclass
class Traffic:
    """The challenger's share at the traffic controller (None: no canary there) and what else it says."""

    percent: int | None
    detail: dict = field(default_factory=dict)


class ClusterTarget:
    """The InferenceService in the cluster, through kubectl (its current context; in a pod, the ServiceAccount)."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.name, self.namespace = config.serving.model_name, config.canary.namespace

    def describe(self) -> str:
        return f"InferenceService {self.namespace}/{self.name} (kubectl)"

    def traffic(self) -> Traffic:
        """The predictor's canaryTrafficPercent from the spec, and its revisions and traffic from the status."""
        binary = kubectl_binary(self.config.canary.kubectl)  # not installed: bad input (exit 2)
        try:
            isvc = json.loads(kubectl(["get", "inferenceservice", self.name, "--namespace", self.namespace, "-o",
                                       "json"], binary=binary))
        except ManifestError as error:  # the API did not answer: maybe transient, so exit 4 (retried), not 2
            raise WatchError(f"could not read the InferenceService's traffic, nothing was changed: {error}") from None
        percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        status = (((isvc.get("status") or {}).get("components") or {}).get("predictor")) or {}
        detail = {key: status[key] for key in ("previousRolledoutRevision", "latestRolledoutRevision")
                  if key in status}
        detail["traffic"] = [{k: t.get(k) for k in ("tag", "revisionName", "percent")}
                             for t in status.get("traffic", [])]
        return Traffic(percent, detail)

    def command(self, plan: Plan) -> str:
        return plan.command_line

    def send(self, plan: Plan) -> str:
        return send_with_kubectl(self.config, plan)


class SplitterTarget:
    """The local loop's splitter (local.Splitter), through its traffic endpoint: what kubectl is to the cluster."""

    def __init__(self, url: str):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--splitter-url: expected http://host:port, got {url!r}")
        self.url = url.rstrip("/").removesuffix(ADMIN_PATH)
        self.admin = self.url + ADMIN_PATH

    def describe(self) -> str:
        return f"the local splitter at {self.url}"

    def traffic(self) -> Traffic:
        try:
            response = httpx.get(self.admin, timeout=10)
        except httpx.HTTPError as error:
            raise ValueError(f"the splitter's traffic endpoint {self.admin} does not answer ({error!r}): is "
                             "`relevance canary local --serve` running?") from None
        if response.status_code != 200:
            raise ValueError(f"{self.admin}: expected the splitter's traffic state, got HTTP {response.status_code}")
        state = response.json()
        return Traffic(state["percent"], {"requests": state.get("requests")})

    @staticmethod
    def percent(plan: Plan) -> int:
        """The challenger's share a plan means here: a rollback sends everything to the champion's server (0),
        a promotion to the challenger's (100); a start, its canaryTrafficPercent."""
        if plan.action == "start":
            return plan.patch["spec"]["predictor"]["canaryTrafficPercent"]
        return {"rollback": 0, "promote": 100}[plan.action]

    def command(self, plan: Plan) -> str:
        return f"PUT {self.admin} {json.dumps({'percent': self.percent(plan)})}"

    def send(self, plan: Plan) -> str:
        try:
            response = httpx.put(self.admin, json={"percent": self.percent(plan)}, timeout=10)
        except httpx.HTTPError as error:
            raise CanaryError(f"{self.admin} does not answer ({error!r}); nothing was changed") from None
        if response.status_code != 200:
            raise CanaryError(f"{self.admin} refused {self.command(plan)}: HTTP {response.status_code} "
                              f"{response.text}; nothing was changed")
        state = response.json()
        return f"splitter {self.url}: challenger share {state['previous']}% → {state['percent']}%"


# ------------------------------------------------------------------------------------------------------------
# Evidence
# ------------------------------------------------------------------------------------------------------------


@contextmanager
def rerank_servers(config: RunConfig, settings: list[str], bundle: Path | None, feature_repo: Path,
                   log_dir: Path, log=print):
    """The two rerank servers a round compares: ``canary.champion_url`` and ``challenger_url`` when set; else a
    transformer per predictor revision (``relevance serve --predictor-url`` on the revision's tag URL) started
    here and stopped on exit: what infra/README.md has a person do by hand for `canary analyze`. ``settings``:
    the transformers' config arguments (e.g. ["--config", path]); ``bundle``: the serving bundle they load
    (query encoder, BM25 index; the student is the predictor's)."""
    canary = config.canary
    if canary.champion_url:
        yield {"champion": canary.champion_url, "challenger": canary.challenger_url}
        return
    if bundle is None:
        raise ValueError("no rerank servers are configured (canary.champion_url / challenger_url), so the watch "
                         "starts transformers on the predictor revisions, and they need a serving bundle: got none")
    with ExitStack() as stack:
        urls = {}
        for variant, template in (("champion", canary.champion_predictor_url),
                                  ("challenger", canary.challenger_predictor_url)):
            predictor = template.format(name=config.serving.model_name, namespace=canary.namespace)
            urls[variant] = stack.enter_context(model_server(
                ["serve", *settings, "--bundle", str(bundle), "--feature-repo", str(feature_repo),
                 "--predictor-url", predictor], free_port(), Path(log_dir) / f"{variant}-transformer.log"))
            log(f"{variant}: transformer {urls[variant]} → predictor {predictor}")
        yield urls


def _scrape(urls: dict[str, str]) -> dict[str, dict]:
    return {server: analysis.scrape(url) for server, url in urls.items()}


def _windows(before: dict, after: dict) -> dict[str, analysis.SloEvidence]:
    return {server: analysis.slo_window(server, before[server], after[server]) for server in after}


def assess(config: RunConfig, urls: dict[str, str], dataset, teacher, before: dict | None = None
           ) -> tuple[Decision, dict]:
    """One round's decision (module docstring, step 2). ``before``: each server's metrics at the start of the
    window (None: now, so the window is this round's replay). Returns the decision and the metrics at the end,
    the next window's start."""
    start = before or _scrape(urls)
    if before is not None:
        now = _scrape(urls)
        early = analysis.decide([], _windows(start, now), config.canary)
        if early.action == ROLLBACK:
            early.reasons.append("decided on the traffic since the last round, before any replay")
            return early, now
    try:
        decision = analysis.analyze(config, urls["champion"], urls["challenger"], dataset, teacher, before=start)
    except ScoreError as error:
        slo = _windows(start, _scrape(urls))
        decision = analysis.decide([], slo, config.canary)
        stopped = f"the replay stopped at a failed request ({error})"
        if decision.action == ROLLBACK:
            decision.reasons.append(stopped)
        else:  # without a breach, a failed request alone is no reason to act: hold and look again next round
            decision = Decision(HOLD, [f"{stopped}: no quality evidence, and no SLO breach in the window"], [], slo)
    return decision, _scrape(urls)


# ------------------------------------------------------------------------------------------------------------
# Rounds
# ------------------------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    status: str  # NO_CANARY, or the decision: promote / hold / rollback
    action: str  # what was done, in words
    exit_code: int
    decision: Decision | None = None
    report: Path | None = None
    acted: bool = False  # the traffic and the registry were changed: the canary is over


def aliases(registry: Registry, name: str) -> dict[str, int]:
    """The model's aliases in one read ({} when it is not registered). A registry that does not answer is a
    WatchError (exit 4), never "no canary": an outage must not pass for a quiet round."""
    from mlflow.exceptions import MlflowException

    try:
        model = registry.client.get_registered_model(name)
    except MlflowException as error:
        if is_not_found(error):
            return {}
        raise WatchError(f"the registry at {registry.uri} did not answer for {name}, nothing was changed: "
                         f"{error}") from None
    return {alias: int(version) for alias, version in sorted((model.aliases or {}).items())}


def watch_round(config: RunConfig, registry: Registry, target, decide_round: Callable[[], tuple[Decision, dict]],
                out_dir: Path, dry_run: bool = False, log=print, context: dict | None = None) -> RoundResult:
    """One round (module docstring). ``decide_round`` gathers the evidence and decides (:func:`assess` on the
    servers; called only when a canary runs) and returns the decision and context for the report."""
    name = config.registry.student_name
    before = aliases(registry, name)
    challenger, champion = before.get(CANARY), before.get(CHAMPION)
    if challenger is None:
        return RoundResult(NO_CANARY, f"{name} has no {CANARY!r} alias in the registry at {registry.uri}: no canary "
                           "is running; nothing was changed", EXIT_OK)
    if champion is None:
        raise WatchError(f"{name} has a {CANARY!r} alias (v{challenger}) but no {CHAMPION!r}: there is nothing to "
                         "roll back to; nothing was changed")
    traffic = target.traffic()
    if not traffic.percent:
        raise WatchError(f"the registry has {name} v{challenger} as {CANARY!r}, but {target.describe()} sends it "
                         f"{'no' if traffic.percent is None else '0%'} traffic: a step was left half done. Finish it "
                         f"by hand (`relevance canary rollback --apply` ends the canary in both); nothing was changed")
    log(f"canary: {name} v{challenger} at {traffic.percent}% on {target.describe()} (champion v{champion})")
    decision, evidence = decide_round()
    report = {**(context or {}), **evidence, "target": target.describe(), "traffic_before": traffic.percent,
              **({"traffic_detail": traffic.detail} if traffic.detail else {}), "aliases_before": before}

    def finish(action: str, code: int, plan: Plan | None = None, acted: bool = False) -> RoundResult:
        report["action"] = action
        if plan is not None:
            report["command"] = target.command(plan)
            report["registry_change"] = plan.registry_change
        try:
            report["aliases_after"] = aliases(registry, name)
        except WatchError as error:  # the report still says what was decided and done
            report["aliases_after"] = f"unknown: {error}"
        md, _ = analysis.write_report(decision, out_dir, report)
        return RoundResult(decision.action, action, code, decision, md, acted)

    if decision.action == HOLD:
        return finish("none: hold, the canary keeps its traffic until a round has enough evidence", EXIT_OK)
    if decision.action == PROMOTE and not config.canary.auto_promote:
        return finish("none: promote not applied (canary.auto_promote is off); a person promotes with "
                      "`relevance canary promote --apply`", EXIT_OK)
    # The decision is about v{challenger}: if someone promoted, rolled back or started another canary while the
    # evidence was gathered, acting now would undo their step or promote what was never analysed. The plans check
    # it on the aliases they read themselves (``analysed``), and again before they move the registry, so a
    # rollback never takes the "undo the last promotion" branch.
    try:
        plan = (plan_rollback(config, registry, analysed=challenger) if decision.action == ROLLBACK
                else plan_promote(config, registry, analysed=challenger))
    except (RegistryError, CanaryError) as error:  # a fault at run time: exit 4, never 2 (bad input)
        raise WatchError(f"could not plan the {decision.action}, nothing was changed: {error}") from None
    code = EXIT_ROLLED_BACK if decision.action == ROLLBACK else EXIT_OK
    if dry_run:
        return finish(f"none (--dry-run): would {plan.action} with {target.command(plan)}, then the registry: "
                      f"{plan.registry_change}", EXIT_OK, plan)
    try:
        sent = apply(config, plan, send=target.send)
    except (CanaryError, ManifestError) as error:
        result = finish(f"FAILED to {plan.action}: {error}", EXIT_NOT_DONE, plan)
        raise WatchError(f"{error} (report: {result.report})") from None
    return finish(f"{'rolled back' if plan.action == 'rollback' else 'promoted'}: {sent.strip() or 'patched'}; "
                  f"registry: {plan.registry_change}", code, plan, acted=True)


def watch(config: RunConfig, registry: Registry, target, evidence, out_dir: Path, rounds: int = 1,
          every: float = 0.0, dry_run: bool = False, log=print) -> RoundResult:
    """Up to ``rounds`` rounds, ``every`` seconds apart, stopping after one that leaves nothing to watch (no
    canary, or one it ended). ``evidence``: a context manager factory yielding (urls, dataset, teacher), entered
    on the first round that finds a canary and kept for the next rounds, so that each round's SLO window starts
    where the last one ended."""
    if rounds < 1 or every < 0:
        raise ValueError(f"rounds: expected >= 1, got {rounds}; every: expected seconds >= 0, got {every}")
    with ExitStack() as stack:
        state: dict = {}

        def decide_round() -> tuple[Decision, dict]:
            try:
                if "urls" not in state:  # a ValueError here is bad input (a config, a bundle): exit 2
                    state["urls"], state["dataset"], state["teacher"] = stack.enter_context(evidence())
            except (RuntimeError, httpx.HTTPError) as error:
                # A server that does not start (a predictor revision not ready, a wrong tag URL) is no evidence
                # either way: a person looks (exit 4), nothing is changed.
                raise WatchError(f"no evidence this round, nothing was changed: {error}") from None
            try:
                decision, state["before"] = assess(config, state["urls"], state["dataset"], state["teacher"],
                                                   state.get("before"))
            except (RuntimeError, httpx.HTTPError) as error:
                # Once the servers run, a fault at run time (metrics that do not answer or parse, scrapes of two
                # replicas: analysis.EvidenceError) is no evidence: exit 4, which the CronJob retries. Bad data
                # (a DataContractError, a ValueError) still exits 2.
                raise WatchError(f"no evidence this round, nothing was changed: {error}") from None
            return decision, {"servers": state["urls"]}

        for index in range(1, rounds + 1):
            result = watch_round(config, registry, target, decide_round, out_dir, dry_run, log,
                                 {"round": f"{index} of at most {rounds}"})
            log(f"round {index}: {result.status}: {result.action}")
            if result.acted or result.status == NO_CANARY or index == rounds:
                break
            time.sleep(every)
    return result


def watch_canary(config: RunConfig, settings: list[str], champion_url: str | None = None,
                 challenger_url: str | None = None, splitter_url: str | None = None, bundle: Path | None = None,
                 feature_repo: Path | None = None, teacher_dir: Path | None = None, judge: bool = True,
                 rounds: int = 1, every: float = 0.0, dry_run: bool = False, out_dir: Path | None = None,
                 log=print) -> RoundResult:
    """What `relevance canary watch` (and the CronJob) runs: the rounds of :func:`watch` on the cluster's
    InferenceService, or on the local loop's splitter at ``splitter_url``. The rerank servers compared are
    ``champion_url`` and ``challenger_url`` (both, default the config's ``canary.*_url``), or transformers
    started here on the predictor revisions, loading ``bundle`` (default: the registry champion's) and
    ``feature_repo`` (default: workdir/feature_repo). ``settings``: those transformers' config arguments."""
    from relevance.config import CanaryConfig

    if champion_url or challenger_url:  # both at once: the config checks them as a pair
        canary = CanaryConfig.model_validate({**config.canary.model_dump(), "champion_url": champion_url or "",
                                              "challenger_url": challenger_url or ""})
        config = config.model_copy()
        config.canary = canary  # validated against the rest of the config
    if splitter_url and not config.canary.champion_url:
        raise ValueError("--splitter-url (the local loop) needs --champion-url and --challenger-url, the rerank "
                         "servers behind the splitter (`relevance canary local --serve` prints them): the predictor "
                         "revision URLs are the cluster's")
    target = SplitterTarget(splitter_url) if splitter_url else ClusterTarget(config)
    out_dir = out_dir or Path(config.workdir) / "canary-watch"

    @contextmanager
    def evidence():
        import tempfile

        from relevance.chain import Chain
        from relevance.serving.canary.local import judge_teacher, registry_bundle

        dataset = Chain(config).dataset(with_impressions=True)  # before any server starts: missing data fails fast
        teacher = judge_teacher(config, teacher_dir, judge)
        with tempfile.TemporaryDirectory() as tmp:
            chosen = bundle
            if chosen is None and not config.canary.champion_url:
                chosen = registry_bundle(config, CHAMPION, Path(tmp))
            with rerank_servers(config, settings, chosen, feature_repo or Path(config.workdir) / "feature_repo",
                                out_dir, log=log) as urls:
                yield urls, dataset, teacher

    return watch(config, Registry(config.registry), target, evidence, out_dir, rounds, every, dry_run, log=log)
