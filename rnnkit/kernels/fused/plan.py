"""The plan: which path runs a call of the fused backend, with what parameters, and why.

``plan(call, policy)`` is a pure function of the call's description (``Call``: cell, shapes, dtype,
training or not, lengths or not, a layer, a whole stack or one streaming step, the threads at hand)
and of the ``Policy``; it returns a ``Plan`` (a frozen value with a ``reason``). Every layer call, stack
call and streaming step of the backend runs the plan it gets here, once per call (a backward reuses its
forward's plan). ``rnnkit.kernels.explain(layer, x)`` shows it for a layer's call.

The paths:

- ``onednn_lstm``: oneDNN's LSTM layer (``aten::mkldnn_rnn_layer``, what torch.nn.LSTM runs on the
  CPU), with its own backward: float32 LSTM without projection, layer norm or lengths, at sizes where
  it beats our loops (or everywhere, where the policy says our loops are not measured faster here).
- ``small_train``: a small training call, each direction's forward and backward one compiled call.
- ``compiled_loop``: the time loop compiled (numba), the recurrent GEMM through BLAS on the loop's
  thread; ``chunks`` > 1: the batch split across threads, each running the loop for its own rows.
  The only path for a call with recurrent dropout or zoneout (``Call.noisy``): its rows take the masks.
- ``step_loop``: a Python time loop whose recurrent GEMM is oneDNN's, prepacked, on all threads, plus
  one compiled elementwise call a step: large weights.
- ``single_step``: a one-step call without autograd, through the streaming kernel per direction.
- ``stream``: every step and layer of a unidirectional stack in one compiled call, without autograd
  (a small call, a ``step()``, a streamer); ``chunks`` threads share the batch, or at batch 1
  ``units`` threads share each layer's hidden units.
- ``layer_by_layer``: a stack call that does not stream: each layer planned on its own (``layers``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field

import torch

from ...cells import CellSpec
from . import runtime
from .policies import KB, NEVER, Policy

SCOPES = ("layer", "stack", "step")


@dataclass(frozen=True)
class Call:
    """What the plan needs to know about a call.

    scope: ``"layer"`` (one layer, every direction, ``steps`` × ``batch`` × ``input_size``),
    ``"stack"`` (a whole unidirectional stack without autograd, for the streaming kernel) or
    ``"step"`` (one step of a stack: ``step()``, a streamer). threads: those the compiled loops may
    use in this process (``runtime.threads``)."""

    spec: CellSpec
    scope: str
    steps: int
    batch: int
    input_size: int
    dtype: torch.dtype
    training: bool = False
    masked: bool = False
    layers: int = 1
    directions: int = 1
    threads: int = 1
    noisy: bool = False
    """recurrent dropout or zoneout masks (``rnnkit.cells.Noise``): only the compiled loop takes them"""

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"scope: expected one of {SCOPES}, got {self.scope!r}")

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def recurrent_macs(self) -> int:
        """Multiply-adds of one step's recurrent product over the batch, B·G·H·P (B·4H·H for an LSTM)."""
        s = self.spec
        return self.batch * s.gates * s.hidden_size * s.output_size

    @property
    def state_elements(self) -> int:
        """T·B·H: the hidden states one direction computes over the call."""
        return self.steps * self.batch * self.spec.hidden_size

    @property
    def recurrent_bytes(self) -> int:
        """Bytes of one direction's W_hh <f>[G·H, P]."""
        s = self.spec
        return s.gates * s.hidden_size * s.output_size * self.itemsize

    def stack_weights(self, layers: int | None = None) -> int:
        """Elements of W_ih and W_hh of a unidirectional stack (= its multiply-adds per step and row)."""
        s = self.spec
        G, P = s.gates * s.hidden_size, s.output_size
        return G * (self.input_size + P + ((layers or self.layers) - 1) * 2 * P)

    def describe(self) -> str:
        s = self.spec
        cell = s.mode + (" layer-norm" if s.layer_norm else f" proj {s.proj_size}" if s.proj_size
                         else " reset_after=False" if s.mode == "GRU" and not s.reset_after else "")
        shape = (f"B={self.batch}, I={self.input_size}, H={s.hidden_size}" if self.scope == "step"
                 else f"T={self.steps}, B={self.batch}, I={self.input_size}, H={s.hidden_size}")
        extent = (f", {self.layers} layer{'s' * (self.layers > 1)}" if self.scope != "layer" else
                  ", bidirectional" if self.directions == 2 else "")
        return (f"{cell} {self.scope} ({shape}{extent}), {str(self.dtype).replace('torch.', '')}, "
                f"{'training' if self.training else 'inference'}{', lengths' if self.masked else ''}"
                f"{', recurrent dropout / zoneout' if self.noisy else ''}, "
                f"{self.threads} thread{'s' * (self.threads > 1)}")


@dataclass(frozen=True)
class Plan:
    """What runs a call: ``path`` (module docstring), with ``chunks`` threads sharing the batch rows,
    ``units`` threads sharing the hidden units (batch-1 streaming), a transposed copy of W_hh
    (``transposed``, batch 1), and why (``reason``). ``layers``: for ``layer_by_layer``, each layer's plan."""

    path: str
    reason: str
    call: Call | None = None
    chunks: int = 1
    units: int = 1
    transposed: bool = False
    layers: tuple = field(default=())
    backend: str = "fused"

    @property
    def stepwise(self) -> bool:
        return self.path == "step_loop"

    def __str__(self) -> str:
        head = self.path if self.backend == "fused" else f"backend {self.backend}"
        extra = [f"{self.chunks} threads share the batch" if self.chunks > 1 else "",
                 f"{self.units} threads share the hidden units" if self.units > 1 else "",
                 ("W_hh transposed once" + (" (the one-row loop)" if _one_row_form(self.call) else ""))
                 if self.transposed else ""]
        lines = [f"{head}{''.join(f', {e}' for e in extra if e)}" +
                 (f"  [{self.call.describe()}]" if self.call is not None else ""),
                 f"  why: {self.reason}"]
        for k, sub in enumerate(self.layers):
            lines += [f"  layer {k}: " + str(sub).replace("\n", "\n  ")]
        return "\n".join(lines)


def plan(call: Call, policy: Policy) -> Plan:
    """The plan for ``call`` under ``policy`` (module docstring); pure: the same arguments, the same plan."""
    if call.scope == "layer":
        return _plan_layer(call, policy)
    if call.scope == "stack":
        return _plan_stack(call, policy)
    units = _units(call, policy, call.batch)
    return Plan("stream", "one step of the stack in one compiled call" + _units_reason(call, policy, units),
                call, units=units)


def _kb(n: int) -> str:
    return f"{n / KB:,.0f} KB" if n < 1 << 30 else "never"


def _max_chunks(call: Call, policy: Policy) -> int:
    """The most chunks a batch may be split into: one per thread, at least ``par_min_rows`` rows each."""
    return min(call.threads, call.batch // policy.par_min_rows)


def _chunks(call: Call, policy: Policy, row_bytes: int) -> int:
    """Threads that share the compiled time loop by rows of the batch: at most ``row_bytes`` of W_hh
    per row of a thread's chunk (each thread reads the whole weight every step), else 1."""
    n = _max_chunks(call, policy)
    return n if n > 1 and call.recurrent_bytes <= row_bytes * (call.batch // n) else 1


def _onednn_lstm_fits(call: Call) -> bool:
    """Whether oneDNN's LSTM layer can run the call: float32 LSTM without projection, layer norm or lengths."""
    s = call.spec
    return (s.mode == "LSTM" and not s.proj_size and not s.layer_norm and not call.masked and not call.noisy
            and call.dtype == torch.float32)


def _onednn_lstm_reason(call: Call, policy: Policy) -> str | None:
    """Why a layer call goes to oneDNN's LSTM layer, or None when it does not."""
    if not _onednn_lstm_fits(call) or (call.steps == 1 and not call.training):
        return None
    macs = call.recurrent_macs
    if call.training:
        if not policy.lstm_loops_training and call.batch > 1:
            elements, most = call.state_elements, policy.onednn_lstm_train_max_elements
            if elements > most and _chunks(call, policy, policy.par_row_bytes) > 1:  # as measured: a split loop
                return None
            beyond = (f" (T·B·H = {elements:,} > onednn_lstm_train_max_elements {most:,}, but the loop would not "
                      "split)" if elements > most else f" up to onednn_lstm_train_max_elements {most:,} (T·B·H = "
                      f"{elements:,})")
            return ("float32 LSTM training: our loops are not measured faster than oneDNN's layer on this CPU"
                    + (beyond if most < NEVER else ""))
        split = _chunks(call, policy, policy.par_row_bytes_lstm)
        if macs >= policy.onednn_lstm_train_min_macs and split == 1:
            return (f"per-step multiply-adds B·4H·H = {macs:,} >= onednn_lstm_train_min_macs "
                    f"{policy.onednn_lstm_train_min_macs:,} and the loop would not split (W_hh "
                    f"{_kb(call.recurrent_bytes)}, par_row_bytes_lstm {_kb(policy.par_row_bytes_lstm)} a row)")
        return None
    if not policy.lstm_loops_inference and call.batch > 1:
        return "float32 LSTM inference: our loops are not measured faster than oneDNN's layer on this CPU"
    small = call.recurrent_bytes <= policy.loop_lstm_inference_max_weight
    split = _chunks(call, policy, policy.loop_lstm_inference_row_bytes) > 1
    if macs >= policy.onednn_lstm_min_macs and not (small and split):
        return (f"per-step multiply-adds B·4H·H = {macs:,} >= onednn_lstm_min_macs {policy.onednn_lstm_min_macs:,}"
                f" and no split loop with a small W_hh ({_kb(call.recurrent_bytes)}; loop_lstm_inference_max_weight "
                f"{_kb(policy.loop_lstm_inference_max_weight)}, "
                f"_row_bytes {_kb(policy.loop_lstm_inference_row_bytes)})")
    return None


def _onednn_lstm_over_split(call: Call, policy: Policy) -> str | None:
    """Why a no-grad LSTM stack call leaves oneDNN's layer to no split loop, streaming or per layer:
    per-step multiply-adds from ``onednn_lstm_min_macs`` and a W_hh above ``loop_lstm_inference_max_weight``
    (the rule for a split layer loop holds for the split stream too); None otherwise."""
    macs = call.recurrent_macs
    if _onednn_lstm_fits(call) and macs >= policy.onednn_lstm_min_macs and \
            call.recurrent_bytes > policy.loop_lstm_inference_max_weight:
        return (f"oneDNN's LSTM layer from onednn_lstm_min_macs {policy.onednn_lstm_min_macs:,} (B·4H·H = {macs:,}) "
                f"with a W_hh of {_kb(call.recurrent_bytes)} > loop_lstm_inference_max_weight "
                f"{_kb(policy.loop_lstm_inference_max_weight)}")
    return None


def _plan_layer(call: Call, policy: Policy) -> Plan:
    p = _plan_own_layer(call, policy)
    if _onednn_lstm_fits(call) and p.path != "onednn_lstm" and p.path != "single_step":
        macs = call.recurrent_macs
        least = policy.onednn_lstm_train_min_macs if call.training else policy.onednn_lstm_min_macs
        why = (f"B·4H·H = {macs:,} < {'onednn_lstm_train_min_macs' if call.training else 'onednn_lstm_min_macs'} "
               f"{least:,}" if macs < least else "the loop splits with a small enough W_hh a row")
        if call.training and not policy.lstm_loops_training and call.batch > 1:
            why = (f"T·B·H = {call.state_elements:,} > onednn_lstm_train_max_elements "
                   f"{policy.onednn_lstm_train_max_elements:,} and the loop splits")
        p = dataclasses.replace(p, reason=f"not oneDNN's LSTM layer: {why}; {p.reason}")
    return p


def _plan_own_layer(call: Call, policy: Policy) -> Plan:
    s = call.spec
    reason = _onednn_lstm_reason(call, policy)
    if reason is not None:
        return Plan("onednn_lstm", reason, call)
    if call.noisy:  # the masks enter the compiled loop's rows functions; no other path takes them
        n = _chunks(call, policy, policy.par_row_bytes)
        transposed = n == 1 and call.batch == 1 and call.steps >= policy.transpose_min_steps
        return Plan("compiled_loop", "recurrent dropout or zoneout: the compiled loop takes the masks" +
                    (f"; {call.batch // n}+ rows a thread" if n > 1 else ""), call, chunks=n, transposed=transposed)
    if call.training and not call.masked and not s.layer_norm and not s.proj_size and \
            not (s.mode == "GRU" and not s.reset_after):
        macs = call.steps * call.batch * call.stack_weights(1) * call.directions
        if macs <= policy.small_train_max_macs:
            return Plan("small_train", f"GEMM multiply-adds {macs:,} <= small_train_max_macs "
                                       f"{policy.small_train_max_macs:,}", call)
    if not call.training and call.steps == 1 and not call.masked and not s.layer_norm:
        units = _units(call, policy, call.batch)
        return Plan("single_step", "one step without autograd: the streaming kernel, no GEMM setup"
                    + _units_reason(call, policy, units), call, units=units)
    n = _chunks(call, policy, policy.par_row_bytes)
    if n > 1:
        return Plan("compiled_loop", f"{call.batch // n}+ rows a thread, W_hh {_kb(call.recurrent_bytes)}: "
                                     f"{_kb(call.recurrent_bytes // (call.batch // n))} a row <= par_row_bytes "
                                     f"{_kb(policy.par_row_bytes)}", call, chunks=n)
    stepwise = (call.dtype == torch.float32 and not s.proj_size and not (s.mode == "GRU" and not s.reset_after)
                and call.batch >= policy.step_loop_min_batch and call.steps >= policy.step_loop_min_steps
                and call.recurrent_bytes >= policy.step_loop_min_weight)
    if stepwise:
        return Plan("step_loop", f"W_hh {_kb(call.recurrent_bytes)} >= step_loop_min_weight "
                                 f"{_kb(policy.step_loop_min_weight)}, B >= {policy.step_loop_min_batch}, "
                                 f"T >= {policy.step_loop_min_steps}", call)
    transposed = call.batch == 1 and call.steps >= policy.transpose_min_steps
    why = ("no split (" + (f"B < 2·par_min_rows {policy.par_min_rows}" if _max_chunks(call, policy) <= 1 else
                           f"W_hh {_kb(call.recurrent_bytes)} > par_row_bytes {_kb(policy.par_row_bytes)} a row")
           + ") and a weight below step_loop_min_weight or a shape the step loop does not take")
    return Plan("compiled_loop", why, call, transposed=transposed)


def _units(call: Call, policy: Policy, batch: int) -> int:
    """Threads that share each layer's hidden units in a streaming call at batch 1, or 1: from
    ``stream_units_min_weight`` of W_ih and W_hh in all and ``stream_units_min_layer_weight`` a layer
    (RNN, LSTM without projection or layer norm, GRU with reset_after)."""
    s = call.spec
    if batch != 1 or s.proj_size or s.layer_norm or (s.mode == "GRU" and not s.reset_after) or call.threads < 2:
        return 1
    weight = call.stack_weights() * call.itemsize
    need = max(policy.stream_units_min_weight, policy.stream_units_min_layer_weight * call.layers)
    return call.threads if weight >= need else 1


def _units_reason(call: Call, policy: Policy, units: int) -> str:
    if units > 1:
        return (f"; batch 1 with {_kb(call.stack_weights() * call.itemsize)} of weights >= "
                f"stream_units_min_weight {_kb(policy.stream_units_min_weight)}: the threads share the units")
    return ""


def _plan_stack(call: Call, policy: Policy) -> Plan:
    why = ("training" if call.training else "lengths" if call.masked else
           "bidirectional" if call.directions == 2 else None)
    if why is None and _onednn_lstm_fits(call) and call.steps > 1 and call.batch > 1 and \
            not policy.lstm_loops_inference:
        why = "float32 LSTM inference: our loops are not measured faster than oneDNN's layer on this CPU"
    reason = why
    if why is None:
        macs = call.steps * call.batch * call.stack_weights()
        s = call.spec
        n = _max_chunks(call, policy)
        weight = s.gates * s.hidden_size * (max(call.input_size, s.output_size) + s.output_size) * call.itemsize
        units = _units(call, policy, call.batch)
        onednn = _onednn_lstm_over_split(call, policy)
        if n > 1 and macs >= policy.stream_par_min_macs and weight <= max(
                policy.stream_par_cached_weight, policy.stream_par_row_bytes * (call.batch // n)) \
                and onednn is None:
            row = _kb(weight // (call.batch // n))
            return Plan("stream", f"multiply-adds {macs:,} >= stream_par_min_macs {policy.stream_par_min_macs:,}; "
                                  f"the largest layer's W_ih and W_hh, {_kb(weight)} ({row} a row), within "
                                  f"stream_par_cached_weight {_kb(policy.stream_par_cached_weight)} or "
                                  f"stream_par_row_bytes {_kb(policy.stream_par_row_bytes)} a row", call, chunks=n)
        limit = "stream_onednn_lstm_max_macs" if onednn is not None and \
            policy.stream_onednn_lstm_max_macs < policy.stream_sequence_max_macs else "stream_sequence_max_macs"
        most = getattr(policy, limit)
        if units == 1 and onednn is None and _one_row(call, policy) and macs >= policy.stream_one_row_min_macs \
                and call.steps >= policy.stream_one_row_min_steps:
            return layer_by_layer(call, policy, f"batch 1, {call.steps:,} steps >= stream_one_row_min_steps "
                                                f"{policy.stream_one_row_min_steps:,} and multiply-adds {macs:,} >= "
                                                f"stream_one_row_min_macs {policy.stream_one_row_min_macs:,}: "
                                                "the layer loop's one-row form wins")
        if macs <= most or units > 1:
            return Plan("stream", f"multiply-adds {macs:,} <= {limit} {most:,}" if units == 1 else
                        _units_reason(call, policy, units)[2:], call, units=units)
        reason = f"multiply-adds {macs:,} > {limit} {most:,}" + (
            ": whole-sequence GEMMs win" if onednn is None else f", not split: {onednn}")
    return layer_by_layer(call, policy, reason)


def _one_row(call: Call, policy: Policy) -> bool:
    """Whether a layer loop would run this call in its one-row form: W_hh transposed
    (``transpose_min_steps``) and ``_one_row_form``."""
    return call.steps >= policy.transpose_min_steps and _one_row_form(call)


def _one_row_form(call: Call) -> bool:
    """Whether the compiled loop runs this call, given W_hh transposed, in its one-row form
    (``loops.common.one_plain_row``): batch 1, no lengths or noise; RNN, LSTM without projection (plain or
    layer-normalised), GRU with reset_after."""
    s = call.spec
    return (call.batch == 1 and not call.masked and not call.noisy and not s.proj_size
            and not (s.mode == "GRU" and not s.reset_after))


def layer_by_layer(stack: Call, policy: Policy, reason: str) -> Plan:
    """The plan of a stack call that runs each layer on its own, for ``reason``: each layer's plan."""
    layers = []
    for k in range(stack.layers):
        size = stack.input_size if k == 0 else stack.spec.output_size * stack.directions
        layers.append(_plan_layer(dataclasses.replace(stack, scope="layer", input_size=size, layers=1), policy))
    return Plan("layer_by_layer", f"{reason}: each layer on its own", stack, layers=tuple(layers))


_plans: dict = {}
"""Plans made so far, by (policy's id, the call's fields): a plan is a pure function of them."""


def planned(policy: Policy, spec: CellSpec, scope: str, steps: int, batch: int, input_size: int, dtype: torch.dtype,
            training: bool = False, masked: bool = False, layers: int = 1, directions: int = 1,
            noisy: bool = False) -> Plan:
    """``plan(Call(...), policy)`` for a call of this process (its threads: ``runtime.threads``), made
    once per distinct call and policy: a layer call pays a dictionary lookup, not the plan's ~10-25 µs."""
    threads = runtime.threads(policy)
    # by identity (the cache holds both objects, so their ids stay theirs): hashing them costs more
    key = (id(policy), id(spec), scope, steps, batch, input_size, dtype, training, masked, layers, directions, threads,
           noisy)
    hit = _plans.get(key)
    if hit is not None and hit[0] is policy and hit[1] is spec:
        return hit[2]
    made = plan(Call(spec, scope, steps, batch, input_size, dtype, training, masked, layers, directions, threads,
                     noisy), policy)
    if len(_plans) >= 4096:  # many distinct shapes (say, a new length every call): start afresh
        _plans.clear()
    _plans[key] = (policy, spec, made)
    return made


_recording: contextvars.ContextVar[list | None] = contextvars.ContextVar("rnnkit_fused_plans", default=None)


@contextlib.contextmanager
def record():
    """``with record() as plans:`` collects every plan the backend runs inside the block (for tests and
    diagnostics), in order; a backward pass adds its forward's plan again."""
    plans: list[Plan] = []
    token = _recording.set(plans)
    try:
        yield plans
    finally:
        _recording.reset(token)


def ran(p: Plan) -> Plan:
    """Note that ``p`` runs (see ``record``); returns it."""
    plans = _recording.get()
    if plans is not None:
        plans.append(p)
    return p
