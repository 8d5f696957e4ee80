"""A refresh round: the training pipeline run with ``refresh`` on (pipelines/training.py), after human grades of
served traffic were imported (`relevance select --from-traffic`, Label Studio, `relevance import-labels`).

Two steps of that run are here, so that the pipeline's components stay thin:

1. :func:`check_refresh`, before any training: a refresh needs a champion to refresh (a canary compares with
   it), no canary already running (the watch must finish that one first: a second would replace the version it
   is analysing), and judgments that changed since the champion was trained (its ``data_hash`` lineage tag
   against this dataset's) and since any other version was (a rolled-back canary must not come back the next
   night). Without new judgments the run would retrain on what was seen; it stops here, hours before the gate
   would say the same. It stops by failing (a red run in the KFP UI, its log says "no new judgments"): a KFP
   run has no "skipped" state, and a schedule should follow the grading rounds (or the refresh be submitted
   after `import-labels`).
2. :func:`start_refresh_canary`, after the challenger gate registered the student: the same plan as `relevance
   canary start` (rollout.plan_start) for ``canary.refresh_percent`` of the traffic, sent with kubectl on a
   cluster. On kfp.local there is no cluster: only the registry's ``canary`` alias moves, and the local loop
   (`relevance canary local --serve`, which serves the ``canary`` version) holds the split.

Every gate before (Great Expectations, this check, the challenger gate) ends the run with the champion
untouched; after the start, `relevance canary watch` promotes or rolls back with nobody in the loop.
"""

from __future__ import annotations

from relevance.config import RunConfig
from relevance.data.schema import DataContractError, Dataset
from relevance.platform.registry import CHAMPION, Registry
from relevance.serving.canary.rollout import CANARY, CanaryError, apply, plan_start, require_no_other_canary

KUBECTL, REGISTRY_ONLY = "kubectl", "registry"


def check_refresh(config: RunConfig, dataset: Dataset, registry: Registry | None = None) -> dict:
    """What the refresh starts from (the champion and the two data hashes); CanaryError or DataContractError
    when there is nothing to refresh."""
    registry = registry or Registry(config.registry)
    name = config.registry.student_name
    champion = registry.alias_version(name, CHAMPION)
    if champion is None:
        raise CanaryError(f"{name} has no {CHAMPION!r} in the registry at {registry.uri}: a refresh starts a canary "
                          "against the champion (the first student goes out with `kubectl apply -k` and "
                          "`relevance registry promote`)")
    require_no_other_canary(registry, name)
    # The champion's own record (a registry that does not answer raises here; it must not pass as "no hash").
    trained_on = registry.client.get_model_version(name, str(champion)).tags.get("data_hash")
    current = dataset.training_data_hash()
    how = ("Import grades first (`relevance select --from-traffic`, then `relevance import-labels`) into the dataset "
           "this run reads (data.path)")
    if trained_on == current:
        raise DataContractError(f"no new judgments: this run's train and valid judgments (hash {current[:12]}) are "
                                f"the ones champion v{champion} was trained on. {how}")
    # A version already trained on exactly these judgments (a canary the watch rolled back, a challenger that lost
    # the gate's comparison later): a rerun would make it again, and a rolled-back student would be back on traffic.
    for version in registry.versions(name):
        if version.version != champion and version.tags.get("data_hash") == current:
            state = version.tags.get("canary") or ", ".join(version.aliases) or "registered"
            raise DataContractError(f"no new judgments since v{version.version} ({state}) was trained on these "
                                    f"judgments (hash {current[:12]}): a refresh would make it again. {how}")
    return {"champion": champion, "champion_data_hash": trained_on, "data_hash": current}


def start_refresh_canary(config: RunConfig, version: int, target: str = KUBECTL,
                         registry: Registry | None = None) -> str:
    """Start the canary of the refreshed student ``version`` at ``canary.refresh_percent``: with kubectl on a
    cluster, or (``target`` "registry", kfp.local) only the registry's canary alias. Returns what was done."""
    if target not in (KUBECTL, REGISTRY_ONLY):
        raise ValueError(f"canary target: expected {KUBECTL!r} or {REGISTRY_ONLY!r}, got {target!r}")
    registry = registry or Registry(config.registry)
    name = config.registry.student_name
    if registry.alias_version(name, CANARY) == version:
        return f"{name} v{version} is already under canary (a retried step)"
    plan = plan_start(config, registry, version, config.canary.refresh_percent)
    if target == REGISTRY_ONLY:
        sent = apply(config, plan, send=lambda _: "no cluster (kfp.local): the local loop holds the split")
    else:
        sent = apply(config, plan)
    return f"{plan.command_line}\n{sent.strip()}\nregistry: {plan.registry_change}"
