"""Large scratch buffers kept from one call to the next, so that a training loop does not hand them
back to the OS and take them again (page faults) on every step.

The fused backward and the values it keeps from forward are several [T, B, G*H] arrays per layer.
With glibc's default malloc, freeing them at the end of a step can trim the heap (or unmap them),
and the next step faults every page back in (docs/performance.md has the measurements). A pooled
buffer is an ndarray wrapped by ``torch.from_numpy``; the tensor (and every view of it, and autograd's
saved copy) holds a reference to the array, so the pool sees a buffer as free again when only the
pool holds it. Only the fused kernels' internal buffers come from here, never a tensor handed to
the caller, and small ones (< ``MIN_BYTES``) come from torch as usual.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np
import torch
from torch import Tensor

# smaller buffers: torch.empty (glibc's malloc serves blocks below its default mmap threshold, 128 KiB,
# from its heap, which it trims only when its top grows past the trim threshold); larger ones would be
# mapped and faulted in afresh every step.
# RNNKIT_BUFFER_POOL=0: no pooling
MIN_BYTES = 128 << 10 if os.environ.get("RNNKIT_BUFFER_POOL", "1") != "0" else 1 << 62
MAX_IDLE = 64  # a free buffer not taken in this many requests is dropped (memory goes back to malloc)
ALIGN = 64  # bytes, as torch's CPU allocator (numpy's own: 16)
_NP = {torch.float32: np.float32, torch.float64: np.float64}


class BufferPool:
    """``pool.empty(shape, dtype)``: an uninitialised float CPU tensor, from a free buffer when the pool
    has one that fits. Thread-safe; a buffer is in use while any tensor made from it lives. The free
    buffers kept are at most as many bytes as were ever in use at once, each taken within the last
    ``max_idle`` requests; ``clear()`` drops them all."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._blocks: list[list] = []  # [ndarray (1-D bytes), request count at its last take]
        self._requests = 0
        self._peak = 0  # the most bytes in use at once so far

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A tensor <dtype>[*shape], C-contiguous, uninitialised: the start of the smallest free buffer
        of 1-2x the bytes needed (sequences of varying length reuse one another's), else a new one."""
        nbytes = math.prod(shape) * dtype.itemsize  # (math.prod: cheaper than np.prod on a short tuple)
        if dtype not in _NP or nbytes < MIN_BYTES:
            return torch.empty(shape, dtype=dtype)
        need = nbytes + ALIGN
        with self._lock:
            self._requests += 1
            used, free = [], []
            for entry in self._blocks:  # a few entries: the buffers of the calls in flight and the last ones
                # free when held by the entry and getrefcount's argument only
                (free if sys.getrefcount(entry[0]) == 2 else used).append(entry)
            fits = [entry for entry in free if need <= entry[0].nbytes <= 2 * need]
            if fits:
                best = min(fits, key=lambda entry: entry[0].nbytes)
                free = [entry for entry in free if entry is not best]
            else:
                best = [np.empty(need, np.uint8), 0]
            best[1] = self._requests
            used.append(best)
            self._peak = max(self._peak, sum(entry[0].nbytes for entry in used))
            # keep the most recently taken free buffers, within max_idle requests and within the most
            # bytes ever in use at once (one training step's working set): sequences that grow a little
            # every step leave their outgrown buffers behind, and those must not pile up
            free.sort(key=lambda entry: entry[1], reverse=True)
            room = self._peak
            for entry in free:
                if self._requests - entry[1] <= self.max_idle and entry[0].nbytes <= room:
                    used.append(entry)
                    room -= entry[0].nbytes
            self._blocks = used
            block = best[0]
        start = -block.ctypes.data % ALIGN
        return torch.from_numpy(block[start:start + nbytes].view(_NP[dtype]).reshape(shape))

    @property
    def held_bytes(self) -> int:
        """Bytes of every buffer the pool holds, in use or free."""
        with self._lock:
            return sum(entry[0].nbytes for entry in self._blocks)

    def clear(self) -> None:
        """Drop every free buffer (those in use are dropped when their last tensor goes)."""
        with self._lock:
            self._blocks = []
            self._peak = 0


pool = BufferPool()
