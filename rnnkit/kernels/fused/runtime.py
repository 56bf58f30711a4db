"""The compiled loops, loaded on first use, and the threads they may run on in this process."""

from __future__ import annotations

import os

import torch

from .policies import Policy

_loops = None
_forked = False
"""Whether this process is a fork of the one that imported this module (GNU OpenMP, which runs
numba's threads, is not fork-safe: a forked child keeps the compiled loops on one thread). A flag
set at fork rather than a comparison of process ids: ``os.getpid()`` costs ~0.2 µs a streaming call."""


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def loops():
    """The compiled loops (the package ``rnnkit.kernels.fused.loops``), imported on first use (numba's
    import and cache load cost ~0.3 s)."""
    global _loops
    if _loops is None:
        threads = torch.get_num_threads()
        from . import loops as compiled
        # starting numba's OpenMP pool (on the libgomp torch has loaded) resets the count torch reads
        torch.set_num_threads(threads)
        _loops = compiled
    return _loops


def forked() -> bool:
    """Whether this process was forked after the kernels were imported."""
    return _forked


def threads(policy: Policy) -> int:
    """Threads the compiled loops may use: the policy's count (default torch's), within numba's pool;
    1 in a forked child."""
    if _forked:
        return 1
    return max(1, min(policy.threads or torch.get_num_threads(), loops().MAX_THREADS))
