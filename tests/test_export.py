"""Export and compilation: while torch records a model (``torch.jit.trace``, ``torch.export``,
``torch.compile``, ONNX) the layers run the reference backend's plain torch ops, never the fused
kernels (which read tensors' memory: fake tensors have none), and the recorded program computes what
the eager layer does. The reference loop is unrolled, so an exported graph keeps the time steps it
was recorded with; the batch may stay dynamic (torch.export, ONNX through it)."""

from __future__ import annotations

import io

import pytest
import torch

import rnnkit
from rnnkit.kernels import fused
from rnnkit.model import SequenceModel

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),  # shapes taken as constants
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # the TorchScript exporter's own

CELLS = {
    "rnn": (rnnkit.RNN, {}),
    "lstm": (rnnkit.LSTM, {}),
    "lstm_proj": (rnnkit.LSTM, {"proj_size": 3}),
    "gru": (rnnkit.GRU, {}),
    "gru_v1": (rnnkit.GRU, {"reset_after": False}),
    "lstm_ln": (rnnkit.LayerNormLSTM, {}),
}
B, T, I, H = 2, 4, 3, 5


def _layer(cell: str) -> torch.nn.Module:
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    return cls(I, H, num_layers=2, bidirectional=True, batch_first=True, **kw).eval()


def _fused_calls() -> int:
    return sum(fused.calls.values())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_matches_eager(cell, strict):
    """torch.export (fake tensors, non-strict; or dynamo, strict) records the reference path; the
    exported program gives the eager output and final state, at another batch size too."""
    layer = _layer(cell)
    x = torch.randn(B, T, I)
    before = _fused_calls()
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: batch},), strict=strict)
    assert _fused_calls() == before  # nothing ran on the fused kernels while recording
    for xb in (x, torch.randn(B + 3, T, I)):
        with torch.no_grad():
            want = layer(xb)
        torch.testing.assert_close(program.module()(xb), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_jit_trace_matches_eager(cell):
    layer = _layer(cell)
    x = torch.randn(B, T, I)
    before = _fused_calls()
    traced = torch.jit.trace(layer, (x,), check_trace=False)
    assert _fused_calls() == before
    with torch.no_grad():
        torch.testing.assert_close(traced(x), layer(x), atol=1e-6, rtol=1e-5)


def test_torch_compile_trains_like_eager():
    """torch.compile of a layer: the same output and the same weight gradients as the eager layer
    (which runs the fused kernels)."""
    torch.manual_seed(0)
    eager = rnnkit.LSTM(I, H, batch_first=True)
    compiled_layer = rnnkit.LSTM(I, H, batch_first=True)
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer)
    x = torch.randn(B, T, I)
    grads = []
    for model in (eager, compiled):
        y, (h, c) = model(x)
        (y.square().sum() + c.sum()).backward()
        grads.append([p.grad for p in (eager if model is eager else compiled_layer).parameters()])
    torch.testing.assert_close(compiled(x)[0], eager(x)[0], atol=1e-6, rtol=1e-5)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_onnx_export_runs_in_onnxruntime():
    """A language model (embedding, two LSTM layers, softmax head) exported to ONNX by torch's
    exporter (through torch.export), run by onnxruntime: the eager model's outputs, at the batch it
    was recorded with and another."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test dependencies (make test)")
    torch.manual_seed(0)
    model = SequenceModel.from_config({"cell": "lstm", "vocab_size": 11, "embedding_dim": 4, "hidden_size": 6,
                                       "num_layers": 2, "output_size": 11, "output_activation": "softmax"}).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randint(0, 11, (B, T)),), buffer, input_names=["ids"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=2)},))
    session = ort.InferenceSession(buffer.getvalue())
    for batch in (B, B + 2):
        ids = torch.randint(0, 11, (batch, T))
        logits, h, c = session.run(None, {"ids": ids.numpy()})
        with torch.no_grad():
            want = model(ids)
        torch.testing.assert_close((torch.from_numpy(logits), (torch.from_numpy(h), torch.from_numpy(c))), want,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru_v1"])
def test_legacy_onnx_export_runs_in_onnxruntime(cell):
    """torch's TorchScript-based ONNX exporter (``dynamo=False``, which traces) on a layer."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test dependencies (make test)")
    layer = _layer(cell)
    x = torch.randn(B, T, I)
    buffer = io.BytesIO()
    torch.onnx.export(layer, (x,), buffer, dynamo=False, input_names=["x"])
    session = ort.InferenceSession(buffer.getvalue())
    with torch.no_grad():
        y, state = layer(x)
    torch.testing.assert_close(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), y, atol=1e-5, rtol=1e-4)
