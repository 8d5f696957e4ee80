"""Teacher fine-tuning on several processes: the process group, each rank's share of a global batch, agreement
between ranks, DDP / FSDP wrapping, and a torchrun launcher whose failures name the rank that failed.

Data parallelism follows DDP (Li et al., 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training", VLDB): every rank holds a replica, gradients are averaged in buckets during the backward pass. FSDP
(Zhao et al., 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel", VLDB) shards parameters,
gradients and optimizer state across ranks, gathering one transformer layer at a time; here through FSDP2
(``torch.distributed.fsdp.fully_shard``), whose default ``reshard_after_forward=True`` is FSDP's FULL_SHARD.

The environment is torchrun's (https://pytorch.org/docs/stable/elastic/run.html): ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``. Without them (or with ``WORLD_SIZE=1``)
nothing here touches torch.distributed: a single process trains exactly as before.

The global batch is what one process would train on: :meth:`Context.shard` gives rank r the r-th contiguous slice
of it, and the loss is summed over the slice and divided by the global batch size (times the world size, which
DDP's gradient averaging divides back out), so N processes follow one process's optimisation step by step, up to
the order of floating-point additions.

Also the entry point of ``python -m relevance.models.distributed``: torchrun (same arguments) that writes which rank
failed, how, and where its log is, as JSON for :func:`launch_torchrun`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

# Wraps a worker's entry point: an exception it raises is written to torchrun's per-rank error file, from which
# the launcher reports it (with the rank) instead of a bare exit code.
from torch.distributed.elastic.multiprocessing.errors import record  # noqa: F401  (re-exported)

# Test-only fault injection: "RANK:STEP" makes that rank SIGKILL itself right after that optimizer step, as the
# kernel's OOM killer or a lost node would. tests/models/test_distributed.py uses it to check that the launcher reports
# the dead rank; nothing else sets it.
FAULT_INJECTION_ENV = "RELEVANCE_TEST_KILL_RANK_AT_STEP"


@dataclass(frozen=True)
class Context:
    """This process's place in the job. One process: rank 0 of 1, and every method is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch (sizes differ by at most one; possibly empty when the
        batch has fewer rows than there are ranks)."""
        if not self.distributed:
            return index
        return np.array_split(index, self.world_size)[self.rank]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks, in float64, identical on every rank."""
        if not self.distributed:
            return list(values)
        totals = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        torch.distributed.all_reduce(totals)
        return totals.tolist()

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank: decisions that change what ranks do next (keep this state, stop
        early) are made once, so that no rank can take another branch over a rounding difference."""
        if not self.distributed:
            return flag
        decision = torch.tensor([float(flag)], device=self._collective_device)
        torch.distributed.broadcast(decision, src=0)
        return bool(decision.item())

    def barrier(self) -> None:
        if self.distributed:  # NCCL wants to know which GPU the barrier's tensor lives on
            torch.distributed.barrier(device_ids=[self.device.index] if self.backend == "nccl" else None)

    @property
    def _collective_device(self) -> torch.device:
        # NCCL reduces only CUDA tensors; gloo reduces CPU tensors.
        return self.device if self.backend == "nccl" else torch.device("cpu")


def environment() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's variables; (0, 1, 0, 1) without them."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    raw = {name: os.environ.get(name) for name in names}
    if raw["WORLD_SIZE"] in (None, "", "1"):
        return 0, 1, 0, 1
    try:
        rank, world, local_rank = (int(raw[n]) for n in names[:3])
        local_world = int(raw["LOCAL_WORLD_SIZE"] or world)
    except (TypeError, ValueError):
        raise ValueError(f"distributed run: expected integer RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them, "
                         f"got {raw}") from None
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world):
        raise ValueError(f"distributed run: expected 0 <= RANK < WORLD_SIZE and 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE "
                         f"<= WORLD_SIZE, got {raw}")
    return rank, world, local_rank, local_world


_active: Context | None = None


@contextlib.contextmanager
def session(backend: str = "auto", timeout_minutes: float = 30.0) -> Iterator[Context]:
    """The process group for the duration of the block, created from torchrun's environment (nothing for one
    process). Nested sessions share the outermost one, which alone creates and destroys the group.

    ``backend``: ``auto`` picks NCCL on CUDA and gloo on CPU. On CUDA each process drives ``cuda:LOCAL_RANK``.
    ``timeout_minutes`` bounds every collective, including the wait for rank 0's save.
    """
    global _active
    if _active is not None:
        yield _active
        return
    rank, world, local_rank, local_world = environment()
    # A process group the caller created is used and left alone; otherwise this session owns one.
    owns_group = world > 1 and not torch.distributed.is_initialized()
    if world == 1:
        context = Context(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        dev = torch.device("cpu")
        if torch.cuda.is_available():
            visible = torch.cuda.device_count()
            if local_rank >= visible:
                raise ValueError(f"distributed run: local rank {local_rank} has no GPU of its own ({visible} visible): "
                                 f"expected at most one process per GPU (nproc_per_node <= {visible}), got "
                                 f"{local_world}")
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if owns_group:
            if backend not in ("auto", "gloo", "nccl"):
                raise ValueError(f"teacher.distributed.backend: expected auto, gloo or nccl, got {backend!r}")
            if backend == "auto":
                backend = "nccl" if dev.type == "cuda" else "gloo"
            if backend == "nccl" and dev.type != "cuda":
                raise ValueError("teacher.distributed.backend=nccl needs CUDA, and this machine has no GPU: use gloo "
                                 "(or auto)")
            torch.distributed.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
        context = Context(rank, world, local_rank, local_world, dev, torch.distributed.get_backend())
    _active = context
    try:
        yield context
    finally:
        _active = None
        if owns_group:
            torch.distributed.destroy_process_group()


def share_cpu_threads(ctx: Context) -> None:
    """Processes on one machine split its cores rather than each taking all of them (RELEVANCE_THREADS, when set,
    is taken as meant per process)."""
    if ctx.local_world_size > 1 and not os.environ.get("RELEVANCE_THREADS"):
        torch.set_num_threads(max(1, torch.get_num_threads() // ctx.local_world_size))


def freeze_unused_parameters(model: nn.Module, inputs: dict) -> list[str]:
    """Freeze the trainable parameters that no loss can reach (BERT's pooler: computed, never read by the head).

    DDP waits for a gradient of every trainable parameter; without this it would need find_unused_parameters=True,
    which walks the autograd graph after every forward. One forward/backward on ``inputs`` finds them, with the
    random state restored so that the training run draws the same dropout masks as without the probe. Such
    parameters get no gradient in a single process either, so AdamW never updates them there: freezing them
    changes nothing but DDP's bookkeeping.
    """
    devices = [inputs["input_ids"].device.index or 0] if inputs["input_ids"].is_cuda else []
    with torch.random.fork_rng(devices=devices):
        model(**inputs).float().sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    return unused


def wrap(model: nn.Module, ctx: Context, strategy: str, probe_inputs: Callable[[], dict],
         log: Callable[[str], None] = print) -> nn.Module:
    """The model to train: ``model`` itself for one process, a DDP replica, or ``model`` sharded in place (FSDP).

    DDP (Li et al., 2020): ``forward_sync_buffers=False`` since the backbones' buffers are constants (position
    ids, no batch norm) and a broadcast at each forward would be a collective that evaluation, run on the unwrapped
    module, must not need; ``find_unused_parameters=False`` after :func:`freeze_unused_parameters`; no
    ``static_graph``: gradient checkpointing is non-reentrant (relevance.teacher.model.build_cross_encoder), which DDP
    supports as is, and LoRA only leaves frozen parameters out, which DDP skips.

    FSDP (Zhao et al., 2023): each transformer layer (the classes the backbone lists in ``_no_split_modules``, the
    classes Hugging Face keeps whole when splitting a model) is one FSDP unit, the root (the head, whatever is
    left) another, with FULL_SHARD semantics. FSDP2 tolerates parameters without gradients and mixes
    frozen and trainable ones (LoRA) within a unit, so no probe is needed.
    """
    if not ctx.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        unused = freeze_unused_parameters(model, probe_inputs())
        if unused and ctx.is_main:
            log(f"teacher: {len(unused)} parameter(s) no loss reaches stay frozen under DDP "
                f"({', '.join(unused[:4])}{', …' if len(unused) > 4 else ''})")
        return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                       forward_sync_buffers=False, find_unused_parameters=False,
                                       gradient_as_bucket_view=True)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        layer_classes = transformer_layer_classes(model)
        if not layer_classes:
            backbone = type(getattr(model, "backbone", model)).__name__
            raise ValueError(f"teacher.distributed.strategy=fsdp: the backbone ({backbone}) lists no "
                             "transformer layer classes (_no_split_modules) to shard by; use strategy=ddp")
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        # Children before parents: a unit must be sharded before the unit that contains it.
        for module in reversed(list(model.modules())):
            if type(module).__name__ in layer_classes:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"teacher.distributed.strategy: expected ddp or fsdp, got {strategy!r}")


def transformer_layer_classes(model: nn.Module) -> set[str]:
    """Names of the classes Hugging Face models in ``model`` declare unsplittable (their transformer blocks)."""
    names: set[str] = set()
    for module in model.modules():
        declared = getattr(module, "_no_split_modules", None)
        if isinstance(declared, (list, tuple, set)):
            names.update(declared)
    return names


def full_state_dict(model: nn.Module, ctx: Context) -> dict | None:
    """An FSDP-sharded model's full state dict, gathered to rank 0's CPU memory (None on the other ranks). A
    collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if ctx.is_main else None


def inject_fault(ctx: Context, step: int) -> None:
    """The test-only fault of :data:`FAULT_INJECTION_ENV` (a no-op unless it is set)."""
    spec = os.environ.get(FAULT_INJECTION_ENV)
    if not spec:
        return
    rank, _, at = spec.partition(":")
    if int(rank) == ctx.rank and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)


# -- the launcher -----------------------------------------------------------------------------------------------

class WorkerFailedError(RuntimeError):
    """A rank of a torchrun job failed. ``str()`` is one line (the rank, how it ended, where its log is);
    ``failures`` holds every failed rank, root cause first, and ``log_tail`` the root cause's last log lines."""

    def __init__(self, message: str, failures: list[dict], log_tail: str = ""):
        super().__init__(message)
        self.failures = failures
        self.log_tail = log_tail


def launch_torchrun(module: str, module_args: list[str], nproc_per_node: int, log_dir: str | Path | None = None,
                    log: Callable[[str], None] = print, env: dict[str, str] | None = None) -> None:
    """``torchrun --standalone --nproc-per-node N -m module module_args…`` on this machine, each rank's output shown
    live and kept under ``log_dir``; returns when every rank succeeded.

    A failed rank raises :class:`WorkerFailedError` naming it (root cause first: the first to fail, a signal
    before the errors it caused in its peers), its exit code or signal and its message, after logging the tail
    of its log. torchrun stops the other ranks as soon as one fails (no restarts: a restart would retrain from
    scratch, which the caller can do).
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node: expected >= 1, got {nproc_per_node}")
    temporary_logs = log_dir is None  # kept when a rank fails, removed after a success
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="relevance-torchrun-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    report = log_dir / "failures.json"
    report.unlink(missing_ok=True)
    torchrun = ["--standalone", f"--nproc-per-node={nproc_per_node}", "--max-restarts=0", f"--log-dir={log_dir}",
                "--redirects=3", "--tee=3", "-m", module, *module_args]
    command = [sys.executable, "-m", "relevance.models.distributed", "--failure-report", str(report), "--", *torchrun]
    environment = {**os.environ, **(env or {})}
    # Processes on one machine share its cores (torchrun would otherwise set 1 thread each, and say so).
    environment.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // nproc_per_node)))
    result = subprocess.run(command, env=environment, check=False)
    if result.returncode == 0:
        if temporary_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        return
    failures = json.loads(report.read_text()) if report.exists() else []
    if not failures:
        raise WorkerFailedError(f"torchrun failed before any rank ran (exit code {result.returncode}); its output "
                                f"is above, rank logs under {log_dir}", [])
    failures.sort(key=lambda f: (_consequence_rank(f), f["timestamp"], f["rank"]))
    root = failures[0]
    tail = _tail(Path(root["log"])) if root.get("log") else ""
    log(f"last lines of rank {root['rank']}'s log ({root.get('log') or 'no log'}):\n{tail or '(empty)'}")
    others = "; ".join(f"rank {f['rank']} {_how(f)}" for f in failures[1:])
    raise WorkerFailedError(
        f"distributed teacher training failed: rank {root['rank']} of {nproc_per_node} {_how(root)}"
        + (f"; then {others}" if others else "") + f". Log of rank {root['rank']}: {root.get('log') or log_dir}",
        failures, tail)


def _consequence_rank(failure: dict) -> int:
    """How likely a failure is an effect rather than the cause: a signal torchrun does not send (SIGKILL from the
    OOM killer, SIGSEGV, …) is a cause; an exception may be either (a peer's death breaks a collective); SIGTERM
    is how torchrun stops the surviving ranks. Timestamps alone (whole seconds) cannot tell them apart."""
    if failure["signal"] == "SIGTERM":
        return 2
    return 0 if failure["signal"] else 1


def _how(failure: dict) -> str:
    if failure["signal"] == "SIGTERM":
        return f"was stopped by SIGTERM (exit code {failure['exitcode']})"
    if failure["signal"]:
        return f"was killed by {failure['signal']} (exit code {failure['exitcode']})"
    message = " ".join(str(failure.get("message") or "").split())
    return f"exited with code {failure['exitcode']}" + (f": {message[:300]}" if message else "")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _torchrun_with_failure_report(argv: list[str]) -> int:
    """torchrun (same arguments), plus a JSON list of the failed ranks for the launcher: rank, local rank, exit
    code, signal, message (from the rank's error file when its entry point is wrapped in
    ``torch.distributed.elastic.multiprocessing.errors.record``), and the path of its stderr log."""
    parser = argparse.ArgumentParser(prog="python -m relevance.models.distributed")
    parser.add_argument("--failure-report", required=True, type=Path)
    parser.add_argument("torchrun_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    torchrun_args = args.torchrun_args[1:] if args.torchrun_args[:1] == ["--"] else args.torchrun_args
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    options = parse_args(torchrun_args)
    try:
        run(options)
    except ChildFailedError as error:
        failures = []
        for rank, failure in error.failures.items():
            message = failure.message
            if isinstance(message, dict):  # the error file's {"message": ..., "extraInfo": {...}}
                message = message.get("message", "")
            # The newest: a reused log_dir also holds earlier runs' folders, whose names are random.
            logs = sorted(Path(options.log_dir).glob(f"*/attempt_*/{failure.local_rank}/stderr.log"),
                          key=lambda path: path.stat().st_mtime)
            failures.append({"rank": rank, "local_rank": failure.local_rank, "exitcode": failure.exitcode,
                             "signal": failure.signal_name() if failure.exitcode < 0 else None,
                             "message": message if failure.exitcode >= 0 else "", "timestamp": failure.timestamp,
                             "pid": failure.pid, "log": str(logs[-1]) if logs else None})
        args.failure_report.write_text(json.dumps(failures, indent=2))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun_with_failure_report(sys.argv[1:]))
