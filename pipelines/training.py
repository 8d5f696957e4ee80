"""The training pipeline: prepare → validate → features → teacher → label (fan-out) → student → evaluate →
export → register, with two gates.

- Data gate: `validate_data` writes Great Expectations Data Docs and never fails; `require_valid_data` fails the
  run when a suite failed, so nothing downstream (training, registration) runs, and the docs stay as an artifact.
- Challenger gate (dsl.If): the student is registered as `challenger` only if it meets registry.min_* and beats
  the registry's `champion` on the same evaluation set.

Compile it with `relevance pipeline compile`, upload the YAML in the Kubeflow UI, or run it with
`relevance pipeline run --local` (kfp.local, one subprocess per step) or `relevance pipeline submit --host URL`.
"""

import os

from kfp import dsl

from relevance.components import steps

PIPELINE_NAME = "relevance-distillation-training"


@dsl.pipeline(name=PIPELINE_NAME,
              description="Fine-tune an LLM cross-encoder teacher on graded pairs, label a pool, distil a student, "
                          "register it in MLflow as challenger if it beats the champion.")
def training_pipeline(
    profile: str = "quick",
    overrides_json: str = "{}",
    image: str = steps.IMAGE,
):
    """Train, evaluate and register a relevance student.

    Args:
        profile: Base settings: quick (demo-sized), default (MiniLM-L6 on CPU) or gpu (decoder teacher, LoRA, bf16).
        overrides_json: JSON object merged over the profile, with the keys of relevance.config.RunConfig, e.g.
            {"data": {"source": "homedepot", "path": "/data/homedepot"}, "registry": {"min_ndcg": 0.85}}.
        image: Container image every step runs in (built from infra/docker).
    """
    def step(task):
        # One image for every step, chosen per run; caching stays on except where a step reads the registry.
        return task.set_container_image(image)

    config = step(steps.resolve_config(profile=profile, overrides_json=overrides_json))
    config.set_display_name("resolve config")
    settings = config.outputs["run_config"]
    data = step(steps.prepare_data(run_config=settings))
    validation = step(steps.validate_data(run_config=settings, dataset=data.outputs["dataset"]))
    gate = step(steps.require_valid_data(validation=validation.outputs["validation"],
                                         data_docs=validation.outputs["data_docs"]))
    dataset = data.outputs["dataset"]

    features = step(steps.compute_features(run_config=settings, dataset=dataset)).after(gate)
    teacher = step(steps.finetune_teacher(run_config=settings, dataset=dataset)).after(gate)
    pool = step(steps.build_pool(run_config=settings, dataset=dataset)).after(gate)
    with dsl.ParallelFor(pool.outputs["Output"], name="label-shards") as shard_index:
        labels = step(steps.label_shard(run_config=settings, dataset=dataset, teacher=teacher.outputs["teacher"],
                                        pool=pool.outputs["pool"], shard_index=shard_index))
    student = step(steps.distill_student(
        run_config=settings, dataset=dataset, teacher=teacher.outputs["teacher"], pool=pool.outputs["pool"],
        labels=dsl.Collected(labels.outputs["labels"]), feature_repo=features.outputs["feature_repo"],
        validation=validation.outputs["validation"]))
    evaluation = step(steps.evaluate_student(run_config=settings, dataset=dataset,
                                             student=student.outputs["student"], teacher=teacher.outputs["teacher"],
                                             feature_repo=features.outputs["feature_repo"]))
    evaluation.set_caching_options(False)  # compares with the registry's current champion, which changes
    export = step(steps.export_onnx(run_config=settings, dataset=dataset, student=student.outputs["student"]))
    decision = step(steps.challenger_gate(evaluation=evaluation.outputs["evaluation"]))
    with dsl.If(decision.output == True, name="challenger-gate-passed"):  # noqa: E712 (a KFP condition)
        register = step(steps.register_models(
            run_config=settings, dataset=dataset, teacher=teacher.outputs["teacher"],
            student=student.outputs["student"], onnx_model=export.outputs["onnx_model"],
            evaluation=evaluation.outputs["evaluation"], validation=validation.outputs["validation"],
            feature_repo=features.outputs["feature_repo"]))
        register.set_caching_options(False)


def compile_pipeline(out_path: str | os.PathLike, image: str | None = None) -> str:
    """Write the pipeline YAML (PipelineSpec) to upload in the Kubeflow UI; ``image`` becomes the default of
    the pipeline's ``image`` parameter."""
    from kfp import compiler

    compiler.Compiler().compile(training_pipeline, package_path=str(out_path),
                                pipeline_parameters={"image": image} if image else None)
    return str(out_path)
