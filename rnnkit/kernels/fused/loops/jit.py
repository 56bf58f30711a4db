"""How the loops are compiled: numba's options and threads, its on-disk cache stamped with this whole
package, and ``parallel``, which makes the parallel twin of a rows function.

Every loop is ``@jit`` (one thread) or ``@jit(parallel=True)`` (``prange``). A rows function
``rows(k, n, *args)`` runs chunk k of n of the batch (``common.chunk``): sequences are independent,
so a chunk runs the whole time loop with no synchronisation per step; ``rows(0, 1, *args)`` is the
whole batch, and ``parallel(rows)`` is the same loop with the n chunks on n threads at once.
"""

from __future__ import annotations

import hashlib
import os

import numba
from numba import njit, prange
from numba.core import caching

if "NUMBA_THREADING_LAYER" not in os.environ:
    # OpenMP first: numba's omp layer then runs on the libgomp that torch has already loaded, so its
    # threads are torch's own (the ones that spin after each torch op) and do not compete with them.
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
set_threads = numba.set_num_threads


def _max_threads() -> int:
    """The most threads a parallel loop may use: numba's pool (the CPU count unless NUMBA_NUM_THREADS),
    or 1 unless its threading layer is thread-safe (OpenMP or TBB; the fallback ``workqueue`` aborts
    when two Python threads launch at once)."""
    from numba.np.ufunc import parallel as layer
    layer._launch_threads()  # loads the layer (numba 0.68, pinned)
    return numba.config.NUMBA_NUM_THREADS if numba.threading_layer() in ("omp", "tbb") else 1


MAX_THREADS = _max_threads()

_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no nnan/ninf: NaNs and infinities propagate
OPTIONS = dict(nogil=True, fastmath=_FM, error_model="numpy", boundscheck=False)
"""numba's options for every loop and helper (the cache is ``jit``'s own)."""


# --------------------------------------------------------------------------------- on-disk cache
# numba's cache checks only the source file of each compiled function, while a loop here inlines
# helpers from its sibling modules (``common``, ``stream``, ``lstm``'s gate helpers): an edited helper
# would leave every other module's compiled loops stale. So each entry is stamped with a hash of the
# whole package instead: any edit recompiles every loop (``rnnkit.kernels.fused.warm_up``).
def _package_stamp() -> str:
    digest = hashlib.sha256()
    folder = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


_STAMP = _package_stamp()


class _PackageStamp:
    def get_source_stamp(self):
        return _STAMP


class _UserProvided(_PackageStamp, caching.UserProvidedCacheLocator):
    """NUMBA_CACHE_DIR, where set."""


class _InTree(_PackageStamp, caching.InTreeCacheLocator):
    """This package's __pycache__, where writable."""


class _UserWide(_PackageStamp, caching.UserWideCacheLocator):
    """The user's cache directory."""


_made_from: dict = {}
"""A function a factory made (``parallel``, ``stream.units``) → (the function it was made from, a suffix)."""


class _CacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_UserProvided, _InTree, _UserWide]

    def __init__(self, py_func):
        # a made function is filed under the module, name and line of the function it was made from,
        # plus a suffix: an index file of its own (the closures of one factory share their module,
        # name and line, and two processes of ``warm_up`` may write different ones' indexes at once)
        source, self._suffix = _made_from.get(py_func, (py_func, ""))
        super().__init__(source)

    def get_filename_base(self, fullname, abiflags):
        return super().get_filename_base(fullname + self._suffix, abiflags)


class _Cache(caching.FunctionCache):
    _impl_class = _CacheImpl


def jit(fn=None, *, parallel: bool = False, made_from: tuple | None = None):
    """``numba.njit`` with ``OPTIONS`` (and ``parallel``), cached on disk under this package's stamp.
    made_from: (function, suffix) for a closure that a factory made from that function."""
    if fn is None:
        return lambda f: jit(f, parallel=parallel, made_from=made_from)
    if made_from is not None:
        _made_from[fn] = made_from
    dispatcher = njit(parallel=parallel, **OPTIONS)(fn)
    dispatcher._cache = _Cache(fn)  # where numba's Dispatcher keeps its cache (``enable_caching``'s own)
    return dispatcher


def parallel(rows):
    """The parallel twin of a rows function: ``twin(n, *args)`` runs ``rows(k, n, *args)`` for the n
    chunks k at once, one per thread (``set_threads(n)`` first)."""

    def twin(n, *args):
        for k in prange(n):
            rows(k, n, *args)

    return jit(twin, parallel=True, made_from=(rows, ".parallel"))
