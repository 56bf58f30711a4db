"""Data-parallel training over several processes with ``torch.distributed``.

``launch(fn, nproc, *args)`` starts ``nproc`` processes as ``torchrun`` does (environment
``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), joins the process
group (``gloo`` on CPU, ``nccl`` on CUDA) and calls ``fn(*args)`` in each; under ``torchrun``,
``init()`` joins the group from the environment instead. The ``Trainer`` wraps its model in
``DistributedDataParallel`` whenever the world has more than one process.

Data sharding is the data layer's job: every rank takes its own slice of each global batch
(``shard``, ``per_rank``), so that the ranks together see exactly what one process would.

The helpers (``rank``, ``world_size``, ``is_main``, ``all_reduce_mean``) also work, as the
single-process identities, when no process group exists.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

__all__ = ["launch", "init", "rank", "local_rank", "world_size", "is_main", "all_reduce_mean",
           "all_reduce_sum", "broadcast_object", "per_rank", "shard", "unwrap", "default_backend"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group, 0 when not distributed."""
    return dist.get_rank() if _initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine (which GPU it uses), from ``LOCAL_RANK``; 0 by default."""
    return int(os.environ.get("LOCAL_RANK", 0)) if _initialized() else 0


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
    """Join the process group described by the environment (as set by ``torchrun`` or ``launch``).

    Does nothing when already initialized or when ``WORLD_SIZE`` is unset or 1. Returns whether
    the process is now part of a group with more than one process.
    """
    if _initialized():
        return world_size() > 1
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size <= 1:
        return False
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={size} but {', '.join(missing)} unset: start the processes with "
                           "rnnkit.distributed.launch or torchrun")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=size)
    return True


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over all ranks (a new tensor; ``x`` itself when not distributed)."""
    if world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(x: Tensor | float) -> Tensor | float:
    """Mean of ``x`` over all ranks; a float in gives a float out."""
    if world_size() == 1:
        return x
    if isinstance(x, Tensor):
        return all_reduce_sum(x) / world_size()
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = all_reduce_sum(torch.tensor(float(x), dtype=torch.float64, device=device))
    return total.item() / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; in-memory only, never to disk)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


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
