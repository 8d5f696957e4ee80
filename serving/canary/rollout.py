"""Canary rollout of a student: the kubectl patch for each step, and the MLflow aliases that follow it.

KServe in Serverless mode splits a component's traffic between its previous rolled-out revision and the latest
one by ``canaryTrafficPercent``. A canary here changes only the predictor (the student's Triton model
repository); the transformer is shared, which is why the challenger must compute the champion's features.

| step     | InferenceService patch (JSON merge)                                   | registry (with --apply) |
|----------|-----------------------------------------------------------------------|-------------------------|
| start    | predictor storageUri → vN's, canaryTrafficPercent → P                  | canary → vN             |
| promote  | canaryTrafficPercent removed: the latest revision (vN) takes 100%      | champion → vN           |
| rollback | during a canary: canaryTrafficPercent → 0 (all traffic back on the     | canary alias removed    |
|          | previous revision at once) and storageUri → champion's                 |                         |
|          | after a promotion: storageUri → previous champion's, percent removed   | champion → previous     |

The version under canary has its own ``canary`` alias: the pipeline moves ``challenger`` whenever a new student
passes its gate, and a nightly run must not change which version a running canary promotes.

The patches touch nothing but the predictor's traffic and model: KServe copies InferenceService annotations into
every component's pod template, so recording versions there would roll the transformer (cold caches) on every
step. The registry's aliases are the record; the storageUri names the version's run.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from relevance.config import RunConfig
from relevance.platform.registry import CHAMPION, PREVIOUS_CHAMPION_TAG, Registry

CANARY = "canary"  # registry alias of the version the cluster is canarying


class CanaryError(ValueError):
    """A canary step that cannot be taken as asked (no champion, incompatible challenger, bad percent)."""


def model_repository_uri(source: str) -> str:
    """Where a registered student's Triton model repository is: the version's source + onnx/model_repository
    (the pipeline registers the student directory with its ONNX export under onnx/)."""
    return f"{source.rstrip('/')}/onnx/model_repository"


@dataclass
class Plan:
    """One canary step: the patch, the exact kubectl command that sends it, and the registry change."""

    action: str
    patch: dict
    command: list[str]
    registry_change: str
    apply_registry: Callable[[], object] | None = field(repr=False, default=None)
    # Re-checks, just before the traffic moves, what the plan assumed of the registry (the canary alias): the
    # registry step checks it again, but by then the traffic has moved.
    precheck: Callable[[], object] | None = field(repr=False, default=None)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def _patch_command(config: RunConfig, patch: dict) -> list[str]:
    return [config.canary.kubectl, "patch", "inferenceservice", config.serving.model_name,
            "--namespace", config.canary.namespace, "--type", "merge", "-p", json.dumps(patch, sort_keys=True)]


def _version_source(registry: Registry, name: str, version: int) -> str:
    for info in registry.versions(name):
        if info.version == version:
            return info.source
    known = [v.version for v in registry.versions(name)]
    raise CanaryError(f"{name} has no version {version} in the registry at {registry.uri}; versions: {known}")


def _serving_contract(registry: Registry, name: str, version: int) -> tuple[str | None, str | None, str | None]:
    """What a version needs of the shared transformer: the feature version, the serving graph's inputs (a
    version registered before the graph took them has none: its graph takes the old ``features``) and the encoder
    whose query and item vectors it reads (None: registered before embedding versions were recorded)."""
    for info in registry.versions(name):
        if info.version == version:
            return (info.tags.get("feature_version"), info.tags.get("student_inputs", "features"),
                    info.tags.get("encoder_fingerprint"))
    return None, None, None


def require_no_other_canary(registry: Registry, name: str, version: int | None = None) -> None:
    """CanaryError while a version other than ``version`` (None: any) is under canary: starting another would
    replace the version the canary watch is analysing. The same version again is a new share (a ramp)."""
    running = registry.alias_version(name, CANARY)
    if running is not None and running != version:
        starting = f"starting v{version}" if version is not None else "a refresh"
        raise CanaryError(f"{name} v{running} is under canary: {starting} would replace the version the canary watch "
                          "is analysing. End it first (the watch, or `relevance canary promote|rollback --apply`)")


def plan_start(config: RunConfig, registry: Registry, version: int, percent: int) -> Plan:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 99:
        raise CanaryError(f"--percent: expected an integer in 1..99 (0 is a rollback, 100 a promotion), "
                          f"got {percent!r}")
    name = config.registry.student_name
    champion = registry.alias_version(name, CHAMPION)
    if champion is None:
        raise CanaryError(f"{name} has no {CHAMPION!r} in the registry at {registry.uri}: a canary needs "
                          "something to compare with (deploy the first student with `kubectl apply -k` and "
                          "`relevance registry promote`)")
    if version == champion:
        raise CanaryError(f"{name} v{version} is already the champion")
    require_no_other_canary(registry, name, version)
    source = _version_source(registry, name, version)
    theirs, ours = _serving_contract(registry, name, version), _serving_contract(registry, name, champion)
    if theirs[:2] != ours[:2]:
        raise CanaryError(f"{name} v{version} computes feature version {theirs[0]} with graph inputs {theirs[1]}, "
                          f"the champion v{champion} feature version {ours[0]} with {ours[1]}: the shared "
                          "transformer cannot serve both; roll out a new transformer instead")
    # e.g. a challenger on tuned towers. A version registered before the tag existed records none: it is let
    # through (its server refuses another encoder's feature project at start, the shared transformer cannot).
    if None not in (theirs[2], ours[2]) and theirs[2] != ours[2]:
        raise CanaryError(f"{name} v{version} reads the vectors of encoder {theirs[2]}, the "
                          f"champion v{champion} those of encoder {ours[2]}: the shared "
                          "transformer embeds queries and reads item embeddings for one encoder; roll out a "
                          "transformer of its own for the challenger (its bundle names its feature project), as "
                          "`relevance canary local` runs one server per variant")
    patch = {"spec": {"predictor": {"canaryTrafficPercent": percent,
                                    "model": {"storageUri": model_repository_uri(source)}}}}

    def apply_registry() -> None:
        registry.client.set_registered_model_alias(name, CANARY, str(version))

    return Plan("start", patch, _patch_command(config, patch),
                f"{name}: {CANARY} → v{version} (champion stays v{champion})", apply_registry)


def _require_canary(registry: Registry, name: str, analysed: int | None, action: str) -> int | None:
    """The version the ``canary`` alias names now, which must be ``analysed`` when the caller decided about one
    version (the canary watch): if the alias moved or went away since, someone else acted, and this step would
    undo theirs or act on a version nobody analysed."""
    current = registry.alias_version(name, CANARY)
    if analysed is not None and current != analysed:
        raise CanaryError(f"the {action} was decided for {name} v{analysed}, but the {CANARY!r} alias now names "
                          f"{'nothing' if current is None else f'v{current}'}: someone else acted; nothing was "
                          "changed")
    return current


def plan_promote(config: RunConfig, registry: Registry, analysed: int | None = None) -> Plan:
    """Promote the version under canary; with ``analysed``, only if the canary is still that version."""
    name = config.registry.student_name
    challenger = _require_canary(registry, name, analysed, "promotion")
    if challenger is None:
        raise CanaryError(f"{name} has no {CANARY!r} alias: start a canary first (`relevance canary start`)")
    source = _version_source(registry, name, challenger)
    # The storageUri is the one the canary already runs: restating it makes the patch right on its own.
    patch = {"spec": {"predictor": {"canaryTrafficPercent": None,
                                    "model": {"storageUri": model_repository_uri(source)}}}}

    def precheck() -> None:
        _require_canary(registry, name, challenger, "promotion")  # the alias may have moved since the plan

    def apply_registry() -> None:
        precheck()
        registry.promote(name, challenger)
        registry.client.delete_registered_model_alias(name, CANARY)

    return Plan("promote", patch, _patch_command(config, patch),
                f"{name}: {CHAMPION} → v{challenger} (was v{registry.alias_version(name, CHAMPION)}; kept for "
                "rollback)", apply_registry, precheck)


def plan_rollback(config: RunConfig, registry: Registry, analysed: int | None = None) -> Plan:
    """End the running canary (traffic back to the champion), or with no canary undo the last promotion.

    ``analysed``: the canary version the caller decided to roll back (the canary watch). Then only that canary
    is ever ended: if the alias no longer names it, CanaryError, and the post-promotion branch is never taken
    (a round that analysed v3 must not move the champion from v2 back to v1)."""
    name = config.registry.student_name
    champion = registry.alias_version(name, CHAMPION)
    challenger = _require_canary(registry, name, analysed, "rollback")
    if champion is None:
        raise CanaryError(f"{name} has no {CHAMPION!r} in the registry at {registry.uri}: nothing to roll back to")
    if analysed is not None and challenger == champion:
        raise CanaryError(f"{name} v{analysed} is the {CANARY!r} and the {CHAMPION!r} at once: someone promoted it; "
                          "nothing was changed")
    if challenger is not None and challenger != champion:  # a canary is running: send everything back now
        source = _version_source(registry, name, champion)
        patch = {"spec": {"predictor": {"canaryTrafficPercent": 0,
                                        "model": {"storageUri": model_repository_uri(source)}}}}

        def precheck() -> None:
            _require_canary(registry, name, challenger, "rollback")  # the alias may have moved since the plan

        def apply_registry() -> None:
            precheck()
            registry.client.delete_registered_model_alias(name, CANARY)
            registry.client.set_model_version_tag(name, str(challenger), "canary", "rolled back")

        return Plan("rollback", patch, _patch_command(config, patch),
                    f"{name}: {CANARY} alias v{challenger} removed (champion stays v{champion})", apply_registry,
                    precheck)
    previous = registry.client.get_registered_model(name).tags.get(PREVIOUS_CHAMPION_TAG)
    if not previous:
        raise CanaryError(f"{name}: no canary is running and no promotion to undo (no {PREVIOUS_CHAMPION_TAG!r} tag)")
    source = _version_source(registry, name, int(previous))
    patch = {"spec": {"predictor": {"canaryTrafficPercent": None,
                                    "model": {"storageUri": model_repository_uri(source)}}}}
    return Plan("rollback", patch, _patch_command(config, patch),
                f"{name}: {CHAMPION} → v{previous} (back from v{champion})", lambda: registry.rollback(name))


def dry_run(config: RunConfig, plan: Plan, crd_file: str | None = None) -> tuple[dict, list[str]]:
    """The InferenceService of ``config.canary.overlay`` after the patch (``kubectl patch --local``), and every
    problem the patched manifests would have."""
    from relevance.serving.canary.manifests import inference_service, overlay_dir, patch_local, render, validate

    resources = render(overlay_dir(config.canary.overlay), binary=config.canary.kubectl)
    isvc = inference_service(resources)
    patched = patch_local(isvc, plan.patch, binary=config.canary.kubectl)
    others = [r for r in resources if r is not isvc]
    return patched, validate([*others, patched], crd_file)


def send_with_kubectl(config: RunConfig, plan: Plan) -> str:
    """Send the patch to the cluster (kubectl's current context). A storage URI KServe cannot fetch is refused
    before anything changes."""
    from relevance.serving.canary.manifests import STORAGE_SCHEMES, kubectl

    uri = plan.patch["spec"]["predictor"].get("model", {}).get("storageUri")
    if uri is not None and not uri.startswith(STORAGE_SCHEMES):
        raise CanaryError(f"storageUri {uri!r} is not one KServe's storage initializer can fetch "
                          f"({', '.join(STORAGE_SCHEMES)}): point registry.tracking_uri at an MLflow server whose "
                          "artifact store is object storage; nothing was changed")
    return kubectl(plan.command[1:], binary=config.canary.kubectl)


def apply(config: RunConfig, plan: Plan, send: Callable[[Plan], str] | None = None) -> str:
    """Move the traffic, then the registry aliases. ``send`` moves the traffic: kubectl against the cluster by
    default (:func:`send_with_kubectl`); `relevance canary watch` passes the local splitter's instead, so that the
    same plans and the same registry step run in both."""
    if plan.precheck is not None:
        plan.precheck()  # someone else moved the canary alias since the plan: nothing is sent
    out = send(plan) if send is not None else send_with_kubectl(config, plan)
    if plan.apply_registry is not None:
        try:
            plan.apply_registry()
        except CanaryError as error:  # the alias moved between the check and now: finishing by hand would undo it
            raise CanaryError(f"the traffic was moved ({plan.action}), then the registry step found that someone "
                              f"else acted ({error}): check the registry's aliases and the traffic split before "
                              "anything else; do not finish this step by hand") from None
        except Exception as error:  # MlflowException and friends: the traffic has moved, say what is left
            raise CanaryError(f"the traffic was moved ({plan.action}) but the registry was not ({error}); do the "
                              f"registry step by hand: {plan.registry_change}") from None
    return out
