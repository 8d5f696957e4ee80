"""The chain on one machine: prepare → pool → teacher → labels → [towers] → [query tower] → students → evaluation
report, each step skipped when its output exists.

A rerun after a crash (or after changing only a late step's settings and deleting its output) redoes only what is
missing. The steps themselves are the domain functions the KFP components call too (relevance.data.prepare,
relevance.labels.pool.build_pool, relevance.teacher.train.fit_teacher, relevance.labels.labelling.label_pool,
relevance.student.distillation.train_students, relevance.evaluation.challenger.evaluate_run); this module only decides
where their outputs live and whether one can be reused. The teacher step is also the one way into teacher training
from a workdir (`relevance run`, `relevance train-teacher`): where it trains is relevance.teacher.launch's choice.

    workdir/data/            canonical dataset (relevance.data.schema)
    workdir/teacher/         fine-tuned teacher
    workdir/pool.parquet     unlabelled pool: impressions + BM25 candidates, minus judged pairs
    workdir/labels/          teacher soft labels, one parquet per shard
    workdir/towers/          the student's bi-encoder tuned on the labels (student.towers.enabled; the student,
                             its GBDTs, features and bundle then read it; student_frozen_towers/ keeps the
                             frozen encoder's student as a report row)
    workdir/query_tower/     a smaller query tower distilled into the student's encoder (student.query_tower.enabled;
                             the distilled student, its GBDTs and its bundle then embed queries with it; the
                             human-only and frozen-towers rows keep the frozen encoder)
    workdir/student/         distilled student;  workdir/student_human_only/  the human-labels baseline
    workdir/gbdt_*/          GBDT baselines on the student's features (multiclass, LambdaMART[, distilled])
    workdir/labeller/        the teacher + GBDT ensemble, when the student learns from it (student.labeller)
    workdir/embeddings/      content-addressed embedding cache shared by all steps
    workdir/report.json|md   quality report with confusion matrices
    workdir/steps.json       the settings each step's output was made with
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from relevance.common.console import log as _log
from relevance.common.files import atomic_write_json, atomic_write_text, read_manifest
from relevance.config import STEPS, RunConfig
from relevance.data.schema import Dataset

# The config sections each step's output depends on, by the output's name in steps.json: declared with the
# pipeline's steps (relevance.config.steps), so that the chain and the pipeline cannot disagree.
STEP_SETTINGS = {step.output: step.settings for step in STEPS if step.output}


# Settings that change how a step runs, not what it makes: a teacher trained on 1 or 8 processes is the same
# teacher (relevance.models.distributed matches them within float rounding), so changing them reuses the output.
_HOW = {"teacher": {"distributed"}, "student": {"checkpoint_every_batches", "query_tower"}}


class Chain:
    """One run's workdir: where each step's output lives, and each step run only when its output is missing.

    An output made with other settings is an error, not a silent reuse: the user deletes it (or picks a new
    workdir) so that a report never mixes models trained under different configs.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        root = Path(config.workdir)
        self.root = root
        self.data_dir, self.teacher_dir, self.pool_path = root / "data", root / "teacher", root / "pool.parquet"
        self.labels_dir, self.embeddings_dir, self.report_path = root / "labels", root / "embeddings", root / "report.json"
        self.student_dirs = {"student": root / "student", "student_human_only": root / "student_human_only"}
        self.towers_dir = root / "towers"
        self._tuned: Path | None = None  # the towers, once student_config has tuned or reused them
        self.query_tower_dir = root / "query_tower"
        self._query_tower: Path | None = None  # likewise the query tower (student.query_tower.enabled)
        if config.student.towers.enabled:  # the same student on the frozen encoder: what the towers are worth
            self.student_dirs["student_frozen_towers"] = root / "student_frozen_towers"
        self.labeller_dir = root / "labeller"

    # -- the step cache -------------------------------------------------------------------------------------
    def _settings_hash(self, step: str) -> str:
        # Only values that differ from their defaults: a new config field (with a default that keeps the old
        # behaviour) then leaves existing runs valid.
        settings = {section: getattr(self.config, section).model_dump(exclude_defaults=True, exclude=_HOW.get(section))
                    for section in STEP_SETTINGS[step]}
        if "student" in settings and self.config.student.query_tower.enabled:
            # How a query tower is distilled is no student setting, unless the run distils the one its student
            # reads.
            settings["student"]["query_tower"] = self.config.student.query_tower.model_dump(
                exclude_defaults=True, exclude={"checkpoint_every_batches"})
        if step == "students" and self.config.student.labeller == "teacher":
            # The students see the trees only through a teacher+gbdt labeller: without one, gbdt settings cannot
            # change them and count as unset (adding a GBDT objective keeps the students).
            settings["gbdt"] = {}
        if step == "pool" and self.config.candidates.embedding_top_k:
            # The embedding channel's candidates are the student's bi-encoder's nearest items.
            from relevance.student.featurizer import featurizer_settings

            settings["encoder"] = {k: v for k, v in featurizer_settings(self.config).items() if k.startswith("encoder")}
        if step == "pool" and not self.config.candidates.student_top_k:
            # Without the student channel, its other settings cannot change the pool.
            for field in ("student_model", "student_depth"):
                settings["candidates"].pop(field, None)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def reusable(self, step: str, output_exists: bool) -> bool:
        """Whether ``step`` can be skipped: its output exists and was made with the same settings."""
        record = self.root / "steps.json"
        recorded = json.loads(record.read_text()) if record.exists() else {}
        current = self._settings_hash(step)
        if output_exists and recorded.get(step) not in (None, current):
            raise ValueError(f"{self.root}: the {step} output was made with other settings "
                             f"({', '.join(STEP_SETTINGS[step])} changed); delete it to redo the step, or use "
                             "another workdir")
        if not output_exists or step not in recorded:
            atomic_write_json(record, {**recorded, step: current})
        return output_exists

    # -- the steps, each named after what it gives ----------------------------------------------------------
    def dataset(self, with_impressions: bool = False) -> Dataset:
        """The prepared dataset. Impressions stay on disk unless asked for: the pool reads them in chunks
        (there may be tens of millions)."""
        from relevance.data import prepare

        if not self.reusable("data", (self.data_dir / "dataset.json").exists()):
            prepare(self.config.data, self.data_dir)
        return Dataset.load(self.data_dir, with_impressions=with_impressions)

    def pool(self, dataset: Dataset) -> Path:
        from relevance.labels.pool import build_pool, check_pool_holdout, check_pool_student

        student_model = self.config.candidates.student_model
        if self.config.candidates.student_top_k and Path(student_model).resolve().is_relative_to(
                self.root.resolve()):
            # This run's own student is trained from this pool: it cannot choose the pool's candidates.
            raise ValueError(f"candidates.student_model {student_model} is inside this run's workdir {self.root}; "
                             "give another run's student (e.g. the champion's)")
        if not self.reusable("pool", self.pool_path.exists()):
            build_pool(self.config, dataset, self.pool_path, self.data_dir / "impressions.parquet",
                       embeddings_dir=self.embeddings_dir)
        check_pool_holdout(self.pool_path, dataset)  # a re-prepared dataset must not reuse an older pool
        check_pool_student(self.pool_path, self.config)  # nor a new champion one its predecessor chose
        return self.pool_path

    def teacher(self, dataset: Dataset, launch: RunConfig | None = None, remote=None) -> Path:
        """The fine-tuned teacher, trained when the step cache has none. ``launch``: the config to launch the
        training with (relevance.teacher.launch.launch_settings: this config with other ``teacher.distributed``
        settings); None: in this process, as `relevance run` trains it. Out of this process, it is
        relevance.teacher.launch.launch_teacher's choice of launcher (``remote``: the TrainJob launcher, which the
        platform provides), on the prepared dataset in workdir/data."""
        from relevance.teacher.launch import in_this_process, launch_teacher
        from relevance.teacher.train import fit_teacher, recalibrate_teacher

        if not self.reusable("teacher", (self.teacher_dir / "manifest.json").exists()):
            if launch is None or in_this_process(launch):
                fit_teacher(self.config, dataset, self.teacher_dir)
                return self.teacher_dir
            launch_teacher(launch, self.data_dir.absolute(), self.teacher_dir.absolute(), remote=remote, log=_log)
        # The settings match, but the judgments may not: `relevance import-labels` adds train judgments, and a
        # teacher that never saw them must not label the pool as if it had.
        trained_on = read_manifest(self.teacher_dir, "teacher").get("train_data_hash")
        if trained_on and trained_on != dataset.training_data_hash():
            raise ValueError(f"{self.root}: the judgments changed since the teacher was trained (new train or valid "
                             "judgments, e.g. from `relevance import-labels`). To learn from them, delete "
                             f"{self.teacher_dir}, {self.pool_path.name}, labels/ and the student folders, or "
                             "start another workdir")
        recalibrate_teacher(self.config, dataset, self.teacher_dir)  # a change of method refits only calibration
        return self.teacher_dir

    def labels(self, dataset: Dataset, shards: list[int] | None = None) -> Path:
        """Labels the pool (or the given shards); shards already done are skipped inside, so this always runs."""
        from relevance.labels.labelling import label_pool

        label_pool(self.teacher(dataset), self.pool(dataset), dataset, self.labels_dir, self.config.labeling,
                   shards)
        return self.labels_dir

    def student_config(self, dataset: Dataset, tune: bool = True) -> RunConfig:
        """The run's config as its student reads it: with ``student.towers.enabled``, ``student.encoder`` is the
        tuned towers, so the student, its GBDTs and its features (`relevance features`) all read the same vectors;
        with ``student.query_tower.enabled``, ``student.query_encoder`` is the query tower distilled from that
        encoder; otherwise the config itself. ``tune``: tune the towers and distil the query tower when missing
        (the run's steps); else they must exist (what reads a finished run: features, selection)."""
        student = self.config.student
        if not student.towers.enabled and not student.query_tower.enabled:
            return self.config
        from relevance.student.encoder import QUERY_TOWER_MANIFEST, separate_query_tower

        # The copy names what the steps made and has nothing left to make (a query encoder beside enabled steps is
        # refused).
        config = self.config.model_copy(deep=True, update={"student": student.without_encoder_steps()})
        if student.towers.enabled:
            if tune and self._tuned is None:  # once per chain: the reuse check re-reads the labels and the catalog
                self._tuned = self.towers(dataset)
            tuned = self._tuned.resolve() if tune else self._made_towers()
            # What the towers are (shared or separate) is read from what was tuned, not from the config.
            query = separate_query_tower(tuned)
            config.student = config.student.model_copy(update={
                "encoder": str(tuned), "query_encoder": None if query is None else str(query)})
        if student.query_tower.enabled:
            # Distilled from the encoder just named (the tuned towers' query side, when the run tunes them).
            if not tune and not (self.query_tower_dir / QUERY_TOWER_MANIFEST).exists():
                raise FileNotFoundError(f"{self.query_tower_dir}: no query tower; student.query_tower.enabled "
                                        "makes it a step of `relevance run`: run it first")
            if tune and self._query_tower is None:
                self._query_tower = self.query_tower(dataset, encoder=config.student.encoder)
            path = (self._query_tower if tune else self.query_tower_dir).resolve()
            config.student = config.student.model_copy(update={"query_encoder": str(path)})
        return config

    def _made_towers(self) -> Path:
        """The run's tuned towers, which must exist (student.towers.enabled, read by what follows the step)."""
        from relevance.student.towers import TOWER_MANIFEST

        if not (self.towers_dir / TOWER_MANIFEST).exists():
            raise FileNotFoundError(f"{self.towers_dir}: no tuned towers; student.towers.enabled makes them a step "
                                    "of `relevance run`: run it first")
        return self.towers_dir.resolve()

    def featurizer(self, dataset: Dataset, config: RunConfig | None = None):
        """The student's featurizer (``config``'s: the frozen encoder's for the frozen-towers row)."""
        from relevance.student.featurizer import build_featurizer, featurizer_settings

        config = config or self.student_config(dataset)
        return build_featurizer(dataset.items, featurizer_settings(config), self.embeddings_dir)

    @property
    def gbdt_dirs(self) -> dict[str, Path]:
        from relevance.student.gbdt import BASELINE_NAMES

        gbdt = self.config.gbdt
        return {BASELINE_NAMES[o]: self.root / BASELINE_NAMES[o] for o in gbdt.objectives} if gbdt.enabled else {}

    def baselines(self, dataset: Dataset) -> dict[str, Path]:
        """The GBDT baselines on the student's features (gbdt.objectives)."""
        from relevance.labels.labelling import read_labels
        from relevance.student.distillation import distillation_targets
        from relevance.student.gbdt import BASELINE_NAMES, train_baselines

        outputs = self.gbdt_dirs
        for name, path in outputs.items():
            # The step hash holds only non-default settings, so a change of defaults (LambdaMART's own settings)
            # would not show there: the trees' manifests record the settings they were grown with.
            made = read_manifest(path).get("config") if (path / "manifest.json").exists() else None
            if made is None:
                continue
            # Which trees are grown (objectives, enabled) is no setting of one tree; only LambdaMART reads its own.
            ignore = {"objectives", "enabled"} | ({"lambdamart"} if name != BASELINE_NAMES["lambdamart"] else set())
            made, current = ({k: v for k, v in d.items() if k not in ignore}
                             for d in (made, self.config.gbdt.model_dump()))
            changed = sorted(k for k in made.keys() | current.keys() if made.get(k) != current.get(k))
            if changed:
                raise ValueError(f"{self.root}: {name} was made with other gbdt settings (changed: {changed}); "
                                 f"delete {path} to redo it, or use another workdir")
        if outputs and not self.reusable("gbdt", all((p / "manifest.json").exists() for p in outputs.values())):
            config = self.student_config(dataset)  # the student's encoders (tuned towers, query tower), recorded
            featurizer = self.featurizer(dataset, config)
            targets = None
            if "gbdt_distilled" in outputs:
                labels = read_labels(self.labels(dataset), dataset.num_grades, pool_path=self.pool_path)
                targets = distillation_targets(self.config, dataset, self.teacher(dataset), labels)
            train_baselines(config, dataset, featurizer, outputs, targets, log=_log)
        return outputs

    def labeller(self, dataset: Dataset):
        """The ensemble the student learns from when ``student.labeller`` is teacher+gbdt (None otherwise):
        the teacher and the multiclass GBDT, weighted on valid."""
        from relevance.student.gbdt import GBDT, train_baselines
        from relevance.teacher.ensemble import Ensemble, fit_weights
        from relevance.teacher.model import Teacher, score_items

        if self.config.student.labeller == "teacher":
            return None
        teacher_dir = self.teacher(dataset)
        gbdt_dir = self.root / "gbdt_multiclass"
        config = self.student_config(dataset)
        featurizer = self.featurizer(dataset, config)
        train_baselines(config, dataset, featurizer, {"gbdt_multiclass": gbdt_dir}, log=_log)
        valid = dataset.split("valid")
        teacher = Teacher.load(teacher_dir)
        members = [score_items(teacher, valid, dataset.query_text, teacher.item_texts(dataset.items),
                               self.config.labeling.batch_size, self.config.labeling.precision),
                   GBDT.load(gbdt_dir).predict_proba(featurizer.pair_features(valid, dataset.query_text))]
        weights = fit_weights(members, valid["grade"].to_numpy())
        _log(f"labeller: teacher × {weights[0]:.3f} + gbdt × {weights[1]:.3f} (log-linear, fitted on valid)")
        return Ensemble.create(self.labeller_dir, [teacher_dir, gbdt_dir], weights,
                               {"split": "valid", "pairs": int(len(valid))})

    def towers(self, dataset: Dataset, out: Path | None = None) -> Path:
        """The student's bi-encoder tuned on the teacher's labels of the pool (relevance.student.towers): a model
        directory to name as ``student.encoder``, and a step of `relevance run` with ``student.towers.enabled``.
        distil_towers keys its output by the base encoder, labels, valid lists and settings: the same ones reuse
        it, other ones retune it (resuming from its checkpoint when killed)."""
        from relevance.labels.labelling import label_chunks
        from relevance.models.bm25 import lexical_item_texts
        from relevance.student.towers import distil_towers

        out = Path(out) if out is not None else self.towers_dir
        student = self.config.student
        labels = label_chunks(self.labels(dataset), dataset.num_grades, pool_path=self.pool_path)
        valid = dataset.split("valid")[["query_id", "item_id", "grade"]]
        end_to_end = {}
        if student.towers.objective == "end_to_end":  # the MLP reads the student's lexical block beside the towers
            from relevance.student.featurizer import build_featurizer, featurizer_settings

            end_to_end = {"student": student, "lexical": build_featurizer(
                dataset.items, featurizer_settings(self.config), self.embeddings_dir, with_encoder=False)}
        return distil_towers(labels, dataset.query_text, lexical_item_texts(dataset.items, self.config.text), valid,
                             dataset.num_grades, student.encoder, student.encoder_max_length, student.towers, out,
                             out.parent / f".{out.name}.work", log=_log, **end_to_end)

    def query_tower(self, dataset: Dataset, out: Path | None = None, encoder: str | None = None) -> Path:
        """A smaller query tower distilled into ``encoder``'s space (default ``student.encoder``;
        relevance.student.query_tower), on the pool's and train's queries and title spans; valid's queries pick
        the epoch. A model directory to name as ``student.query_encoder``, and a step of `relevance run` with
        ``student.query_tower.enabled``; a killed run resumes, the same inputs reuse it."""
        from relevance.labels.labelling import label_chunks
        from relevance.models.bm25 import lexical_item_texts
        from relevance.student.query_tower import distil_query_tower

        out = Path(out) if out is not None else self.query_tower_dir
        student = self.config.student
        if encoder is None and student.towers.enabled:  # the run's student reads the tuned towers: distil from them
            encoder = str(self._made_towers())
        labels = label_chunks(self.labels(dataset), dataset.num_grades, pool_path=self.pool_path)
        ids = dict.fromkeys(dataset.split("train")["query_id"])
        for _, load in labels:
            ids.update(dict.fromkeys(load()["query_id"]))
        valid_ids = list(dict.fromkeys(dataset.split("valid")["query_id"]))
        items = dataset.items.set_index("item_id")
        titles = (items["title"] if "title" in items.columns  # else the item text, as the featurizer's titles
                  else lexical_item_texts(dataset.items, self.config.text))
        return distil_query_tower(encoder or student.encoder, dataset.query_text.reindex(list(ids)).dropna().tolist(),
                                  dataset.query_text.reindex(valid_ids).dropna().tolist(), titles,
                                  student.encoder_max_length, student.query_tower, out,
                                  out.parent / f".{out.name}.work", log=_log)

    def students(self, dataset: Dataset) -> dict[str, Path]:
        from relevance.labels.labelling import label_chunks
        from relevance.student.distillation import DISTILLED, HUMAN_ONLY, train_students

        outputs = self.student_dirs
        if not self.reusable("students", all((p / "manifest.json").exists() for p in outputs.values())):
            labels = label_chunks(self.labels(dataset), dataset.num_grades, pool_path=self.pool_path)
            if self.config.student.towers.enabled:
                # The human-only baseline stays on the frozen encoder: tuned towers have learnt from the teacher.
                frozen = {DISTILLED: outputs["student_frozen_towers"], HUMAN_ONLY: outputs[HUMAN_ONLY]}
                train_students(self.config, dataset, self.teacher_dir, labels, frozen,
                               self.featurizer(dataset, self.config))
                tuned = self.student_config(dataset)
                train_students(tuned, dataset, self.teacher_dir, labels, {DISTILLED: outputs[DISTILLED]},
                               self.featurizer(dataset, tuned))
            elif self.config.student.query_tower.enabled:
                # The human-only baseline stays on the encoder alone, as beside tuned towers.
                train_students(self.config, dataset, self.teacher_dir, labels, {HUMAN_ONLY: outputs[HUMAN_ONLY]},
                               self.featurizer(dataset, self.config))
                config = self.student_config(dataset)
                train_students(config, dataset, self.teacher_dir, labels, {DISTILLED: outputs[DISTILLED]},
                               self.featurizer(dataset, config), labeller=self.labeller(dataset))
            else:
                train_students(self.config, dataset, self.teacher_dir, labels, outputs, self.featurizer(dataset),
                               labeller=self.labeller(dataset))
        return outputs

    def grading_project(self, dataset: Dataset, strategy: str, budget: int, per_query: int, seed: int,
                        pre_annotate: bool, out: Path, log=_log):
        """Pool pairs for human grading (relevance.labels.active) written as a Label Studio project in ``out``
        with the selection beside it; returns the chosen pairs."""
        from relevance.labels.active import select_for_grading
        from relevance.labels.annotation import write_project
        from relevance.models.bm25 import lexical_item_texts

        labels_dir = self.labels(dataset)
        # The student's featurizer (its tuned towers, when the run tunes them) for its predictions and embeddings.
        chosen = select_for_grading(self.student_config(dataset, tune=False), dataset, labels_dir, self.pool_path,
                                    strategy, budget, per_query, seed, self.student_dirs["student"],
                                    self.embeddings_dir, log=log)
        teacher = read_manifest(self.teacher_dir, "teacher")["teacher_version"]
        write_project(out, chosen, dataset, lexical_item_texts(dataset.items, self.config.text), pre_annotate,
                      teacher, {"strategy": strategy, "budget": budget, "per_query": per_query, "seed": seed,
                                "teacher_version": teacher, "queries": int(chosen["query_id"].nunique())})
        chosen.to_parquet(out / "selection.parquet", index=False)
        return chosen

    def traffic_grading_project(self, dataset: Dataset, records, strategy: str, budget: int, per_query: int,
                                seed: int, top_k: int, pre_annotate: bool, out: Path, log=_log):
        """Served pairs for human grading (relevance.labels.from_traffic) as a Label Studio project in ``out``;
        queries first seen in traffic are added to the prepared dataset. Returns the chosen pairs."""
        from relevance.labels.annotation import add_queries, write_project
        from relevance.labels.from_traffic import select_from_traffic
        from relevance.models.bm25 import lexical_item_texts

        if pre_annotate and strategy == "random":
            raise ValueError("--pre-annotate shows the teacher's grade, which the random strategy does not compute")
        teacher, texts, version = None, lexical_item_texts(dataset.items, self.config.text), None
        if strategy != "random":
            from relevance.teacher.model import Teacher

            if not (self.teacher_dir / "manifest.json").exists():
                raise FileNotFoundError(f"{self.teacher_dir}: no teacher; the {strategy} strategy needs one "
                                        "(train-teacher first), or use --strategy random")
            model = Teacher.load(self.teacher_dir)
            teacher, texts = model.predict_proba, model.item_texts(dataset.items)
            version = read_manifest(self.teacher_dir, "teacher")["teacher_version"]
        chosen, new_queries = select_from_traffic(records, dataset, strategy, budget, per_query, seed, top_k,
                                                  teacher, texts, log=log)
        added = add_queries(self.data_dir, new_queries)
        log(f"select: {added} query text(s) first seen in traffic added to {self.data_dir / 'queries.parquet'}")
        dataset = Dataset.load(self.data_dir, with_impressions=False)  # with those queries' texts
        write_project(out, chosen, dataset, lexical_item_texts(dataset.items, self.config.text), pre_annotate,
                      version, {"strategy": strategy, "budget": budget, "per_query": per_query, "seed": seed,
                                "source": "traffic", "top_k": top_k, "teacher_version": version,
                                "queries": int(chosen["query_id"].nunique()), "new_queries": added})
        chosen.to_parquet(out / "selection.parquet", index=False)
        return chosen

    def report(self, dataset: Dataset, model_dirs: dict[str, Path]) -> dict:
        from relevance.evaluation.challenger import evaluate_run

        return evaluate_run(self.config, dataset, model_dirs, self.report_path, self.embeddings_dir)


def run(config: RunConfig) -> dict:
    """The whole chain; returns the evaluation report (also written to workdir/report.json and .md)."""
    chain = Chain(config)
    chain.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(chain.root / "config.json", config.model_dump_json(indent=2))
    dataset = chain.dataset()
    chain.pool(dataset)  # before the teacher: a dataset with no possible pool fails in seconds
    models = {"teacher": chain.teacher(dataset), **chain.students(dataset), **chain.baselines(dataset)}
    if chain.labeller_dir.exists() and config.student.labeller != "teacher":
        models["labeller"] = chain.labeller_dir
    return chain.report(dataset, models)
