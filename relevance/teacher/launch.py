"""Where the teacher trains: in this process, as torchrun processes on this machine, or as the entry point each process of a launcher (torchrun, a TrainJob's nodes) runs: `python -m relevance.teacher`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from relevance.config import RunConfig
from relevance.models import distributed
from relevance.teacher.train import check_distributed_settings, fit_teacher


def launch_local(config: RunConfig, dataset_dir: str | Path, out: str | Path, log: Callable[[str], None] = print,
                 log_dir: str | Path | None = None) -> Path:
    """:func:`fit_teacher` on the prepared dataset in ``dataset_dir``: in this process, or with
    ``teacher.distributed.nproc_per_node`` > 1 as that many torchrun processes on this machine (one per GPU), each
    running :func:`main`. A failed rank raises relevance.models.distributed.WorkerFailedError naming it."""
    from relevance.data.schema import Dataset

    processes = config.teacher.distributed.nproc_per_node
    check_distributed_settings(config.teacher, processes)
    if processes == 1:
        return fit_teacher(config, Dataset.load(dataset_dir, with_impressions=False), out)
    with tempfile.TemporaryDirectory(prefix="relevance-teacher-") as tmp:
        config_path = Path(tmp) / "run-config.json"
        config_path.write_text(config.model_dump_json(exclude_defaults=True))
        log(f"teacher: {processes} processes on this machine (torchrun, {config.teacher.distributed.strategy})")
        distributed.launch_torchrun("relevance.teacher", worker_arguments(config_path, dataset_dir, out), processes,
                                    log_dir=log_dir, log=log)
    return Path(out)


def in_this_process(config: RunConfig) -> bool:
    """Whether ``teacher.distributed`` asks for training in this process: the local launcher, one process."""
    settings = config.teacher.distributed
    return settings.launcher == "local" and settings.nproc_per_node == 1


def launch_settings(config: RunConfig, nproc_per_node: int | None = None, trainjob: bool = False) -> RunConfig:
    """``config`` launched another way (``relevance train-teacher --nproc-per-node / --trainjob``). How it is
    launched is not what it trains: the overrides go to a copy, so that the step cache (which hashes the teacher
    settings) sees the same teacher whichever way it ran."""
    launch = config.model_copy(deep=True)
    if nproc_per_node is not None:
        launch.teacher.distributed.nproc_per_node = nproc_per_node
    if trainjob:
        launch.teacher.distributed.launcher = "trainjob"
    return launch


def launch_teacher(config: RunConfig, dataset_dir: str | Path, out: str | Path,
                   remote: Callable[..., Path] | None = None, log: Callable[[str], None] = print) -> Path:
    """The launcher choice, made here once for every way in (relevance.chain.Chain.teacher, the pipeline's teacher
    step through relevance.platform.trainjob.launch_teacher_training): ``teacher.distributed.launcher: local`` is
    :func:`launch_local` (this process, or torchrun on this machine); ``trainjob`` is ``remote(config,
    dataset_dir, out, log=log)``, the Kubeflow TrainJob launcher the platform provides (the core imports no
    cluster client)."""
    if config.teacher.distributed.launcher == "local":
        return launch_local(config, dataset_dir, out, log=log)
    if remote is None:
        raise ValueError("teacher.distributed.launcher is trainjob, and nothing here can submit a TrainJob: train "
                         "with `relevance train-teacher` or the pipeline's finetune_teacher step")
    return remote(config, dataset_dir, out, log=log)


def worker_arguments(config: str | Path, dataset_dir: str | Path, out: str | Path) -> list[str]:
    """The arguments of ``python -m relevance.teacher`` (:func:`main`), as launchers pass them."""
    return ["--config", str(config), "--dataset", str(Path(dataset_dir).absolute()),
            "--out", str(Path(out).absolute())]


@distributed.record
def main(argv: list[str] | None = None) -> None:
    """The entry point of every process a launcher starts (torchrun here, a TrainJob's nodes in a cluster):
    :func:`fit_teacher` on a prepared dataset directory. ``--config`` is the resolved RunConfig as JSON: a file,
    or (for a manifest that must carry it) the JSON itself. An exception is written to torchrun's error file
    (``record``), so that the launcher reports it with the rank it happened on."""
    import argparse

    from relevance.data.schema import Dataset

    parser = argparse.ArgumentParser(prog="python -m relevance.teacher", description=main.__doc__)
    parser.add_argument("--config", required=True, help="the resolved run config as JSON: a file, or inline")
    parser.add_argument("--dataset", required=True, help="prepared dataset directory (relevance.data.schema)")
    parser.add_argument("--out", required=True, help="where rank 0 saves the teacher")
    args = parser.parse_args(argv)
    inline = args.config.lstrip().startswith("{")
    config = RunConfig.model_validate_json(args.config if inline else Path(args.config).read_text())
    fit_teacher(config, Dataset.load(args.dataset, with_impressions=False), args.out)
