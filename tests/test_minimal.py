"""MinGRU and MinLSTM: the parallel scans against the sequential reference and against the paper's
equations written out here, gradcheck, streaming, padding, export and a model that trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

import rnnkit
from rnnkit import kernels
from rnnkit.kernels.fused.policies import current as current_policy
from rnnkit.layers.minimal import log_scan, loop_scan

F64 = {"dtype": torch.float64}
CLASSES = [rnnkit.MinGRU, rnnkit.MinLSTM]
IDS = ["mingru", "minlstm"]


def _g(v):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def paper_layer(layer, x, h0, lengths, direction=0, index=0):
    """One direction of one layer from Feng et al. 2024's equations, step by step, each sequence of
    the batch run alone over its own valid steps (reversed for direction 1). x <f>[T, B, I] →
    (output <f>[T, B, H] with zeros past each end, h_n <f>[B, H])."""
    suffix = "_reverse" if direction else ""
    w, b = getattr(layer, f"weight_ih_l{index}{suffix}"), getattr(layer, f"bias_ih_l{index}{suffix}")
    out, finals = torch.zeros(x.shape[0], x.shape[1], layer.hidden_size, **F64), []
    for row in range(x.shape[1]):
        h, steps = h0[row], range(int(lengths[row]))
        for t in (reversed(steps) if direction else steps):
            gates = F.linear(x[t, row], w, b)
            if isinstance(layer, rnnkit.MinGRU):
                k, u = gates.chunk(2)
                z = torch.sigmoid(k)
                h = (1 - z) * h + z * _g(u)
            else:
                kf, ki, u = gates.chunk(3)
                f, i = torch.sigmoid(kf), torch.sigmoid(ki)
                h = f / (f + i) * h + i / (f + i) * _g(u)
            out[t, row] = h
        finals.append(h)
    return out, torch.stack(finals)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("scan", ["fused", "log", "loop", "reference"])
def test_each_scan_equals_the_papers_equations(cls, scan):
    """A bidirectional 2-layer stack with padding and a signed initial state, float64, against the
    equations run sequence by sequence: outputs and final states agree to rounding."""
    torch.manual_seed(0)
    layer = cls(3, 4, num_layers=2, bidirectional=True, scan=scan, **F64)
    x, lengths = torch.randn(6, 3, 3, **F64), torch.tensor([6, 2, 4])
    h0 = torch.randn(4, 3, 4, **F64)  # negative entries too: the log scan adds h_0's term apart
    out, h_n = layer(x, h0, lengths=lengths)
    inputs, finals = x, []
    for index in range(2):
        outs = []
        for d in range(2):
            o, f = paper_layer(layer, inputs, h0[2 * index + d], lengths, d, index)
            outs.append(o)
            finals.append(f)
        inputs = torch.cat(outs, dim=2)
    torch.testing.assert_close(out, inputs, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(h_n, torch.stack(finals), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("scan", ["fused", "log", "loop"])
def test_parallel_scan_gradients_equal_the_reference(cls, scan):
    """Gradients of the input, the initial state and every weight, through lengths, both directions
    and a stack, equal the step-by-step reference's (float64)."""
    torch.manual_seed(1)
    layer = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True, **F64)
    x, lengths = torch.randn(4, 7, 3, **F64), torch.tensor([7, 1, 5, 3])
    h0 = torch.randn(4, 4, 5, **F64)
    grads = {}
    for method in (scan, "reference"):
        layer.scan = method
        xs, hs = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, h_n = layer(xs, hs, lengths=lengths)
        loss = (out * torch.linspace(-1, 1, out.shape[-1], **F64)).sum() + h_n.pow(2).sum()
        grads[method] = torch.autograd.grad(loss, [xs, hs, *layer.parameters()])
    for got, want in zip(grads[scan], grads["reference"]):
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("scan", ["log", "loop"])
def test_scan_gradcheck(scan):
    """torch.autograd.gradcheck of the scan itself, with padding (a, b, h_0 all differentiated)."""
    torch.manual_seed(2)
    a = torch.rand(5, 2, 3, **F64).clamp_min(0.05).requires_grad_()
    b = torch.rand(5, 2, 3, **F64).add(0.1).requires_grad_()
    h0 = torch.randn(2, 3, **F64, requires_grad=True)
    mask = (torch.arange(5)[:, None] < torch.tensor([5, 3])[None, :]).unsqueeze(-1)
    if scan == "loop":
        assert torch.autograd.gradcheck(loop_scan, (a, b, h0))
    else:
        assert torch.autograd.gradcheck(lambda a, b, h0: log_scan(a.log(), b.log(), h0, mask, chunk=2), (a, b, h0))


@pytest.mark.parametrize("chunk", [1, 3, 4, 64])
def test_chunked_log_scan_equals_the_loop(chunk):
    """Chunks of any size (whole, partial, one step, longer than the sequence), with padding."""
    torch.manual_seed(9)
    a, b, h0 = torch.rand(10, 3, 2, **F64), torch.rand(10, 3, 2, **F64) + 0.1, torch.randn(3, 2, **F64)
    mask = (torch.arange(10)[:, None] < torch.tensor([10, 1, 6])[None, :]).unsqueeze(-1)
    want = loop_scan(a.masked_fill(~mask, 1.0), b.masked_fill(~mask, 0.0), h0)
    torch.testing.assert_close(log_scan(a.log(), b.log(), h0, mask, chunk=chunk), want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_layer_gradcheck(cls):
    torch.manual_seed(3)
    layer = cls(2, 3, num_layers=2, bidirectional=True, batch_first=True, **F64)
    x = torch.randn(2, 4, 2, **F64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]

    def fn(x, *weights):
        return torch.func.functional_call(layer, dict(zip(names, weights)), (x,), {"lengths": [4, 2]})

    weights = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *weights), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_step_and_streamer_equal_the_sequence(cls):
    torch.manual_seed(4)
    layer = cls(3, 6, num_layers=2)
    x, h0 = torch.randn(9, 2, 3), torch.randn(2, 2, 6)
    out, h_n = layer(x, h0)
    state, steps = h0, []
    for x_t in x:
        y_t, state = layer.step(x_t, state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps), out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(state, h_n, atol=1e-6, rtol=1e-5)
    s, y = layer.streamer(batch_size=2, state=h0), torch.empty(2, 6)
    for x_t in x:
        s(x_t, out=y)
    torch.testing.assert_close(y, out[-1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s.state, h_n, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="bidirectional"):
        cls(3, 6, bidirectional=True).step(x[0])
    with pytest.raises(ValueError, match="x_t: expected a batch of 2"):
        s(x[0, :1])
    with pytest.raises(ValueError, match="out: expected a contiguous tensor of shape"):
        s(x[0], out=torch.empty(2, 5))


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_streamer_in_float64_and_reading_parameters_in_place(cls):
    """The compiled streamer in float64, and after an in-place update of a weight."""
    torch.manual_seed(11)
    layer = cls(4, 5, num_layers=2, **F64)
    s, x = layer.streamer(batch_size=3), torch.randn(7, 3, 4, **F64)
    with torch.no_grad():
        layer.weight_ih_l1.mul_(2.0)
    for x_t in x:
        y_t = s(x_t)
    out, h_n = layer(x)
    torch.testing.assert_close(y_t, out[-1], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s.state, h_n, atol=1e-12, rtol=1e-10)


def test_log_scan_is_stable_where_products_underflow():
    """Gates near 1 over 3000 steps: the product of the a_t underflows float32 long before the end,
    yet the log-space scan stays finite and equals the loop (which multiplies one step at a time)."""
    torch.manual_seed(5)
    layer = rnnkit.MinGRU(4, 8)
    with torch.no_grad():
        layer.bias_ih_l0[:8] = 6.0  # z ≈ 1: a_t = 1 - z_t ≈ 0.0025, so ∏ a_t < 1e-38 after 15 steps
    x = torch.randn(3000, 2, 4)
    layer.scan = "log"
    fast, fast_h = layer(x)
    layer.scan = "loop"
    slow, slow_h = layer(x)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_h, slow_h, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_packed_and_unbatched_inputs(cls):
    torch.manual_seed(6)
    layer = cls(3, 4, bidirectional=True)
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 3])
    padded, h_pad = layer(x, lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    out, h_packed = layer(packed)
    unpacked, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
    torch.testing.assert_close(unpacked, padded)
    torch.testing.assert_close(h_packed, h_pad)
    single, h_single = layer(x[:3, 1])  # one unbatched sequence: the second row's valid steps
    torch.testing.assert_close(single, padded[:3, 1])
    torch.testing.assert_close(h_single, h_pad[:, 1])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="scan: expected one of"):
        rnnkit.MinGRU(3, 4, scan="fast")
    layer = rnnkit.MinLSTM(3, 4)
    with pytest.raises(ValueError, match="input: expected 3 features"):
        layer(torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match=r"h_0: expected shape \(1, 2, 4\)"):
        layer(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="lengths: expected every length <= 5"):
        layer(torch.randn(5, 2, 3), lengths=[6, 2])


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_sequence_model_trains_with_the_cell(cell):
    """cell = "mingru" / "minlstm" in a model config: a small stack learns to echo the previous token."""
    torch.manual_seed(7)
    model = rnnkit.SequenceModel.from_config({"cell": cell, "vocab_size": 8, "embedding_dim": 16, "hidden_size": 32,
                                              "num_layers": 2, "output_size": 8, "output_activation": "softmax"})
    assert isinstance(model.stack[0], {"mingru": rnnkit.MinGRU, "minlstm": rnnkit.MinLSTM}[cell])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 8, (16, 12))
    losses = []
    for _ in range(60):
        logits, _ = model(ids[:, 1:])
        loss = model.loss(logits, ids[:, :-1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_torch_export_and_trace_record_the_reference():
    """torch.export (dynamic batch and time) and jit.trace record the step-by-step reference, which
    gives the eager layer's outputs and final state, padding included."""
    torch.manual_seed(8)

    class WithLengths(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = rnnkit.MinGRU(3, 4, batch_first=True, bidirectional=True)

        def forward(self, x, lengths):
            return self.layer(x, lengths=lengths)

    model = WithLengths()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    program = torch.export.export(model, (torch.randn(2, 6, 3), torch.tensor([6, 2])),
                                  dynamic_shapes=({0: batch, 1: time}, {0: batch}))
    x, lengths = torch.randn(3, 9, 3), torch.tensor([9, 1, 5])
    with torch.no_grad():
        want = model(x, lengths)
        torch.testing.assert_close(program.module()(x, lengths), want, atol=1e-6, rtol=1e-5)
        traced = torch.jit.trace(model, (x, lengths))
        torch.testing.assert_close(traced(x, lengths), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_fused_scan_over_several_lanes_equals_the_loop(cls):
    """300 hidden units (the fused pass's lanes of 256: one whole, one partial), padding, both
    directions: output, final state and every gradient equal the loop scan's (float64)."""
    torch.manual_seed(10)
    layer = cls(5, 300, bidirectional=True, **F64)
    x, lengths, h0 = torch.randn(6, 3, 5, **F64), torch.tensor([6, 2, 5]), torch.randn(2, 3, 300, **F64)
    results = {}
    for scan in ("fused", "loop"):
        layer.scan = scan
        xs = x.clone().requires_grad_()
        out, h_n = layer(xs, h0, lengths=lengths)
        loss = (out * out.detach().sin()).sum() + h_n.sum()
        results[scan] = (out, h_n, *torch.autograd.grad(loss, [xs, *layer.parameters()]))
    for got, want in zip(results["fused"], results["loop"]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def _fused_f32_against_loop_f64(layer, x, h0, lengths, backwards=1):
    """Output, h_n and every gradient of the fused scan in float32 against the loop scan in float64,
    each as its largest error over the largest magnitude."""
    results = {}
    for scan, dtype in (("fused", torch.float32), ("loop", torch.float64)):
        layer.to(dtype).scan = scan
        xs = x.to(dtype).requires_grad_()
        out, h_n = layer(xs, h0.to(dtype), lengths=lengths)
        loss = (out * out.detach().sin()).sum() + h_n.sum()
        for _ in range(backwards):  # again with retain_graph: the kept buffers are intact
            grads = torch.autograd.grad(loss, [xs, *layer.parameters()], retain_graph=True)
        results[scan] = (out, h_n, *grads)
    return [((got.double() - want).abs().max() / want.abs().max()).item()
            for got, want in zip(results["fused"], results["loop"])]


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_float32_equals_the_loop_in_float64(cls, bias):
    """float32 (the vectorised sigmoid and exp, prefetching, the bias gradient summed in the backward
    loop; weights x4 so that gates saturate), with and without bias, padding, both directions, a
    second backward: every result within 2e-6 of the largest value."""
    torch.manual_seed(11)
    layer = cls(7, 300, bidirectional=True, batch_first=True, bias=bias)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(4)
    x, h0 = torch.randn(3, 40, 7), torch.randn(2, 3, 300)
    errors = _fused_f32_against_loop_f64(layer, x, h0, torch.tensor([40, 17, 33]), backwards=2)
    assert max(errors) < 2e-6, errors


def test_fused_minlstm_float32_where_both_gates_underflow():
    """kf, ki ~ -60 and ~ +60 (σ is 0 or 1 in float32, so f / (f + i) computed from σ would be 0/0 or
    lose the ratio): the fused float32 scan still gives the float64 loop's results."""
    torch.manual_seed(12)
    layer = rnnkit.MinLSTM(4, 8, batch_first=True)
    with torch.no_grad():
        layer.bias_ih_l0[:16] = torch.cat([torch.full((4,), -60.0), torch.full((4,), 60.0)]).repeat(2)
        layer.bias_ih_l0[8:12] -= 3.0  # the input gate's pre-activation 3 below the forget gate's
    x, h0 = torch.randn(2, 10, 4), torch.randn(1, 2, 8)
    errors = _fused_f32_against_loop_f64(layer, x, h0, None)
    assert max(errors) < 2e-6, errors


def test_fused_kept_buffers_of_two_calls_before_one_backward():
    """Two forward calls, then one backward through both (each keeps its input projection in a pooled
    buffer, forced here for a small product of 256 KB): gradients equal the loop scan's."""
    torch.manual_seed(13)
    layer = rnnkit.MinGRU(3, 64, batch_first=True, **F64)
    x1, x2 = torch.randn(4, 64, 3, **F64), torch.randn(4, 64, 3, **F64)
    grads = {}
    pooled = dataclasses.replace(current_policy(), linear_pool_min_bytes=0)
    for scan in ("fused", "loop"):
        layer.scan = scan
        with kernels.policy(pooled):
            loss = layer(x1)[0].pow(2).sum() + layer(x2)[0].sin().sum()
        grads[scan] = torch.autograd.grad(loss, list(layer.parameters()))
    for got, want in zip(grads["fused"], grads["loop"]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_layer_hook_and_weights_only_round_trip(tmp_path):
    """register_layer_hook sees each layer's output; a whole layer saved with torch.save loads with
    weights_only=True and computes the same."""
    torch.manual_seed(12)
    layer = rnnkit.MinGRU(3, 4, num_layers=2)
    seen = []
    handle = layer.register_layer_hook(lambda index, out: seen.append((index, tuple(out.shape))))
    x = torch.randn(5, 2, 3)
    out, _ = layer(x)
    assert seen == [(0, (5, 2, 4)), (1, (5, 2, 4))]
    handle.remove()
    torch.save(layer, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt", weights_only=True)
    torch.testing.assert_close(loaded(x)[0], out)


def test_a_task_trains_with_the_cell():
    """The cells reach every task through the registry: a bidirectional minLSTM text classifier
    (padded batches, per-sequence pooling) trains and predicts."""
    from rnnkit.tasks import Classifier
    torch.manual_seed(13)
    texts = ["good great fine film", "bad awful dull plot", "lovely good film", "poor bad plot"] * 10
    clf = Classifier.fit(texts, [1, 0, 1, 0] * 10, epochs=1, batch_size=8, cell="minlstm", bidirectional=True,
                         hidden_size=8, embedding_dim=8)
    assert isinstance(clf.model.stack[0], rnnkit.MinLSTM) and clf.model.stack[0].bidirectional
    assert all(label in (0, 1) for label in clf.predict(["good film", "bad plot"]))
