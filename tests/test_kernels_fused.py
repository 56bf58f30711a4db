"""The fused CPU backend against the reference kernel: outputs, final states and every gradient.

Tolerances: float64 agrees to ~1e-12 (we check 1e-10). float32 uses a rational tanh (abs. error
< 3e-7) and a different summation order in the GEMMs (one GEMM over all steps for the weight
gradients instead of a sum of per-step products), so gradients summed over T·B terms differ by a
few 1e-6; we check atol 1e-5 on outputs and atol 2e-5 / rtol 1e-4 on gradients. The layer-normalised
LSTM's float32 gradients get atol 5e-4 / rtol 1e-3: each normalisation divides by the standard
deviation of a few values (H = 6 here), which magnifies rounding, so that the float32 *reference*
itself is off the float64 one by up to 3.6e-4 (abs) and 2.4e-4 (rel) on these cases (measured);
the fused kernel is as far, in another direction.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit import kernels
from rnnkit.cells import CellSpec
from rnnkit.kernels import fused
from rnnkit.kernels.fused import Call, Policy, gemm, plan, record, runtime
from rnnkit.kernels.fused.policies import NEVER, REFERENCE_HOST

REFERENCE = Policy.for_host(REFERENCE_HOST)
"""The policy of the host the rules were measured on: every test here runs under it (``reference_policy``),
whatever this host's defaults or tuned decisions, unless it names another."""
ENV = dict(os.environ, RNNKIT_TUNE="0")  # subprocesses: no tuned decisions


@pytest.fixture(autouse=True)
def reference_policy():
    with kernels.policy(REFERENCE):
        yield


def using(**fields) -> Policy:
    """The reference policy with these fields replaced."""
    return dataclasses.replace(REFERENCE, **fields)


def paths(plans) -> list[str]:
    return [p.path for p in plans]

CELLS = {
    "rnn_tanh": (rnnkit.RNN, {}),
    "rnn_relu": (rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, {}),
    "lstm_proj": (rnnkit.LSTM, {"proj_size": 3}),
    "gru": (rnnkit.GRU, {}),
    "gru_v1": (rnnkit.GRU, {"reset_after": False}),
    "lstm_ln": (rnnkit.LayerNormLSTM, {}),
}
WITH_C = (rnnkit.LSTM, rnnkit.LayerNormLSTM)  # cells whose state is (h, c)
# (num_layers, bidirectional, lengths, initial state, bias, batch)
OPTIONS = [
    (1, False, None, False, True, 4),
    (2, True, [7, 3, 1, 5], True, True, 4),
    (1, True, [2, 7, 4, 6], False, False, 4),
    (2, False, None, True, True, 3),
    (1, True, [5], True, True, 1),
    (2, True, None, True, True, 1),  # batch 1 without lengths: the loops' one-row form (``one_plain_row``)
    (1, True, None, True, False, 2),
]
T, I, H = 7, 5, 6


def _run(cell, options, backend, dtype, grad=True, seed=0):
    cls, kw = CELLS[cell]
    layers, bidir, lengths, init, bias, batch = options
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(I, H, num_layers=layers, bidirectional=bidir, bias=bias, dtype=dtype, backend=backend, **kw)
    x = torch.randn(T, batch, I, generator=gen, dtype=dtype).requires_grad_(grad)
    hx = None
    if init:
        rows, p = layers * (2 if bidir else 1), kw.get("proj_size") or H
        hx = torch.randn(rows, batch, p, generator=gen, dtype=dtype).requires_grad_(grad)
        if cls in WITH_C:
            hx = (hx, torch.randn(rows, batch, H, generator=gen, dtype=dtype).requires_grad_(grad))
    lengths = None if lengths is None else torch.tensor(lengths)
    with torch.set_grad_enabled(grad):
        out, hn = model(x, hx, lengths=lengths)
    hn = hn if isinstance(hn, tuple) else (hn,)
    if not grad:
        return [out, *hn], []
    weight = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
    loss = (out * weight).sum() + sum((h * h).sum() for h in hn)
    loss.backward()
    inputs = [x] + ([] if hx is None else list(hx if isinstance(hx, tuple) else (hx,)))
    return [out, *hn], [p.grad for p in model.parameters()] + [t.grad for t in inputs]


def _close(a, b, dtype, what, cell=""):
    for i, (u, v) in enumerate(zip(a, b)):
        assert u is not None and v is not None, f"{what}[{i}]: missing gradient"
        if dtype == torch.float64:
            atol, rtol = 1e-10, 1e-9
        elif what == "outputs":
            atol, rtol = 1e-5, 1e-5
        else:  # gradients; the layer-normalised cell's float32 rounding is larger (module docstring)
            atol, rtol = (5e-4, 1e-3) if cell == "lstm_ln" else (2e-5, 1e-4)
        torch.testing.assert_close(u, v, atol=atol, rtol=rtol, msg=lambda m: f"{what}[{i}]: {m}")


LOOPS = {
    "compiled": {}, "compiled-wt": {"transpose_min_steps": 1},
    "compiled-split": {"par_min_rows": 1, "threads": 2},
    "stepwise": {"step_loop_min_weight": 0},
    "onednn": {"step_loop_min_weight": 0, "onednn_lstm_min_macs": 0, "onednn_lstm_train_min_macs": 0},
    "streamed": {"stream_sequence_max_macs": NEVER},
    "streamed-split": {"stream_par_min_macs": 0, "par_min_rows": 1, "threads": 2},
    "small": {"small_train_max_macs": NEVER},
}
"""Every time-loop driver, as the policy that plans it (on top of ``ONE_PATH``): the compiled loop on
one thread (with W_hh as stored, or a transposed copy at batch 1: "-wt"), split across two threads by
rows of the batch (uneven chunks at batch 3), the Python loop with oneDNN's GEMM (float32), oneDNN's
LSTM layer (float32 LSTM without projection or lengths; the others fall back to the step loop), and,
for inference of a unidirectional stack, the streaming kernel over the whole call, on one thread
("streamed") or split across two ("streamed-split"; training takes the split compiled loop). Only
these two let a no-grad call stream. "small": training through the small-training path (each
direction one compiled call; unmasked RNN, LSTM and GRU with reset_after; the others fall back to the
compiled loop); no other driver takes it."""
ONE_PATH = using(small_train_max_macs=-1, stream_sequence_max_macs=0, stream_par_min_macs=NEVER,
                 stream_par_cached_weight=NEVER, transpose_min_steps=1 << 30, step_loop_min_weight=NEVER,
                 step_loop_min_batch=1, step_loop_min_steps=1, par_min_rows=NEVER, par_row_bytes=NEVER, threads=1,
                 onednn_lstm_min_macs=NEVER, onednn_lstm_train_min_macs=NEVER)


@pytest.fixture(params=list(LOOPS))
def loop(request):
    if request.param.endswith("-split") and runtime.loops().MAX_THREADS < 2:
        pytest.skip("numba has one thread here")
    return request.param


def _expected(loop: str, cell: str, options, grad: bool) -> tuple[str, dict]:
    """The path (and its parameters) a layer call of the test grid takes under ``LOOPS[loop]``."""
    masked = options[2] is not None
    f32_step = cell not in ("lstm_proj", "gru_v1")  # the cells the step loop takes (float32)
    if loop == "onednn" and cell == "lstm" and not masked:
        return "onednn_lstm", {}
    if loop == "small" and grad and not masked and cell not in ("gru_v1", "lstm_proj", "lstm_ln"):
        return "small_train", {}
    if loop in ("stepwise", "onednn") and f32_step:
        return "step_loop", {}
    if loop.endswith("-split"):
        return "compiled_loop", {"chunks": 2}
    return "compiled_loop", {"chunks": 1, "transposed": loop == "compiled-wt"}


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"L{o[0]}{'bi' if o[1] else ''}"
                         f"{'-len' if o[2] else ''}{'-h0' if o[3] else ''}{'' if o[4] else '-nobias'}-B{o[5]}")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_reference(cell, options, dtype, loop):
    if loop == "stepwise" and (dtype == torch.float64 or cell in ("lstm_proj", "gru_v1")):
        pytest.skip("the stepwise driver covers float32 RNN, LSTM (plain and layer-normalised) and GRU "
                    "(reset_after=True) only")
    if loop.endswith("-split") and options[5] == 1:
        pytest.skip("the split needs 2 rows")
    if loop == "onednn" and (dtype == torch.float64 or cell != "lstm" or options[2] is not None):
        pytest.skip("oneDNN's LSTM layer covers float32 LSTM without projection or lengths")
    if loop == "compiled-wt" and options[5] != 1:
        pytest.skip("the transposed W_hh is used at batch 1 only")
    streams = not options[1] and options[2] is None  # unidirectional, no lengths
    if loop.startswith("streamed") and not streams:
        pytest.skip("a bidirectional call or one with lengths does not stream (test_small_no_grad_call_streams)")
    outs_ref, grads_ref = _run(cell, options, "reference", dtype)
    with kernels.policy(dataclasses.replace(ONE_PATH, **LOOPS[loop])), record() as plans:
        outs, grads = _run(cell, options, "fused", dtype)
    path, params = _expected(loop, cell, options, True)
    layer_plans = [p for p in plans if p.call.scope == "layer"]
    assert layer_plans and all(p.path == path for p in layer_plans), (path, paths(plans))
    assert all(getattr(p, k) == v for p in layer_plans for k, v in params.items()), layer_plans[0]
    _close(outs, outs_ref, dtype, "outputs")
    _close(grads, grads_ref, dtype, "grads", cell)
    # inference (no grad) takes its own paths: no saving, oneDNN's LSTM layer, the streaming kernel
    with kernels.policy(dataclasses.replace(ONE_PATH, **LOOPS[loop])), record() as plans:
        outs_inf, _ = _run(cell, options, "fused", dtype, grad=False)
    streamed = [p for p in plans if p.call.scope == "stack"]
    assert len(streamed) == loop.startswith("streamed")
    assert [p.chunks for p in streamed] == ([2] if loop == "streamed-split" else [1] if streamed else [])
    if not streamed:
        assert all(p.path == _expected(loop, cell, options, False)[0] for p in plans), paths(plans)
    _close(outs_inf, outs_ref, dtype, "outputs")


@pytest.mark.parametrize("cell", CELLS)
def test_few_input_features(cell):
    """With few input features W_ih's gradient takes the transposed GEMM (gemm.grad_input_weight)."""
    cls, kw = CELLS[cell]
    grads = []
    for backend in ("reference", "fused"):
        torch.manual_seed(0)
        model = cls(2, 8, bidirectional=True, dtype=torch.float64, backend=backend, **kw)
        x = torch.randn(9, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (model(x)[0] ** 2).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for ref, fast in zip(*grads):
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-9)
    assert grads[1][0].is_contiguous()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recurrent_dot_matches_numpy(dtype):
    """The loops' mat-mul (``loops.common.dot``) against numpy: batch 1 in both weight layouts (four rows
    of b^T or eight dot products with rows of b a pass, the rest one at a time), a few rows through BLAS,
    replacing or adding to out."""
    import numba

    from rnnkit.kernels.fused.loops.common import consts, dot

    @numba.njit
    def run(a, b, out, acc, bt):
        dot(a, b, out, consts(a), acc, bt)

    rng = np.random.default_rng(0)
    for m, k, n in [(1, 1, 1), (1, 8, 16), (1, 13, 7), (1, 67, 35), (1, 64, 256), (3, 13, 9)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        start = rng.standard_normal((m, n)).astype(dtype)
        for bt, weight in ((False, b), (True, np.ascontiguousarray(b.T))):
            for acc in (False, True):
                out = start.copy()
                run(a, weight, out, acc, bt)
                expected = a.astype(np.float64) @ b + (start if acc else 0)
                tol = 1e-5 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * k, err_msg=f"{m, k, n, bt, acc}")


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell):
    cls, kw = CELLS[cell]
    hidden = 2
    if "proj_size" in kw:  # proj_size < hidden_size: a 3-wide cell projected to 2
        hidden, kw = 3, {"proj_size": 2}
    torch.manual_seed(0)
    model = cls(2, hidden, bidirectional=True, dtype=torch.float64, backend="fused", **kw)
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, hidden, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def f(x, h0, c0, *ps):
        state = (h0, c0) if cls in WITH_C else h0
        out, hn = torch.func.functional_call(model, dict(zip(names, ps)), (x, state), {"lengths": lengths})
        return (out, *hn) if isinstance(hn, tuple) else (out, hn)

    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    inputs = (x, h0, c0 if cls in WITH_C else c0.detach(), *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_dispatch():
    spec = CellSpec("LSTM", 4)
    x32 = torch.randn(3, 2, 5)
    assert kernels.select_backend(spec, x32, True, "auto").name == "fused"
    assert kernels.select_backend(spec, x32.double(), False, "auto").name == "fused"
    for other in (x32.half(), x32.bfloat16(), torch.empty(3, 2, 5, device="meta"), torch.empty(0, 2, 5)):
        assert not fused.supports(spec, other, True)
        assert kernels.select_backend(spec, other, True, "auto").name == "reference"
    with pytest.raises(ValueError, match=r"backend: 'fused' does not run this call: LSTM, input of shape \(3, 2, 5\) "
                                         r"\(cpu, torch.float16\), with autograd; use backend='auto' or 'reference'"):
        kernels.select_backend(spec, x32.half(), True, "fused")
    with pytest.raises(ValueError, match=r"GRU \(reset_after=False\), input of shape \(3, 0, 5\)"):
        kernels.select_backend(CellSpec("GRU", 4, reset_after=False), torch.empty(3, 0, 5), False, "fused")

    # backend="fused" runs the kernel; "reference" does not. A training call this small runs through
    # the small-training path (up to small_train_max_macs), a larger one through the layer's own loops
    model = rnnkit.GRU(5, 4, backend="fused")
    with record() as plans:
        model(x32)[0].sum().backward()
    assert paths(plans) == ["small_train"]
    below = 3 * 2 * 12 * (5 + 4) - 1  # T·B·G·(I + P), one below
    with kernels.policy(using(small_train_max_macs=below)), record() as plans:
        model(x32)[0].sum().backward()
    assert paths(plans) == ["compiled_loop"]
    with record() as plans:
        rnnkit.GRU(5, 4, backend="reference")(x32)
    assert plans == []


def _layer_plan(policy: Policy, cell: str, T: int, B: int, I: int, H: int, training: bool, threads: int = 1,
                **kw) -> fused.Plan:
    spec = CellSpec({"rnn": "RNN_TANH", "gru": "GRU", "lstm": "LSTM"}[cell], H, **kw)
    return plan(Call(spec, "layer", T, B, I, torch.float32, training, threads=threads), policy)


def test_lstm_goes_to_onednn_by_the_policy():
    """LSTM goes to oneDNN's fused layer from onednn_lstm_min_macs (inference) and
    onednn_lstm_train_min_macs (training, unless the loop is split across threads), and everywhere
    when the policy says our loops are not measured faster on this CPU (lstm_loops_*)."""
    def path(policy, training, threads=1, B=2, H=4):
        return _layer_plan(policy, "lstm", 3, B, 5, H, training, threads).path
    assert path(REFERENCE, False) == "compiled_loop" and path(REFERENCE, True) == "small_train"
    loops = using(small_train_max_macs=-1)
    assert path(loops, False) == "compiled_loop" and path(using(onednn_lstm_min_macs=0), False) == "onednn_lstm"
    assert path(loops, True) == "compiled_loop"
    assert path(using(onednn_lstm_train_min_macs=0), True) == "onednn_lstm"
    split = using(onednn_lstm_train_min_macs=0, onednn_lstm_min_macs=0, par_min_rows=1, small_train_max_macs=-1)
    assert path(split, True, threads=2) == "compiled_loop"  # split across threads: our loop
    assert path(split, False, threads=2) == "compiled_loop"  # inference split with a small weight: our loop too
    assert path(dataclasses.replace(split, loop_lstm_inference_max_weight=0), False, threads=2) == "onednn_lstm"
    assert path(dataclasses.replace(split, loop_lstm_inference_row_bytes=0), False, threads=2) == "onednn_lstm"
    assert path(dataclasses.replace(split, par_row_bytes_lstm=0), True, threads=2) == "onednn_lstm"
    for training in (False, True):  # not measured faster here: oneDNN's layer, as torch.nn.LSTM
        ties = using(lstm_loops_inference=False, lstm_loops_training=False)
        assert path(ties, training) == "onednn_lstm" and "not measured faster" in \
            _layer_plan(ties, "lstm", 3, 2, 5, 4, training).reason
        assert path(ties, training, B=1, H=64) != "onednn_lstm"  # batch 1 is no tie: our loops
    limit = using(lstm_loops_training=False, onednn_lstm_train_max_elements=23, par_min_rows=1,
                  small_train_max_macs=-1)
    many = _layer_plan(limit, "lstm", 3, 2, 5, 4, True, threads=2)
    assert many.path == "compiled_loop" and many.chunks == 2
    assert "T·B·H = 24 > onednn_lstm_train_max_elements 23 and the loop splits" in many.reason
    unsplit = _layer_plan(limit, "lstm", 3, 2, 5, 4, True, threads=1)
    assert unsplit.path == "onednn_lstm" and "but the loop would not split" in unsplit.reason
    assert path(using(lstm_loops_training=False, onednn_lstm_train_max_elements=24), True) == "onednn_lstm"
    # where our loops take LSTM training, the LSTM's own rules decide, whatever the element limit
    assert path(using(onednn_lstm_train_max_elements=23, onednn_lstm_train_min_macs=0), True) == "onednn_lstm"
    assert _layer_plan(ties, "lstm", 1, 2, 5, 4, False).path == "single_step"  # one step: the streaming kernel
    assert _layer_plan(ties, "lstm", 3, 2, 5, 4, False, proj_size=2).path != "onednn_lstm"
    # through a layer, against the reference
    torch.manual_seed(0)
    fast, ref = rnnkit.LSTM(5, 4, num_layers=2), rnnkit.LSTM(5, 4, num_layers=2, backend="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(6, 3, 5)
    with kernels.policy(ties), record() as plans:
        out = fast(x)[0]
        out.sum().backward()
        with torch.no_grad():
            inference = fast(x)[0]
    assert paths(plans) == ["onednn_lstm"] * 4
    torch.testing.assert_close(out, ref(x)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inference, out.detach())


def test_lstm_stack_streams_split_only_where_the_layer_would_not_go_to_onednn():
    """A no-grad LSTM stack splits the streaming kernel across threads only within the split layer loop's
    weight rule (``loop_lstm_inference_max_weight``; 0, as ``rnnkit tune`` may decide: no split loop)."""
    def stack(policy, B=32, T=200, I=64, H=128):
        return plan(Call(CellSpec("LSTM", H), "stack", T, B, I, torch.float32, threads=2), policy)
    assert stack(REFERENCE).path == "stream" and stack(REFERENCE).chunks == 2
    no_small_loop = using(loop_lstm_inference_max_weight=0)
    p = stack(no_small_loop)
    assert p.path == "layer_by_layer" and p.layers[0].path == "onednn_lstm"
    assert "> stream_onednn_lstm_max_macs 8,000,000, not split: oneDNN's LSTM layer from onednn_lstm_min_macs" \
        in p.reason
    assert stack(no_small_loop, B=1, T=100, I=32, H=64).path == "stream"  # small: one compiled call, unsplit
    # where oneDNN's layer would run it, one compiled call only up to stream_onednn_lstm_max_macs (8 M)
    assert stack(no_small_loop, B=8, T=25, I=64, H=64).path == "stream"  # 6.6 M multiply-adds
    mid = stack(no_small_loop, B=8, T=50, I=64, H=64)  # 13.1 M, within stream_sequence_max_macs
    assert mid.path == "layer_by_layer" and mid.layers[0].path == "onednn_lstm"
    gru = plan(Call(CellSpec("GRU", 128), "stack", 200, 32, 64, torch.float32, threads=2), no_small_loop)
    assert gru.path == "stream" and gru.chunks == 2  # only the LSTM has oneDNN's layer to go to


def test_input_weight_gradient_in_either_form():
    """dW_ih = dG^T x, direct or as (x^T dG)^T by the policy's rule: the same values."""
    torch.manual_seed(0)
    dg, x = torch.randn(50, 24), torch.randn(50, 6)
    direct = gemm.grad_input_weight(dg, x, using(grad_weight_transposed_max_input=0))
    transposed = gemm.grad_input_weight(dg, x, using(grad_weight_transposed_max_input=6,
                                                     grad_weight_transposed_min_ratio=4))
    torch.testing.assert_close(direct, dg.t() @ x)
    torch.testing.assert_close(transposed, direct)
    assert transposed.is_contiguous() and transposed.shape == (24, 6)


def test_step_loop_and_split_rules():
    """The time-loop driver follows step_loop_min_weight / _batch / _steps; the batch splits by par_row_bytes."""
    rule = using(small_train_max_macs=-1, step_loop_min_weight=0, step_loop_min_batch=1, step_loop_min_steps=1)
    assert _layer_plan(rule, "rnn", 3, 2, 5, 4, False).path == "step_loop"
    assert _layer_plan(rule, "rnn", 3, 2, 5, 4, True).path == "step_loop"
    assert _layer_plan(using(small_train_max_macs=-1), "rnn", 3, 2, 5, 4, True).path == "compiled_loop"
    assert _layer_plan(rule, "gru", 3, 2, 5, 4, False, reset_after=False).path == "compiled_loop"  # two mat-muls
    split = using(small_train_max_macs=-1, par_min_rows=1)
    assert _layer_plan(split, "gru", 3, 2, 5, 4, True, threads=2).chunks == 2
    assert _layer_plan(dataclasses.replace(split, par_row_bytes=0), "gru", 3, 2, 5, 4, True, threads=2).chunks == 1
    assert _layer_plan(REFERENCE, "gru", 100, 1, 32, 64, False).transposed  # batch 1, >= transpose_min_steps
    with kernels.policy(rule), record() as plans:
        rnnkit.RNN(5, 4, backend="fused")(torch.randn(3, 2, 5))
    assert paths(plans) == ["step_loop"]


def test_policy_follows_the_host():
    """Byte thresholds follow the host's L2, multiply-add ones its SIMD width; the LSTM ties go to
    oneDNN's layer where the rules were not measured (not AMD) until ``rnnkit tune`` says otherwise."""
    assert REFERENCE == Policy()  # the reference host's values are the fields' defaults
    intel = fused.Host("Intel(R) Xeon(R) Platinum 8481C", "GenuineIntel", 2, 2 << 20, 105 << 20, 64)
    p = Policy.for_host(intel)
    assert p.par_row_bytes == 1 << 20 and p.stream_par_cached_weight == 2 << 20 and p.step_loop_min_weight == 4 << 20
    assert p.onednn_lstm_min_macs == 2 * REFERENCE.onednn_lstm_min_macs
    assert not p.lstm_loops_inference and not p.lstm_loops_training
    assert (p.grad_weight_transposed_max_input, p.grad_weight_transposed_min_ratio) == (1 << 30, 0)
    assert (p.stream_units_min_weight, p.stream_units_min_layer_weight) == (1536 << 10, 1 << 20)  # not L2-scaled
    arm = Policy.for_host(fused.Host("Neoverse-N1", "unknown", 2, 1 << 20, 32 << 20, 16))
    assert (arm.grad_weight_transposed_max_input, arm.grad_weight_transposed_min_ratio) == (32, 8)  # measured on AMD
    assert _layer_plan(p, "lstm", 200, 32, 64, 128, False, threads=2).path == "onednn_lstm"
    assert plan(Call(CellSpec("LSTM", 128), "stack", 200, 32, 64, torch.float32, threads=2), p).path == \
        "layer_by_layer"  # the streaming kernel does not take it either
    assert intel.key == "intel-r-xeon-r-platinum-8481c-2c"
    tuned = p.with_decisions({"lstm_loops_inference": True})
    assert tuned.lstm_loops_inference and not tuned.lstm_loops_training
    with pytest.raises(ValueError, match="decisions: 'nope' = 1 is not a Policy field"):
        p.with_decisions({"nope": 1})
    with pytest.raises(ValueError, match="'par_row_bytes' = 'big' is not a Policy field of type int"):
        p.with_decisions({"par_row_bytes": "big"})
    with pytest.raises(TypeError, match="policy: expected a rnnkit.kernels.Policy, got dict"):
        with kernels.policy({}):
            pass
    here = fused.Host.detect()
    assert here.cores >= 1 and here.l2_bytes > 0 and here.vector_bytes in (16, 32, 64)


def test_tuned_decisions_are_read_once_unless_disabled(tmp_path):
    """The default policy reads ``rnnkit tune``'s file for this CPU model from $XDG_CACHE_HOME (once per
    process); RNNKIT_TUNE=0 ignores it; a file that is not JSON or names no field is ignored with a warning."""
    code = textwrap.dedent("""
        import warnings
        from rnnkit.kernels.fused import policies
        p = policies.default_policy()
        print(p.lstm_loops_inference, p.par_row_bytes, policies.default_policy() is p)
    """)
    path = tmp_path / "rnnkit" / "tune" / f"{fused.Host.detect().key}.json"
    path.parent.mkdir(parents=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), RNNKIT_TUNE="1")

    def run(**extra):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             check=True)
        return out.stdout.split(), out.stderr
    import json
    path.write_text(json.dumps({"version": 1, "decisions": {"lstm_loops_inference": False, "par_row_bytes": 12345}}))
    assert run()[0] == ["False", "12345", "True"]
    assert run(RNNKIT_TUNE="0")[0][1] != "12345"
    path.write_text("{not json")
    words, err = run()
    assert words[1] != "12345" and "run `rnnkit tune` again" in err
    path.write_text(json.dumps({"version": 1, "decisions": {"no_such_rule": 1}}))
    words, err = run()
    assert "ignored" in err and "no_such_rule" in err


def test_explain():
    """explain() shows the plan a layer's call would run, with its reason, for the whole stack, each
    layer, and a streaming step; the layer's actual call runs that plan."""
    torch.manual_seed(0)
    layer = rnnkit.GRU(8, 16, num_layers=2, batch_first=True)
    x = torch.randn(4, 10, 8)
    trained = fused.explain(layer, x)
    assert trained.path == "layer_by_layer" and [p.path for p in trained.layers] == ["small_train"] * 2
    assert trained.layers[1].call.input_size == 16
    with torch.no_grad():
        inference = fused.explain(layer, x)
        with record() as plans:
            layer(x)
    assert inference.path == "stream" and plans == [inference]
    assert "multiply-adds" in inference.reason and "stream" in str(inference)
    assert fused.explain(layer, x, lengths=[10, 3, 2, 1]).path == "layer_by_layer"
    step = kernels.explain(layer, x[:, 0], streaming=True)
    assert step.path == "stream" and step.call.scope == "step" and step.call.layers == 2
    assert kernels.explain(rnnkit.GRU(8, 16, backend="reference"), x).backend == "reference"
    bidirectional = fused.explain(rnnkit.LSTM(8, 16, bidirectional=True), x[0], training=False)
    assert bidirectional.path == "layer_by_layer" and "bidirectional" in bidirectional.reason
    dropped = rnnkit.GRU(8, 16, num_layers=2, dropout=0.5)
    with torch.no_grad():
        assert "dropout" in fused.explain(dropped, x[0]).reason and fused.explain(dropped.eval(), x[0]).path == "stream"
    with pytest.raises(ValueError, match=r"x: a streaming step takes <float>\[B, I\], got shape \(4, 10, 8\)"):
        kernels.explain(layer, x, streaming=True)


def test_layer_paths():
    """batch_first (non-contiguous input), unbatched input, PackedSequence, frozen weights."""
    torch.manual_seed(0)
    for cls in (rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN):
        ref = cls(3, 4, batch_first=True, backend="reference")
        fast = cls(3, 4, batch_first=True, backend="fused")
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(2, 5, 3)
        torch.testing.assert_close(fast(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast(x[0])[0], ref(x[0])[0], atol=1e-5, rtol=1e-5)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2]), batch_first=True)
        torch.testing.assert_close(fast(packed)[0].data, ref(packed)[0].data, atol=1e-5, rtol=1e-5)
        # frozen weights, input gradient only
        for p in fast.parameters():
            p.requires_grad_(False)
        xg = x.clone().requires_grad_(True)
        fast(xg)[0].sum().backward()
        xr = x.clone().requires_grad_(True)
        ref(xr)[0].sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad, atol=1e-5, rtol=1e-4)
        assert all(p.grad is None for p in fast.parameters())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_stream_step(cell, dtype):
    """fused.stream_step (the fast path for step()) replays forward() one step at a time."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    tol = {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    for layers, batch, bias in ((1, 1, True), (2, 3, False)):
        model = cls(I, H, num_layers=layers, bias=bias, dtype=dtype, backend="reference", **kw)
        x = torch.randn(T, batch, I, dtype=dtype)
        with torch.no_grad():
            for trial in range(3):
                ref, hn = model(x)
                hn = hn if isinstance(hn, tuple) else (hn,)
                weights = [model.direction_weights(layer, 0) for layer in range(layers)]
                h = c = None
                ys = []
                for t in range(T):
                    y, h, c = fused.stream_step(model.spec, x[t], weights, h, c)
                    ys.append(y)
                torch.testing.assert_close(torch.stack(ys), ref, **tol)
                for a, b in zip(hn, (h, c)):
                    torch.testing.assert_close(b, a, **tol)
                for p in model.parameters():  # an in-place update must be seen, even through .data
                    (p.data if trial else p).mul_(0.9)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_step_takes_stream_step_without_grad(cell):
    """layer.step() runs the compiled stack step when nothing needs a gradient, and autograd otherwise;
    both replay forward()."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    model = cls(I, H, num_layers=2, dtype=torch.float64, **kw)
    x = torch.randn(T, 3, I, dtype=torch.float64)
    ref, _ = model(x)
    for grad in (False, True):
        state, ys = None, []
        with torch.set_grad_enabled(grad), record() as plans:
            for t in range(T):
                y, state = model.step(x[t], state)
                ys.append(y)
        assert len([p for p in plans if p.call.scope == "step"]) == (0 if grad else T)
        assert ys[-1].requires_grad == grad
        torch.testing.assert_close(torch.stack(ys), ref.detach(), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match=r"h_0: expected shape \(2, 3, "):
        with torch.no_grad():
            model.step(x[0], torch.zeros(1, 3, H, dtype=torch.float64) if cls not in WITH_C
                       else (torch.zeros(1, 3, H, dtype=torch.float64),) * 2)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_layer_streamer(cell, backend):
    """layer.streamer(): the compiled Streamer where a backend offers one (plain cells, auto), else
    step() without autograd; either way it replays forward() from a given state, in eval semantics."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    model = cls(I, H, num_layers=2, dropout=0.5, dtype=torch.float64, backend=backend, **kw)
    x = torch.randn(T, 3, I, dtype=torch.float64)
    hx = torch.randn(2, 3, kw.get("proj_size") or H, dtype=torch.float64)
    hx = (hx, torch.randn(2, 3, H, dtype=torch.float64)) if cls in WITH_C else hx
    model.eval()
    with torch.no_grad():
        ref, hn = model(x, hx)
    model.train()  # the streamer never applies dropout
    streamer = model.streamer(3, hx)
    assert isinstance(streamer, fused.Streamer) == (backend == "auto")
    ys = torch.stack([streamer(x[t]) for t in range(T)])
    assert not ys.requires_grad and model.training
    torch.testing.assert_close(ys, ref, atol=1e-12, rtol=1e-10)
    state = streamer.state
    for a, b in zip(hn if isinstance(hn, tuple) else (hn,), state if isinstance(state, tuple) else (state,)):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)
    with torch.no_grad():  # an in-place weight update (an optimizer step) is seen by the next call
        for p in model.parameters():
            p.mul_(0.9)
        model.eval()
        ref_next, _ = model(x[:1], hn)
    torch.testing.assert_close(streamer(x[0]), ref_next[0], atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="h_0: expected shape"):
        model.streamer(2, hx)
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        model.streamer(0)


def test_stream_step_checks_shapes():
    model = rnnkit.LSTM(I, H, num_layers=2)
    weights = [model.direction_weights(layer, 0) for layer in range(2)]
    x = torch.randn(3, I)
    with pytest.raises(ValueError, match="x_t"):
        fused.stream_step(model.spec, torch.randn(3, I + 1), weights, None, None)
    with pytest.raises(ValueError, match="h:"):
        fused.stream_step(model.spec, x, weights, torch.zeros(1, 3, H), None)
    with pytest.raises(ValueError, match="c:"):
        fused.stream_step(model.spec, x, weights, torch.zeros(2, 3, H), torch.zeros(2, 2, H))


@pytest.mark.parametrize("cell", CELLS)
def test_small_no_grad_call_streams(cell):
    """A small call that needs no gradient runs the whole unidirectional stack through the streaming
    kernel (one compiled call): the same outputs and final states as the reference, from a given state
    or zeros, batch-first or not, batched or not; and not where it cannot (a gradient, lengths that
    mask, bidirectional, dropout between layers in training, a layer hook) or would be slower
    (above STREAM_SEQUENCE_MAX_MACS)."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    ref = cls(I, H, num_layers=2, batch_first=True, backend="reference", dtype=torch.float64, **kw)
    fast = cls(I, H, num_layers=2, batch_first=True, dtype=torch.float64, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, T, I, dtype=torch.float64)
    hx = torch.randn(2, 3, kw.get("proj_size") or H, dtype=torch.float64)
    hx = (hx, torch.randn(2, 3, H, dtype=torch.float64)) if cls in WITH_C else hx

    def streams(model, *args, grad=False, **kwargs):
        with torch.set_grad_enabled(grad), record() as plans:
            out = model(*args, **kwargs)
        return [p.call.scope for p in plans] == ["stack"], out

    for args in ((x,), (x, hx), (x[0],), (x[0], tuple(h[:, 0] for h in hx) if cls in WITH_C else hx[:, 0])):
        took, (out, hn) = streams(fast, *args)
        out_ref, hn_ref = ref(*args)
        assert took and not out.requires_grad
        torch.testing.assert_close(out, out_ref.detach(), atol=1e-12, rtol=1e-10)
        for a, b in zip(hn if isinstance(hn, tuple) else (hn,), hn_ref if isinstance(hn_ref, tuple) else (hn_ref,)):
            torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=1e-10)
    assert streams(fast, x, lengths=[T] * 3)[0]  # full lengths mask nothing
    assert not streams(fast, x, lengths=[T, 2, 3])[0]
    assert not streams(fast, x, grad=True)[0]  # the parameters need gradients
    bidir = cls(I, H, bidirectional=True, dtype=torch.float64, **kw)
    assert not streams(bidir, x)[0]
    dropped = cls(I, H, num_layers=2, dropout=0.5, dtype=torch.float64, **kw)
    assert not streams(dropped, x)[0] and streams(dropped.eval(), x)[0]
    handle = fast.register_layer_hook(lambda layer, out: None)
    assert not streams(fast, x)[0]
    handle.remove()
    with kernels.policy(using(stream_sequence_max_macs=0)):
        assert not streams(fast, x)[0]
        took, (out, _) = streams(fast, x)  # the layer keeps that no backend streams this call ...
        assert not took and fast._unstreamed is not None
        torch.testing.assert_close(out, ref(x)[0].detach(), atol=1e-12, rtol=1e-10)
    assert streams(fast, x)[0]  # ... while the policy, torch's threads and the call's shape stay the same


@pytest.mark.parametrize("cell", CELLS)
def test_no_grad_call_streams_split(cell):
    """A larger no-grad call of a batch that threads can share streams the whole stack split across
    them, each thread its own rows (uneven chunks at batch 5): the reference's outputs and states."""
    if runtime.loops().MAX_THREADS < 2:
        pytest.skip("numba has one thread here")
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    ref = cls(I, H, num_layers=2, backend="reference", dtype=torch.float64, **kw)
    fast = cls(I, H, num_layers=2, dtype=torch.float64, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, 5, I, dtype=torch.float64)
    hx = torch.randn(2, 5, kw.get("proj_size") or H, dtype=torch.float64)
    hx = (hx, torch.randn(2, 5, H, dtype=torch.float64)) if cls in WITH_C else hx
    for args in ((x,), (x, hx)):
        with torch.no_grad(), record() as plans, kernels.policy(using(stream_par_min_macs=0, par_min_rows=2,
                                                                      stream_par_cached_weight=NEVER, threads=2)):
            out, hn = fast(*args)
        assert [(p.path, p.chunks) for p in plans] == [("stream", 2)]
        out_ref, hn_ref = ref(*args)
        torch.testing.assert_close(out, out_ref.detach(), atol=1e-12, rtol=1e-10)
        for a, b in zip(hn if isinstance(hn, tuple) else (hn,), hn_ref if isinstance(hn_ref, tuple) else (hn_ref,)):
            torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_batch_one_streams_units_split(cell):
    """At batch 1 with large weights (forced here), the streamer, layer.step() and a small no-grad
    forward() share each layer's hidden units among the threads (uneven chunks: H = 7), for the RNN,
    the LSTM without projection and the GRU with reset_after; the other cells stay on one thread.
    Outputs and states: the reference's."""
    if runtime.loops().MAX_THREADS < 2:
        pytest.skip("numba has one thread here")
    cls, kw = CELLS[cell]
    hidden, f64 = 7, torch.float64
    split = cell in ("rnn_tanh", "rnn_relu", "lstm", "gru")
    torch.manual_seed(0)
    ref = cls(I, hidden, num_layers=2, backend="reference", dtype=f64, **kw)
    fast = cls(I, hidden, num_layers=2, dtype=f64, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, 1, I, dtype=f64)
    hx = torch.randn(2, 1, kw.get("proj_size") or hidden, dtype=f64)
    hx = (hx, torch.randn(2, 1, hidden, dtype=f64)) if cls in WITH_C else hx
    units = using(stream_units_min_weight=0, stream_units_min_layer_weight=0, threads=2)
    out_ref, hn_ref = ref(x, hx)

    def close(got, want):
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=1e-10)
    with torch.no_grad(), kernels.policy(units):
        streamer = fast.streamer(1, hx)
        assert streamer.splits_units == split and streamer.plan.units == (2 if split else 1)
        close(torch.stack([streamer(x[t]) for t in range(T)]), out_ref)
        close(streamer.state, hn_ref)
        with record() as plans:
            out, hn = fast(x, hx)
            y, _ = fast.step(x[0], hx)
        assert [p.units for p in plans] == [2 if split else 1] * 2
    close(out, out_ref)
    close(hn, hn_ref)
    close(y, out_ref[0])


def test_units_streamer_in_a_forked_child():
    """A streamer that splits units, made before a fork, runs on one thread in the child (GNU OpenMP's
    threads do not survive a fork) and gives the parent's result."""
    if runtime.loops().MAX_THREADS < 2 or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs two threads and fork")
    torch.manual_seed(0)
    layer = rnnkit.GRU(512, 512)  # 6 MB of weights: the streamer splits the units
    with kernels.policy(using(threads=2)):
        streamer, x = layer.streamer(1), torch.randn(1, 512)
    assert streamer.splits_units
    with torch.no_grad():
        want = layer.streamer(1)(x)
    child = mp.get_context("fork").Process(target=_stream_and_check, args=(streamer, x, want))
    child.start()
    child.join(120)
    assert child.exitcode == 0


def _stream_and_check(streamer, x, want):
    with torch.no_grad():
        ok = torch.allclose(streamer(x), want, atol=1e-5) and not streamer.splits_units
    os._exit(0 if ok else 1)


def test_stream_units_dispatch():
    """Which streaming calls share each layer's units among the threads: batch 1, from
    stream_units_min_weight of W_ih and W_hh in all and stream_units_min_layer_weight per layer,
    two threads or more, the cells it covers."""
    def units(cls, H, I=None, batch=1, layers=1, threads=2, **kw):
        call = Call(cls(1, H, **kw).spec, "step", 1, batch, I or H, torch.float32, layers=layers, threads=threads)
        return plan(call, REFERENCE).units
    assert units(rnnkit.LSTM, 384) == 2  # 4.5 MB
    assert units(rnnkit.LSTM, 256) == 2 and units(rnnkit.GRU, 256) == 2  # 2 MB, 1.5 MB
    assert units(rnnkit.GRU, 224) == 1  # 1.1 MB: a gain in some runs, a loss in others
    assert units(rnnkit.GRU, 384) == 2 and units(rnnkit.GRU, 384, reset_after=False) == 1
    assert units(rnnkit.RNN, 512) == 2 and units(rnnkit.RNN, 384) == 1  # 2 MB, 1.1 MB
    assert units(rnnkit.LSTM, 384, batch=2) == 1
    assert units(rnnkit.LSTM, 384, proj_size=128) == 1 and units(rnnkit.LayerNormLSTM, 384) == 1
    assert units(rnnkit.LSTM, 256, I=8, layers=2) == 2  # 3.2 MB in all, 1.6 MB a layer
    assert units(rnnkit.LSTM, 128, layers=8) == 1  # 4 MB in all, but 512 KB a layer
    assert units(rnnkit.LSTM, 512, threads=1) == 1


def test_stream_sequence_dispatch():
    """Which no-grad calls of a unidirectional stack stream, split or not, with two threads: a small call
    on one thread, a large one whose weights each thread can afford to read every step split, a large
    batch with large weights (or a call of one sequence) layer by layer (0)."""
    def chunks(cell, B, T, I, H, layers=1):
        spec = CellSpec({"rnn": "RNN_TANH", "gru": "GRU", "lstm": "LSTM"}[cell], H)
        p = plan(Call(spec, "stack", T, B, I, torch.float32, layers=layers, threads=2), REFERENCE)
        return p.chunks if p.path == "stream" else 0
    assert chunks("gru", 8, 10, 16, 32) == 1  # below STREAM_PAR_MIN_MACS: thread start-up would cost more
    assert chunks("gru", 32, 200, 64, 128) == 2  # 18 KB of weights per row of a chunk
    assert chunks("lstm", 16, 100, 64, 128) == 2  # 393 KB in all: they stay in L2
    assert chunks("lstm", 64, 100, 128, 256) == 0  # 48 KB per row: oneDNN's layer
    assert chunks("gru", 64, 50, 256, 512) == 0  # 144 KB per row
    assert chunks("lstm", 32, 35, 256, 256, layers=2) == 0
    assert chunks("rnn", 1, 1000, 16, 32) == 1  # 1.5 M: one thread
    assert chunks("gru", 1, 1000, 32, 64) == 0  # 18 M over 1,000 steps at batch 1: the one-row layer loop
    assert chunks("gru", 1, 150, 64, 64) == 1  # 150 steps < stream_one_row_min_steps: the layer's fixed costs
    assert chunks("rnn", 1, 2000, 64, 128) == 0  # 49 M for one sequence: layer by layer
    assert chunks("gru", 1, 100, 256, 512) == 1  # 157 M, but 4.5 MB of weights: the threads share its units


@pytest.mark.parametrize("cell", CELLS)
def test_single_step_call(cell):
    """A one-step forward() without grad (e.g. generation) runs the streaming kernel per direction."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    ref = cls(I, H, num_layers=2, bidirectional=True, backend="reference", **kw)
    fast = cls(I, H, num_layers=2, bidirectional=True, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, I)
    hx = torch.randn(4, 3, kw.get("proj_size") or H)
    hx = (hx, torch.randn(4, 3, H)) if cls in WITH_C else hx
    with torch.no_grad():
        (out, hn), (out_ref, hn_ref) = fast(x, hx), ref(x, hx)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(hn if isinstance(hn, tuple) else (hn,), hn_ref if isinstance(hn_ref, tuple) else (hn_ref,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_streamer(cell):
    """fused.Streamer (stateful streaming) replays forward() one step at a time."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    model = cls(I, H, num_layers=2, backend="reference", **kw)
    x = torch.randn(T, 3, I)
    hx = torch.randn(2, 3, kw.get("proj_size") or H)
    hx = (hx, torch.randn(2, 3, H)) if cls in WITH_C else hx
    with torch.no_grad():
        ref, hn = model(x, hx)
        h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
        streamer = fused.Streamer(model.spec, [model.direction_weights(layer, 0) for layer in range(2)], 3, h0, c0)
        ys = [streamer(x[t]) for t in range(T)]
    torch.testing.assert_close(torch.stack(ys), ref, atol=1e-5, rtol=1e-5)
    state = streamer.state
    for a, b in zip(hn if isinstance(hn, tuple) else (hn,), state if isinstance(state, tuple) else (state,)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"x_t: expected a CPU tensor of shape \(3, 5\)"):
        streamer(torch.randn(2, I))
    with pytest.raises(ValueError, match="x_t: expected a CPU tensor .* on meta"):
        streamer(torch.randn(3, I, device="meta"))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_streamer_writes_into_out(cell, backend):
    """streamer(x_t, out=y) writes y_t into y and returns y itself, with the same values and state as
    streamer(x_t); every out that is not a contiguous tensor of the output's shape, dtype and device
    (or that requires grad) is refused, naming out, what was expected and what came."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    model = cls(I, H, num_layers=2, dtype=torch.float64, backend=backend, **kw)
    P = kw.get("proj_size") or H
    fresh, into = model.streamer(3), model.streamer(3)
    out = torch.full((3, P), float("nan"), dtype=torch.float64)
    for _ in range(T):
        x_t = torch.randn(3, I, dtype=torch.float64)
        y = fresh(x_t)
        assert into(x_t, out=out) is out
        assert torch.equal(out, y)
    for a, b in zip(*(s.state if isinstance(s.state, tuple) else (s.state,) for s in (fresh, into))):
        assert torch.equal(a, b)
    expected = r"out: expected a contiguous tensor of shape \(3, %d\), dtype torch.float64 on cpu" % P
    for bad, came in ((torch.empty(2, P, dtype=torch.float64), r"got shape \(2, "),
                      (torch.empty(3, P), "dtype torch.float32"),
                      (torch.empty(3, 2 * P, dtype=torch.float64)[:, ::2], "not contiguous"),
                      (torch.empty(3, P, dtype=torch.float64, requires_grad=True), "requiring grad")):
        with pytest.raises(ValueError, match=expected + ".*" + came):
            into(x_t, out=bad)
    with pytest.raises(TypeError, match="out: expected a torch.Tensor, got ndarray"):
        into(x_t, out=out.numpy())


@pytest.mark.parametrize("cell", CELLS)
def test_streamer_outputs_are_tensors_of_their_own(cell):
    """Each call's output keeps its values through later calls and has its own storage and version
    counter: an in-place op on a later output does not break the backward of a head that saved an
    earlier one. A non-contiguous input gives the same result as a contiguous one."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    model = cls(I, H, num_layers=2, **kw)
    x = torch.randn(T, I, 3).transpose(1, 2)  # [T, 3, I], every x[t] non-contiguous
    with torch.no_grad():
        ref, _ = model(x.contiguous())
    streamer = fused.Streamer(model.spec, [model.direction_weights(layer, 0) for layer in range(2)], 3)
    head = torch.nn.Linear(kw.get("proj_size") or H, 1)
    y0 = streamer(x[0])
    loss = head(y0).sum()  # saves y0 for the weight's gradient
    ys = [y0] + [streamer(x[t]) for t in range(1, T)]
    torch.testing.assert_close(torch.stack(ys), ref, atol=1e-5, rtol=1e-5)
    assert len({y.untyped_storage().data_ptr() for y in ys}) == T
    ys[-1].mul_(2)
    loss.backward()
    torch.testing.assert_close(head.weight.grad[0], y0.sum(0))


def test_stream_kernels_check_weight_shapes():
    """The compiled step reads weights through addresses, unchecked: their shapes are checked before."""
    model = rnnkit.GRU(I, H, num_layers=2)
    weights = [model.direction_weights(layer, 0) for layer in range(2)]
    bad = weights[1]._replace(w_hh=torch.randn(3 * H, H + 1))
    with pytest.raises(ValueError, match=r"layers\[1\].w_hh: expected a CPU tensor of shape \(18, 6\)"):
        fused.stream_step(model.spec, torch.randn(3, I), [weights[0], bad], None, None)
    with pytest.raises(ValueError, match=r"layers\[1\].w_ih: expected a CPU tensor of shape"):
        fused.Streamer(model.spec, [weights[0], weights[1]._replace(w_ih=torch.randn(3 * H, I + 5))], 1)


def test_split_needs_a_thread_safe_layer():
    """With numba's workqueue layer (not thread-safe) the loops are never split across threads."""
    code = ("from rnnkit.kernels import fused; import torch, rnnkit; torch.set_num_threads(2); "
            "print(fused.runtime.loops().MAX_THREADS, fused.explain(rnnkit.GRU(3, 8), torch.zeros(5, 64, 3))"
            ".layers[0].chunks)")
    env = dict(ENV, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_openblas_fallback_matches_reference():
    """Without MKL (forced by RNNKIT_BLAS=openblas) the compiled loops' GEMMs run on scipy's OpenBLAS,
    from the same cached machine code, with the same results."""
    code = textwrap.dedent("""
        import torch
        from rnnkit.kernels import fused, reference
        from rnnkit.cells import CellSpec
        from rnnkit.kernels.base import DirectionWeights
        torch.manual_seed(0)
        spec = CellSpec("GRU", 16)
        with fused.record() as plans:
            for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
                x = torch.randn(6, 5, 3, dtype=dtype)
                w = DirectionWeights(*(torch.randn(*shape, dtype=dtype) for shape in ((48, 3), (48, 16), (48,), (48,))),
                                     None)
                h0 = [(torch.zeros(5, 16, dtype=dtype),)]
                y, _ = fused.run_layer(spec, x, [w], h0, None)
                r, _ = reference.run_layer(spec, x, [w], h0, None)
                assert (y - r).abs().max() < tol, (dtype, (y - r).abs().max())
        print(fused.runtime.loops().BLAS, sum(p.path == "compiled_loop" and p.chunks == 1 for p in plans))
    """)
    env = dict(ENV, RNNKIT_BLAS="openblas")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["openblas", "2"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("small", [True, False], ids=["small", "loop"])
def test_double_backward_matches_reference(cell, small):
    """create_graph=True (a gradient penalty on the input and the final state): the fused layer's
    first-order gradients can be differentiated again, and the second-order gradients of the input
    and every parameter equal the reference's. On the small-training driver, and on the layer's own
    loops with lengths."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    fast = cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    ref = cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, backend="reference", **kw)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(T, 3, I, dtype=torch.float64, requires_grad=True)
    lengths = None if small else [7, 4, 2]

    def second_order(model):
        y, state = model(x, lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state
        gx, = torch.autograd.grad(y.square().sum() + h.sin().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [x, *model.parameters()])
    with kernels.policy(REFERENCE if small else using(small_train_max_macs=-1)), record() as plans:
        got = second_order(fast)
    takes_small = small and cls is not rnnkit.LayerNormLSTM and "proj_size" not in kw and kw.get("reset_after", True)
    assert set(paths(plans)) == ({"small_train"} if takes_small else {"compiled_loop"})
    for g, want in zip(got, second_order(ref)):
        torch.testing.assert_close(g, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_step_output_and_state_are_separate_tensors(cell):
    """On the compiled path, step()'s y_t is not a view of the new state: changing one leaves the
    other, and a head's backward through y_t sees y_t's values."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    layer = cls(I, H, num_layers=2, **kw).requires_grad_(False)
    x = torch.randn(3, I)
    with torch.no_grad():
        y, state = layer.step(x)
    h = state[0] if isinstance(state, tuple) else state
    h_before, y_before = h.clone(), y.clone()
    y.mul_(100)
    torch.testing.assert_close(h, h_before)
    w = torch.ones(y.shape[1], requires_grad=True)
    y2, state2 = layer.step(x)
    loss = (y2 * w).sum()
    (state2[0] if isinstance(state2, tuple) else state2).zero_()
    loss.backward()
    torch.testing.assert_close(w.grad, y_before.sum(0))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_keeps_autograd_for_a_state_that_needs_it(cell):
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    layer = cls(I, H, **kw).requires_grad_(False)
    x = torch.randn(1, 2, I)
    h0 = torch.randn(1, 2, H, requires_grad=True)
    state = (h0, torch.zeros(1, 2, H)) if cls in WITH_C else h0
    y, _ = layer.step(x[0], state)
    assert y.requires_grad
    y.sum().backward()
    grad = h0.grad.clone()
    h0.grad = None
    layer(x, state)[0].sum().backward()
    torch.testing.assert_close(grad, h0.grad)


def test_streaming_keeps_no_parameter_alive():
    """The streaming caches hold addresses, not parameters: a deleted layer's weights are freed."""
    import gc
    import weakref
    layer = rnnkit.LSTM(I, H, num_layers=2)
    ref = weakref.ref(layer.weight_hh_l1)
    with torch.no_grad():
        layer.step(torch.randn(2, I))
    streamer = layer.streamer(2)
    streamer(torch.randn(2, I))
    del layer, streamer
    gc.collect()
    assert ref() is None


def test_streamer_refuses_copies_and_odd_input():
    import copy
    import pickle
    streamer = rnnkit.GRU(I, H).streamer(2)
    for make_copy in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            make_copy(streamer)
    with pytest.raises(TypeError, match="x_t: expected a torch.Tensor, got list"):
        streamer([[0.0] * I] * 2)
    with pytest.raises(TypeError, match="x_t: expected a torch.Tensor, got ndarray"):
        streamer(torch.zeros(2, I).numpy())
    with pytest.raises(TypeError, match=r"x_t: expected .* dtype torch.float32, got .* torch.float64"):
        streamer(torch.zeros(2, I, dtype=torch.float64))  # a TypeError, as from the layer's own checks


def test_fallback_streamer_state_is_a_copy():
    """The generic streamer's ``state`` gives new tensors, as the compiled one's: editing them leaves the
    stream alone."""
    torch.manual_seed(0)
    layer, x = rnnkit.GRU(I, H, backend="reference"), torch.randn(2, I)
    streamer = layer.streamer(2)
    streamer(x)
    streamer.state.zero_()
    torch.testing.assert_close(streamer(x), layer(torch.stack([x, x]))[0][1])


def test_fallback_streamer_checks_batch_and_starts_from_zeros():
    layer = rnnkit.GRU(I, H, num_layers=2, backend="reference")
    streamer = layer.streamer(3)
    assert not isinstance(streamer, fused.Streamer)
    torch.testing.assert_close(streamer.state, torch.zeros(2, 3, H))
    with pytest.raises(ValueError, match="x_t: expected a batch of 3"):
        streamer(torch.randn(2, I))
    lstm = rnnkit.LSTM(I, H, backend="reference").streamer(1)
    assert [tuple(t.shape) for t in lstm.state] == [(1, 1, H), (1, 1, H)]


def test_loading_the_kernels_keeps_torch_thread_count():
    """The first fused call loads numba's OpenMP pool, on the libgomp torch uses: torch's thread count
    must stay what the user set (it read 2 after the first call, for a user's 1, once torch had read
    it before: the check in the code below)."""
    code = ("import torch, rnnkit; torch.set_num_threads(1); assert torch.get_num_threads() == 1; "
            "rnnkit.GRU(16, 128, backend='fused')(torch.randn(40, 64, 16)); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_linear_gives_onednn_a_bounded_number_of_shapes():
    """oneDNN caches a primitive (1-3 MB) per GEMM shape: sequences of a new length every call would
    grow the process without bound, so after onednn_max_shapes shapes the products go to MKL."""
    before = gemm.onednn_shapes()
    bounded = using(onednn_max_shapes=len(before) + 3)
    torch.manual_seed(0)
    w, b = torch.randn(256, 64), torch.randn(256)
    for rows in range(1231, 1237):  # large enough for oneDNN (rows·256·64 >= 2M multiply-adds), new here
        x = torch.randn(rows, 64)
        torch.testing.assert_close(gemm.linear(x, w, b, bounded), torch.addmm(b, x, w.t()), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gemm.linear(x, w, None, bounded), x.mm(w.t()), rtol=1e-4, atol=1e-4)
    assert gemm.onednn_shapes() - before == {(1231, 256, 64), (1232, 256, 64), (1233, 256, 64)}


def _replay(model, x, state=None):
    """model.step() over x <f>[T, B, I] without autograd: the outputs stacked, and the final state."""
    ys = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            y, state = model.step(x[t], state)
            ys.append(y)
    return torch.stack(ys), state


@pytest.mark.parametrize("cell", CELLS)
def test_step_cache_follows_the_parameters(cell):
    """step() keeps a streamer per layer (and thread) that reads the weights in place: in-place
    updates are seen, and a replaced, converted or reshaped parameter, another batch size or a deep
    copy of the layer each get a right answer."""
    import copy
    import pickle

    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    model = cls(I, H, num_layers=2, dtype=torch.float64, **kw)
    x = torch.randn(T, 3, I, dtype=torch.float64)

    def check(m, xs, tol=1e-12):
        with torch.no_grad():
            ref, hn = m(xs)
        ys, state = _replay(m, xs)
        torch.testing.assert_close(ys, ref, atol=tol, rtol=tol)
        torch.testing.assert_close(state, hn, atol=tol, rtol=tol)

    check(model, x)
    with torch.no_grad():
        model.weight_hh_l1.mul_(0.5)  # in place: the same tensor, new values
    check(model, x)
    model.weight_hh_l0 = torch.nn.Parameter(model.weight_hh_l0.detach() * 2)  # replaced
    check(model, x)
    model.weight_ih_l0.data = model.weight_ih_l0.data.clone() * 0.7  # new storage, same Parameter
    check(model, x)
    check(model, x[:, :2])  # another batch size
    twin = copy.deepcopy(model)
    check(twin, x)
    with torch.no_grad():
        twin.weight_hh_l1.zero_()
    check(model, x)  # the original is unaffected by the copy's update
    check(pickle.loads(pickle.dumps(model)), x)
    model.float()  # converted: every parameter at a new address
    check(model, x.float(), tol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_step_state_fed_back_skips_only_its_own_check(cell):
    """The state step() returned last goes back in unchecked; edited in place, the edit counts; any
    other state (an older one, another layer's) is checked as ever."""
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    model, other = cls(I, H, num_layers=2, **kw), cls(I, H, **kw)
    x = torch.randn(T, 3, I)
    with torch.no_grad():
        _, first = model.step(x[0])
        _, last = model.step(x[1], first)
        for part in last if isinstance(last, tuple) else (last,):
            part.zero_()  # reset in place: the next step starts from zeros
        y, _ = model.step(x[2], last)
        torch.testing.assert_close(y, model.step(x[2])[0])
        older, _ = model.step(x[3], first)  # not the last state: checked, and still right
        torch.testing.assert_close(older, model(torch.stack([x[0], x[3]]))[0][1])
        _, foreign = other.step(x[0])
        with pytest.raises(ValueError, match=r"h_0: expected shape \(2, 3, "):
            model.step(x[1], foreign)


def test_step_from_two_threads_on_one_layer():
    """Two threads stepping the same layer at once (say, two requests to one model) each get their own
    sequence's answer: step()'s cached streamer is per thread."""
    import threading

    torch.manual_seed(0)
    model = rnnkit.LSTM(I, H, num_layers=2, dtype=torch.float64)
    xs = [torch.randn(200, 2, I, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        refs = [model(x)[0] for x in xs]
    got = [None, None]

    def run(k):
        got[k] = _replay(model, xs[k])[0]
    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that their steps interleave
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(interval)
    for y, ref in zip(got, refs):
        torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-10)


def test_warm_up_compiles_the_small_training_driver():
    """``warm_up`` (run by ``make``) reaches _SmallLayer's kernels too, so no first call compiles them.
    In a fresh process, where a kernel has a signature only once something has called it."""
    code = textwrap.dedent("""
        import torch
        from rnnkit.kernels.fused import runtime, warmup
        K = runtime.loops()
        for group in warmup.WARM_UP_GROUPS:
            warmup.warm_up_cells(group, (torch.float64,))
        print(sum(any(str(sig[0]).startswith("array(float64") for sig in kernel.signatures)
                  for cell in (K.rnn, K.lstm, K.gru) for kernel in (cell.small_forward, cell.small_backward)))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "6"
