"""What the fused backend's plan reads: the host's properties (``Host``) and the quantities that decide
between paths (``Policy``), derived from the host and, where two candidates can tie, from the decisions
``rnnkit tune`` measured on this CPU model (``tune.py``).

The figures behind each default are in docs/performance.md ("How a call is planned"). Cache sizes are
read from the OS, so a rule that reads "a weight that stays in L2" follows the host's L2: the
reference values in the comments are those of the reference host most rules were measured on (a 2-core
AMD CPU of family 25 with 512 KB of L2 a core and AVX2; docs/performance.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

KB = 1024
REFERENCE_L2 = 512 * KB  # the reference host's L2 a core, which most thresholds were measured against
REFERENCE_VECTOR = 32  # its SIMD width in bytes (AVX2)


@dataclass(frozen=True)
class Host:
    """The CPU as the plan sees it: model name, vendor, cores, L2 a core and L3 in bytes, SIMD bytes."""

    model: str
    vendor: str
    cores: int
    l2_bytes: int
    l3_bytes: int
    vector_bytes: int

    @property
    def key(self) -> str:
        """The name ``rnnkit tune`` files its decisions under: the model name and the core count."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.model.lower()).strip("-") or "cpu"
        return f"{slug}-{self.cores}c"

    @classmethod
    def detect(cls) -> Host:
        """This machine: /proc/cpuinfo for the model, vendor and SIMD flags, /sys (else sysconf) for
        the caches, the process's CPU affinity for the cores. Unknown values: the reference host's."""
        info: dict[str, str] = {}
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    key = key.strip()
                    if key in ("model name", "vendor_id", "flags", "Features") and key not in info:
                        info[key] = value.strip()
                    if not line.strip() and info:
                        break
        flags = set((info.get("flags") or info.get("Features") or "").split())
        vector = 64 if "avx512f" in flags else 32 if "avx2" in flags or "avx" in flags else 16
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        return cls(info.get("model name", "unknown CPU"), info.get("vendor_id", "unknown"), cores,
                   _cache_bytes(2) or REFERENCE_L2, _cache_bytes(3) or 32 << 20, vector)


def _cache_bytes(level: int) -> int:
    """The size of cpu0's unified or data cache of this level, from /sys, else sysconf; 0 if unknown."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    with contextlib.suppress(OSError, ValueError):
        for index in sorted(root.glob("index*")):
            if int((index / "level").read_text()) == level and (index / "type").read_text().strip() != "Instruction":
                size = (index / "size").read_text().strip()
                scale = {"K": KB, "M": KB * KB, "G": KB ** 3}.get(size[-1:], 1)
                return int(size.rstrip("KMG")) * scale
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return max(0, os.sysconf(f"SC_LEVEL{level}_CACHE_SIZE"))
    return 0


REFERENCE_HOST = Host("AMD EPYC", "AuthenticAMD", 2, REFERENCE_L2, 32 << 20, REFERENCE_VECTOR)
"""The reference host most rules were measured on: ``Policy.for_host(REFERENCE_HOST)`` gives its values."""


NEVER = 1 << 62
"""A threshold no call reaches: the rule it bounds never applies (or, as a lower bound, always does)."""


@dataclass(frozen=True)
class Policy:
    """Every quantity the plan reads (``plan.plan``). One line per field says what it trades off."""

    threads: int | None = None
    """Threads the compiled loops may use; None: torch's count (within numba's pool)."""
    lstm_loops_inference: bool = True
    """Our loops may run a float32 LSTM inference call that oneDNN's LSTM layer (torch.nn.LSTM's path)
    could run, where the rules below prefer them; False: every such call of more than one step and row
    runs on oneDNN's layer, as fast as torch.nn by construction. Batch 1 is no tie (our loops took
    0.55-0.80 of oneDNN's time on the Intel host, less on AMD), so the rules below decide it."""
    lstm_loops_training: bool = True
    """The same for training calls (batch 1: 0.58-0.79 of oneDNN's time on the Intel host)."""
    onednn_lstm_train_max_elements: int = NEVER
    """Where lstm_loops_training is False, oneDNN's layer still leaves training calls of more state
    elements T·B·H than this to our loop split across threads (``par_row_bytes``; as measured, unsplit calls
    stay): its per-call workspace (a few floats an element) is allocated and faulted in afresh each call,
    which our pooled buffers avoid (``rnnkit tune``; no limit by default). Where lstm_loops_training is
    True the LSTM's own split rules decide (``par_row_bytes_lstm``, ``onednn_lstm_train_min_macs``), as
    measured on the reference host."""
    step_loop_min_weight: int = 1024 * KB
    """W_hh bytes from which an unsplit loop runs in Python on oneDNN's prepacked GEMM (all threads):
    prepacking and ~10 µs of Python a step pay off only for large weights."""
    step_loop_min_batch: int = 4
    step_loop_min_steps: int = 8
    """Fewer rows or steps do not repay prepacking the weight (~100-300 µs)."""
    transpose_min_steps: int = 16
    """At batch 1, from this many steps the compiled loop copies W_hh transposed once for a faster mat-vec."""
    onednn_max_shapes: int = 64
    """GEMM shapes given to oneDNN's linear (a primitive cached per shape); later ones go to MKL."""
    onednn_linear_min_macs: int = 2_000_000
    """Multiply-adds from which a whole-sequence product takes oneDNN's linear (~15 µs fixed cost) over MKL."""
    grad_weight_transposed_max_input: int = 32
    grad_weight_transposed_min_ratio: int = 8
    """dW_ih = (x^T dG)^T, MKL's sgemm on the transposed product, for up to this many input features I
    and at least this many gate columns per feature (G >= ratio * I); dG^T x otherwise. The reference
    host: 4x faster for few features; on Intel (MKL's AVX-512 path) 0.67-0.94 of the direct form's time
    at every measured shape (I = 32-256, G = 384-1536), so for_host lifts both limits on Intel hosts."""
    linear_pool_min_bytes: int = 32 << 20
    """Input projections from this size go into a pooled buffer (glibc maps larger blocks afresh)."""
    par_min_rows: int = 4
    """The fewest batch rows a thread takes when a loop splits the batch."""
    par_row_bytes: int = 256 * KB
    """A loop splits the batch across threads while W_hh bytes per row of a thread's chunk stay within
    this: each thread reads the whole weight each step, which its rows must amortise (L2 / 2)."""
    par_row_bytes_lstm: int = 64 * KB
    """The same where the other choice is oneDNN's LSTM layer (LSTM training) (L2 / 8)."""
    onednn_lstm_min_macs: int = 65_536
    """Per-step multiply-adds B·4H·H from which LSTM inference goes to oneDNN's layer: below, our
    loop's lower fixed cost wins (scaled with the SIMD width; ``rnnkit tune`` times half of it)."""
    loop_lstm_inference_row_bytes: int = 16 * KB
    loop_lstm_inference_max_weight: int = 256 * KB
    """LSTM inference stays in our loop when it splits with at most this much W_hh a row (L2 / 32) and
    in all (L2 / 2): oneDNN's layer reads the weight once per step for every row, ours per thread."""
    onednn_lstm_train_min_macs: int = 1_000_000
    """The same for LSTM training when our loop would not split (scaled with the SIMD width)."""
    small_train_max_macs: int = 1_500_000
    """GEMM multiply-adds up to which a training call runs each direction in one compiled call: ~25
    torch operators saved, but plain-loop weight gradients behind BLAS beyond it (scaled with SIMD)."""
    stream_sequence_max_macs: int = 16_000_000
    """Multiply-adds up to which a no-grad call of a unidirectional stack runs every step and layer in
    one compiled call (no GEMM setup); beyond, whole-sequence GEMMs win (scaled with SIMD)."""
    stream_onednn_lstm_max_macs: int = 8_000_000
    """The same for an LSTM stack that oneDNN's layer would run rather than our split loop (the
    host's ``loop_lstm_inference_max_weight``): beyond this, oneDNN's layer is faster than one
    compiled call on one thread (not scaled: measured on an AVX-512 host)."""
    stream_one_row_min_steps: int = 200
    stream_one_row_min_macs: int = 5_000_000
    """At batch 1, from this many steps and multiply-adds such a call runs layer by layer instead, where the
    layer loop takes its one-row form (W_hh transposed, a branch-free step): up to 1.5x faster a step, which
    must repay the layer path's fixed costs and its input GEMM (slow from a cold cache) (scaled with SIMD)."""
    stream_par_min_macs: int = 12_000_000
    """From here such a call may split the batch across threads: below, starting them costs more (scaled
    with SIMD; ``rnnkit tune`` times 1 M against it, where the split paid from ~1 M on an Intel host)."""
    stream_par_row_bytes: int = 32 * KB
    stream_par_cached_weight: int = 512 * KB
    """It splits when each thread can afford to read a layer's W_ih and W_hh each step: at most this
    much a row of its chunk (L2 / 16), or at most this much in all, which stays in L2 (L2)."""
    stream_units_min_weight: int = 1536 * KB
    stream_units_min_layer_weight: int = 1024 * KB
    """At batch 1, from this many bytes of W_ih and W_hh in all and a layer on average, a streaming
    step shares each layer's hidden units among the threads: a parallel region per layer (~2 µs) that
    only halving the weight each thread reads repays. Not scaled with the L2: the crossover was 1-1.5 MB
    both on the reference host (512 KB L2) and on an Intel host with 2 MB, where the L2-scaled 6 MB left
    an LSTM of 256 units streaming at 2.3x the split's time."""
    row_pass_min_rows: int = 64
    """The layer-norm LSTM's passes over every row use all threads from this many rows per thread."""

    @classmethod
    def for_host(cls, host: Host) -> Policy:
        """Defaults from the host's properties: byte thresholds scale with its L2, multiply-add
        thresholds (fixed costs against arithmetic) with its SIMD width. On AMD hosts, where every
        rule was measured, our loops take the LSTM calls the rules give them; elsewhere the LSTM ties
        go to oneDNN's layer until ``rnnkit tune`` measures otherwise (torch.nn is faster there: MKL
        takes its fast path on Intel); on Intel the input weights' gradient takes MKL's transposed form
        (``grad_weight_transposed_*``) at any size."""
        l2, simd = host.l2_bytes, host.vector_bytes / REFERENCE_VECTOR
        amd, intel = host.vendor == "AuthenticAMD", host.vendor == "GenuineIntel"
        return cls(
            lstm_loops_inference=amd, lstm_loops_training=amd,
            grad_weight_transposed_max_input=1 << 30 if intel else 32,
            grad_weight_transposed_min_ratio=0 if intel else 8,
            step_loop_min_weight=2 * l2, par_row_bytes=l2 // 2, par_row_bytes_lstm=l2 // 8,
            loop_lstm_inference_row_bytes=l2 // 32, loop_lstm_inference_max_weight=l2 // 2,
            stream_par_row_bytes=l2 // 16, stream_par_cached_weight=l2,
            onednn_lstm_min_macs=int(65_536 * simd), onednn_lstm_train_min_macs=int(1_000_000 * simd),
            small_train_max_macs=int(1_500_000 * simd), stream_sequence_max_macs=int(16_000_000 * simd),
            stream_one_row_min_macs=int(5_000_000 * simd),
            stream_par_min_macs=int(12_000_000 * simd))

    def with_decisions(self, decisions: dict) -> Policy:
        """This policy with the fields ``decisions`` names (as ``rnnkit tune`` stores them) replaced;
        a name that is not a field, or a value of the wrong type, is an error."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name, value in decisions.items():
            if name not in fields or type(value) is not type(getattr(self, name)):
                raise ValueError(f"decisions: {name!r} = {value!r} is not a Policy field of type "
                                 f"{type(getattr(self, name, None)).__name__}")
        return dataclasses.replace(self, **decisions)


TUNE_VERSION = 1
"""The layout of a tune file; a file of another version is ignored."""


def tune_path(host: Host | None = None) -> Path:
    """Where ``rnnkit tune`` keeps this CPU model's decisions: $XDG_CACHE_HOME/rnnkit/tune/<key>.json."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "rnnkit" / "tune" / f"{(host or Host.detect()).key}.json"


def load_decisions(path: Path) -> dict:
    """The decisions stored at path, or {} (none, another version, unreadable: a warning)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        warnings.warn(f"{path}: not read ({error}); run `rnnkit tune` again", stacklevel=2)
        return {}
    if not isinstance(data, dict) or data.get("version") != TUNE_VERSION:
        return {}
    return dict(data.get("decisions") or {})


@functools.cache
def default_policy() -> Policy:
    """This process's policy: the host's defaults with the tuned decisions for this CPU model, read
    once (a decision never changes in the middle of a run). RNNKIT_TUNE=0: no tuned decisions."""
    host = Host.detect()
    policy = Policy.for_host(host)
    if os.environ.get("RNNKIT_TUNE", "1") != "0":
        path = tune_path(host)
        try:
            policy = policy.with_decisions(load_decisions(path))
        except ValueError as error:
            warnings.warn(f"{path}: ignored ({error}); run `rnnkit tune` again", stacklevel=2)
    return policy


_override: contextvars.ContextVar[Policy | None] = contextvars.ContextVar("rnnkit_fused_policy", default=None)


def current() -> Policy:
    """The policy in force: the innermost ``policy(...)`` block's, else ``default_policy()``."""
    return _override.get() or default_policy()


@contextlib.contextmanager
def policy(value: Policy):
    """``with kernels.policy(Policy(...)):`` every call planned inside takes value (in this thread or
    task), e.g. to force a path in a test or to compare two settings."""
    if not isinstance(value, Policy):
        raise TypeError(f"policy: expected a rnnkit.kernels.Policy, got {type(value).__name__}")
    token = _override.set(value)
    try:
        yield value
    finally:
        _override.reset(token)
