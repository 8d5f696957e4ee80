"""Profiles: named starting points for a run, typed and validated like a run's file.

``quick`` (tiny, for tests and the demo), ``default`` (MiniLM-L6 on CPU) and ``gpu`` (a large decoder teacher with
bf16 and LoRA). A profile sets some sections' values over RunConfig's defaults; a run's file overrides them key by
key (relevance.config.build_config). The pipeline's pods come from the step declarations (relevance.config.steps).
"""

from __future__ import annotations

from relevance.config.base import Strict
from relevance.config.cluster import ClusterConfig, DataVolume, LabelFanOutConfig
from relevance.config.ml import DataConfig, PoolLabellingConfig, StudentConfig, TeacherConfig, TextConfig
from relevance.config.steps import DEFAULT_POD, STEPS


class Profile(Strict):
    """What a profile sets: only the values given count (a section left out keeps RunConfig's defaults, and so
    does a field left out of a section)."""

    workdir: str | None = None
    data: DataConfig | None = None
    text: TextConfig | None = None
    teacher: TeacherConfig | None = None
    labeling: PoolLabellingConfig | None = None
    student: StudentConfig | None = None
    cluster: ClusterConfig | None = None

    def settings(self) -> dict:
        """The values it sets, as the nested mapping a run's file is merged into."""
        return self.model_dump(exclude_unset=True)


def pipeline_pods(gpu: bool = False, **cluster) -> ClusterConfig:
    """Every declared step's pod over the default pod on CPU nodes; with ``gpu``, the steps that run the teacher on
    GPU nodes. ``cluster``: further fields of the section (the labelling fan-out, the data volume)."""
    pods = {step.name: step.gpu_pod if gpu and step.gpu_pod else step.pod for step in STEPS
            if step.pod or (gpu and step.gpu_pod)}
    return ClusterConfig(default=DEFAULT_POD, steps=pods, **cluster)


PROFILES: dict[str, Profile] = {
    "default": Profile(cluster=pipeline_pods()),
    # Small enough for a laptop demo in under five minutes on any 2-core x86-64, fp32 included: MiniLM-L6 fully
    # fine-tuned on ~1,200 judged pairs. (LoRA r=8 at this size stayed at the majority class after 2 epochs; full
    # fine-tuning learns.) The best valid loss comes in the second epoch: patience 1 stops after the third instead
    # of running the fourth, keeping the 4-epoch learning-rate schedule (2 epochs with their own schedule stayed
    # at the majority class). Two label shards, so the demo still fans out, for two teacher loads rather than three.
    "quick": Profile(
        workdir="runs/quick",
        data=DataConfig(synthetic_items=600, synthetic_judged_queries=150, synthetic_impressions=4000),
        teacher=TeacherConfig(finetune="full", epochs=4, batch_size=16, learning_rate=8e-5, early_stopping_patience=1),
        text=TextConfig(max_length=96),
        labeling=PoolLabellingConfig(shard_rows=3200),
        student=StudentConfig(epochs=15),
        # In the pipeline the labelling plan cuts the shards: ~6,000 pool rows at ~300 pairs/s (MiniLM-L6, 2
        # cores, fp32: estimated) with shards of at most 25 s give two shards on one device, so the demo still
        # fans out.
        cluster=pipeline_pods(labeling=LabelFanOutConfig(pairs_per_s_per_device=300.0, shard_overhead_s=10.0,
                                                         deadline_s=600.0, max_shard_s=25.0, expected_pool_rows=6000,
                                                         max_devices=2)),
    ),
    # A decoder teacher on a GPU: bf16 autocast, LoRA and gradient checkpointing; last-token pooling.
    "gpu": Profile(
        workdir="runs/gpu",
        teacher=TeacherConfig(pooling="last", finetune="lora", gradient_checkpointing=True, precision="bf16",
                              batch_size=16, learning_rate=2e-4, lora_r=16, lora_alpha=32),
        labeling=PoolLabellingConfig(batch_size=256, precision="bf16"),
        cluster=pipeline_pods(
            gpu=True,
            # The decoder's weights (teacher.backbone) and the data are read from a shared claim.
            data_volume=DataVolume(claim_name="relevance-data", mount_path="/mnt/data"),
            # An 8B decoder teacher at ~128 tokens per pair on one H100 in bf16: 2 × 8e9 × 128 FLOPs per pair at
            # 35% of 989 TFLOP/s is 169 pairs/s, an estimate until a GPU measures it
            # (benchmarks/results/labelling-cost.md). 90 s per shard (estimated): pod start, the 16 GB teacher from
            # the artifact store, loading it onto the GPU. The seeds' scale: 30M pairs labelled within the hour.
            labeling=LabelFanOutConfig(pairs_per_s_per_device=169.0, shard_overhead_s=90.0, deadline_s=3600.0,
                                       max_shard_s=600.0, expected_pool_rows=30_000_000, max_devices=128)),
    ),
}
