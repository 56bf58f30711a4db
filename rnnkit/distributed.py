"""Data-parallel training over several processes, on one machine or several, with ``torch.distributed``.

``init()`` joins the process group that the environment describes, as any of these launchers set it:

- ``torchrun`` (one node or several, static or c10d rendezvous, elastic restarts): ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
- ``launch(fn, nproc, *args)``, which starts ``nproc`` processes on this machine with the same variables
  (``rnnkit train --nproc N`` uses it);
- SLURM's ``srun``, one task per process: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, with
  ``MASTER_ADDR`` and ``MASTER_PORT`` exported by the batch script (torchrun's variables win when both
  are set, e.g. torchrun started by srun).

The backend is ``gloo`` on CPU, ``nccl`` on CUDA. The ``Trainer`` wraps its model in
``DistributedDataParallel`` whenever the world has more than one process, and a worker group that
``torchrun --max-restarts`` restarted (``restart_count()``) resumes from its last checkpoint. Under
torchrun, rank 0 hosts a fresh key-value store for each attempt (see ``_fresh_store``), so that
restarted workers meet.

Data sharding is the data layer's job: every rank takes its own slice of each global batch
(``shard``, ``per_rank``), so that the ranks together see exactly what one process would.

The helpers (``rank``, ``world_size``, ``is_main``, ``all_reduce_mean``, ...) also work, as the
single-process identities, when no process group exists.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

__all__ = ["launch", "init", "shutdown", "environment", "GroupEnv", "restart_count", "rank", "local_rank",
           "world_size", "is_main", "barrier", "all_reduce_max", "all_reduce_mean", "all_reduce_sum",
           "broadcast_object", "all_gather_object", "per_rank", "shard", "unwrap", "default_backend"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


class GroupEnv(NamedTuple):
    """The process group an environment describes, and the variables it was read from."""

    rank: int
    local_rank: int
    world_size: int
    launcher: str  # "torchrun" (torchrun's or launch's variables) or "slurm"
    variables: dict[str, str]  # name → value, for messages

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.variables.items())


def _read_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer (set by torchrun or SLURM), got {value!r}") from None


def environment() -> GroupEnv | None:
    """The process group the environment describes (torchrun or ``launch``: ``RANK``/``WORLD_SIZE``;
    SLURM's srun: ``SLURM_PROCID``/``SLURM_NTASKS``), or None when it describes none.

    ValueError when the variables are incomplete or contradict each other.
    """
    env = os.environ
    if "WORLD_SIZE" in env or "RANK" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        for name, other in (("RANK", "WORLD_SIZE"), ("WORLD_SIZE", "RANK")):
            if name not in env:
                raise ValueError(f"{name}: unset while {other}={env[other]} is set; a launcher sets both "
                                 f"(torchrun, rnnkit.distributed.launch); unset {other} to run alone")
        rank_, size = _read_int("RANK"), _read_int("WORLD_SIZE")
        local = _read_int("LOCAL_RANK") if "LOCAL_RANK" in env else rank_
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and ("SLURM_NTASKS" in env or "SLURM_NPROCS" in env):
        size_name = "SLURM_NTASKS" if "SLURM_NTASKS" in env else "SLURM_NPROCS"
        names = ("SLURM_PROCID", size_name, "SLURM_LOCALID")
        rank_, size = _read_int("SLURM_PROCID"), _read_int(size_name)
        local = _read_int("SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        launcher = "slurm"
    else:
        return None
    variables = {k: env[k] for k in (*names, "MASTER_ADDR", "MASTER_PORT") if k in env}
    if size < 1 or not 0 <= rank_ < size:
        raise ValueError(f"{names[0]}={rank_}, {names[1]}={size}: expected 0 <= rank < world size")
    return GroupEnv(rank_, local, size, launcher, variables)


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (``TORCHELASTIC_RESTART_COUNT``); 0 otherwise."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def rank() -> int:
    """This process's rank in the group, 0 when not distributed."""
    return dist.get_rank() if _initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine (which GPU it uses): ``LOCAL_RANK`` or ``SLURM_LOCALID``; 0
    when not distributed."""
    group = environment() if _initialized() else None
    return group.local_rank if group is not None else 0


def world_size() -> int:
    """Number of processes in the group, 1 when not distributed."""
    return dist.get_world_size() if _initialized() else 1


def is_main() -> bool:
    """True on rank 0, the process that writes checkpoints, metrics and progress."""
    return rank() == 0


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(backend: str | None = None) -> bool:
    """Join the process group the environment describes (see ``environment``); call it before any data
    is read, since the data is sharded by rank.

    Does nothing when already initialized or when the environment describes no group, or a group of
    one. Returns whether the process is now part of a group with more than one process.
    """
    if _initialized():
        return world_size() > 1
    group = environment()
    if group is None or group.world_size <= 1:
        return False
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)}: unset, but the environment describes a group of {group.world_size} "
            f"processes ({group.describe()}); torchrun sets them, under SLURM export them in the batch script "
            "(MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1), MASTER_PORT=29500)")
    backend = backend or default_backend()
    if backend == "nccl":  # modulo: a scheduler may show each process only its own GPU(s)
        torch.cuda.set_device(group.local_rank % torch.cuda.device_count())
    store = _fresh_store(group) if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else None
    dist.init_process_group(backend, store=store, rank=group.rank, world_size=group.world_size)
    return True


def _fresh_store(group: GroupEnv, timeout: float = 600.0) -> dist.Store:
    """A new key-value store for this worker group, hosted by rank 0 and found through torchrun's agent store.

    torchrun (c10d or static rendezvous) lets its workers share the store its agent keeps for the whole
    job. After a restart, that store still holds the failed attempt's keys, so the new workers read the
    old workers' addresses and fail to connect (pytorch#135712; torch 2.13 still does, unless
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``). Here rank 0 hosts a store of its own on a free port and
    publishes it, with a random tag, in the agent's store; the other ranks use the published store once
    they reach it and it holds that tag (an address left by a previous attempt points at a process that
    torchrun stopped, so it refuses the connection or answers with another tag).
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    wait = timedelta(seconds=timeout)
    agent = dist.TCPStore(host, port, is_master=False, timeout=wait)
    if group.rank == 0:
        tag = uuid.uuid4().hex
        own = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=wait)
        own.set("rnnkit/tag", tag)
        agent.set("rnnkit/store", f"{own.port} {tag}")
        return own
    deadline = time.monotonic() + timeout
    while True:
        own_port, tag = agent.get("rnnkit/store").decode().split()
        try:
            own = dist.TCPStore(host, int(own_port), is_master=False, timeout=timedelta(seconds=5))
            if own.get("rnnkit/tag").decode() == tag:
                own.set_timeout(wait)
                return own
        except (RuntimeError, dist.DistError):  # a previous attempt's store: gone
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {group.rank}: rank 0's store was not reachable through torchrun's store at "
                               f"{host}:{port} within {timeout:.0f} s")
        time.sleep(0.5)


def shutdown() -> None:
    """Leave the process group (at the end of a run), if this process is in one."""
    if _initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over all ranks (a new tensor; ``x`` itself when not distributed)."""
    if world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(x: Tensor) -> Tensor:
    """Elementwise maximum of ``x`` over all ranks (a new tensor; ``x`` itself when not distributed)."""
    if world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_reduce_mean(x: Tensor | float) -> Tensor | float:
    """Mean of ``x`` over all ranks; a float in gives a float out."""
    if world_size() == 1:
        return x
    if isinstance(x, Tensor):
        return all_reduce_sum(x) / world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = all_reduce_sum(torch.tensor(float(x), dtype=torch.float64, device=device))
    return total.item() / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; in-memory only, never to disk)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` when not distributed)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def per_rank(total: int, what: str = "batch_size", size: int | None = None) -> int:
    """How many of ``total`` items each rank takes; ValueError when ``total`` does not split evenly.

    what: the name of the quantity, for the message (e.g. ``"batch_size"``, ``"validation windows"``).
    size: the number of processes (default: the current world size).
    """
    size = world_size() if size is None else size
    if total < size or total % size:
        raise ValueError(f"{what}={total}: cannot split evenly over {size} processes (nproc); expected a "
                         f"multiple of {size}. Use fewer processes or a {what} divisible by the "
                         "process count")
    return total // size


def shard(x: Tensor, dim: int = 0) -> Tensor:
    """This rank's contiguous slice of a global batch along ``dim`` (all of it when not distributed)."""
    n = per_rank(x.shape[dim], what=f"batch dimension {dim} of shape {tuple(x.shape)}")
    return x.narrow(dim, rank() * n, n)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(index: int, fn: Callable, nproc: int, port: int, backend: str, results, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index),
                      LOCAL_RANK=str(index), WORLD_SIZE=str(nproc))
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)  # this group's store is its own, not a torchrun agent's
    init(backend)
    try:
        results.put((index, fn(*args)))
    except Exception as error:  # tell the parent what went wrong, then fail so the others stop
        results.put((index, _Failure(type(error), str(error))))
        raise
    finally:
        dist.destroy_process_group()


class _Failure(NamedTuple):
    """An exception raised in a worker, carried back to the parent by type and message."""

    kind: type
    message: str


def launch(fn: Callable, nproc: int, *args: Any, backend: str | None = None) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` processes joined in one process group; returns each rank's
    return value, in rank order (they travel back between processes, so must be picklable).

    ``fn`` must be importable by name (defined at module level), since the processes are started
    with the ``spawn`` method. ``nproc=1`` calls ``fn`` in this process, without a process group.
    backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per process); default ``default_backend()``.
    A failure in any process is re-raised here with that process's traceback.
    """
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"nproc: expected an integer >= 1, got {nproc!r}")
    if nproc == 1:
        return [fn(*args)]
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise ValueError(f"nproc: the nccl backend needs one GPU per process; got nproc={nproc} "
                         f"with {torch.cuda.device_count()} GPUs")
    results = mp.get_context("spawn").Queue()
    context = mp.start_processes(_worker, args=(fn, nproc, _free_port(), backend, results, args),
                                 nprocs=nproc, join=False, start_method="spawn")
    collected: dict[int, Any] = {}
    try:
        while not context.join(timeout=0.05):  # drain while waiting, so no child blocks on a full pipe
            while not results.empty():
                index, value = results.get()
                collected[index] = value
    except mp.ProcessRaisedException:
        while not results.empty():
            index, value = results.get()
            collected[index] = value
        failure = next((v for v in collected.values() if isinstance(v, _Failure)), None)
        if failure is None:
            raise
        raise failure.kind(failure.message) from None  # the worker's own error, e.g. a ValueError
    while len(collected) < nproc:
        index, value = results.get(timeout=30)
        collected[index] = value
    return [collected[i] for i in range(nproc)]
