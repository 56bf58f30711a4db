"""Export and compilation: while torch records a model (``torch.jit.trace``, ``torch.export``,
``torch.compile``, ONNX) the layers run the reference backend's plain torch ops, never the fused
kernels (which read tensors' memory: fake tensors have none), and the recorded program computes what
the eager layer does. Exported (torch.export, and ONNX through it) the time loop is one scan, so the
program takes any batch and any number of time steps, lengths included; traced or compiled it is
unrolled."""

from __future__ import annotations

import io

import pytest
import torch

import rnnkit
from rnnkit.kernels.fused import record
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


def _layer(cell: str, num_layers: int = 2) -> torch.nn.Module:
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    return cls(I, H, num_layers=num_layers, bidirectional=True, batch_first=True, **kw).eval()


def _runs_fused(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether an eager call of ``layer`` runs on the fused kernels (so that recording's path differs)."""
    with torch.no_grad(), record() as plans:
        layer(x)
    return bool(plans)


# every cell but the plain LSTM and GRU, which the strict case, the lengths case and the ONNX models cover
@pytest.mark.parametrize("cell,strict", [("rnn", False), ("lstm_proj", False), ("gru_v1", False), ("lstm_ln", False),
                                         ("lstm", True)])
def test_torch_export_matches_eager(cell, strict):
    """torch.export (fake tensors, non-strict; or dynamo, strict) records the reference path; the
    exported program gives the eager output and final state at other batch sizes and lengths too.
    (One bidirectional layer: exporting the scans takes ~4 s a direction here.)"""
    layer = _layer(cell, num_layers=1)
    x = torch.randn(B, T, I)
    assert _runs_fused(layer, x)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}
    with record() as plans:
        program = torch.export.export(layer, (x,), dynamic_shapes=(dims,), strict=strict)
    assert plans == []  # nothing ran on the fused kernels while recording
    for xb in (x, torch.randn(B + 3, T + 5, I), torch.randn(1, 1, I)):
        with torch.no_grad():
            want = layer(xb)
        torch.testing.assert_close(program.module()(xb), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm"])
def test_torch_export_with_lengths(cell):
    """A padded batch with lengths= exported: the program masks by the lengths it is given."""

    class WithLengths(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x, lengths):
            return self.layer(x, lengths=lengths)
    model = WithLengths(_layer(cell, num_layers=1))
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    program = torch.export.export(model, (torch.randn(B, T, I), torch.tensor([T, 2])),
                                  dynamic_shapes=({0: batch, 1: time}, {0: batch}))
    x, lengths = torch.randn(4, T + 3, I), torch.tensor([T + 3, 1, 5, T + 3])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x, lengths), model(x, lengths), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_jit_trace_matches_eager(cell):
    layer = _layer(cell)
    x = torch.randn(B, T, I)
    assert _runs_fused(layer, x)
    with record() as plans:
        traced = torch.jit.trace(layer, (x,), check_trace=False)
    assert plans == []
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
        grads.append([p.grad for p in model.parameters()])  # the compiled module's are compiled_layer's
    torch.testing.assert_close(compiled(x)[0], eager(x)[0], atol=1e-6, rtol=1e-5)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_onnx_export_runs_in_onnxruntime():
    """A language model (embedding, an LSTM layer, softmax head) exported to ONNX by torch's
    exporter (through torch.export), run by onnxruntime: the eager model's outputs and final state,
    at the batch and length it was recorded with and others."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test dependencies (make test)")
    torch.manual_seed(0)
    model = SequenceModel.from_config({"cell": "lstm", "vocab_size": 11, "embedding_dim": 4, "hidden_size": 6,
                                       "output_size": 11, "output_activation": "softmax"}).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randint(0, 11, (B, T)),), buffer, input_names=["ids"],
                      dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("time")},))
    session = ort.InferenceSession(buffer.getvalue())
    for shape in ((B, T), (B + 2, T + 6), (1, 1)):
        ids = torch.randint(0, 11, shape)
        logits, h, c = session.run(None, {"ids": ids.numpy()})
        with torch.no_grad():
            want = model(ids)
        torch.testing.assert_close((torch.from_numpy(logits), (torch.from_numpy(h), torch.from_numpy(c))), want,
                                   atol=1e-5, rtol=1e-4)


def test_onnx_classifier_with_lengths():
    """A bidirectional GRU sentence classifier (last-step pooling over each sequence's own length,
    sigmoid head) in ONNX: padded batches of any size and length, each row as the eager model scores it."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test dependencies (make test)")
    torch.manual_seed(0)
    model = SequenceModel.from_config({"cell": "gru", "vocab_size": 20, "embedding_dim": 5, "hidden_size": 6,
                                       "bidirectional": True, "output_size": 1, "output_activation": "sigmoid",
                                       "output_per": "sequence", "pooling": "last", "padding_idx": 0}).eval()

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids, lengths):
            return self.model(ids, lengths=lengths)[0]
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    buffer = io.BytesIO()
    torch.onnx.export(Scores(), (torch.randint(1, 20, (3, 6)), torch.tensor([6, 2, 4])), buffer,
                      input_names=["ids", "lengths"], dynamic_shapes=({0: batch, 1: time}, {0: batch}))
    session = ort.InferenceSession(buffer.getvalue())
    ids, lengths = torch.randint(1, 20, (4, 9)), torch.tensor([9, 1, 5, 9])
    ids[1, 1:], ids[2, 5:] = 0, 0
    with torch.no_grad():
        want = model(ids, lengths=lengths)[0]
    got = session.run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-4)


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
