"""rnnkit on a CUDA device: the layers (cuDNN through the ``torch`` backend for the cells torch.nn
has, the reference for the others), half precision, and a task trained on the GPU whose checkpoint
loads on the CPU. Skipped on a machine without CUDA (CI's); run where a GPU is."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import rnnkit
from rnnkit import kernels, tasks
from rnnkit.bench import main as bench
from rnnkit.model import ModelConfig
from rnnkit.tasks.language_model import LMDataConfig, LMExperiment
from rnnkit.train import TrainConfig

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

CELLS = {  # name: (rnnkit class, kwargs, torch.nn class or None, backend that auto picks on CUDA)
    "rnn_tanh": (rnnkit.RNN, {}, torch.nn.RNN, "torch"),
    "rnn_relu": (rnnkit.RNN, {"nonlinearity": "relu"}, torch.nn.RNN, "torch"),
    "lstm": (rnnkit.LSTM, {}, torch.nn.LSTM, "torch"),
    "lstm_proj": (rnnkit.LSTM, {"proj_size": 3}, torch.nn.LSTM, "torch"),
    "gru": (rnnkit.GRU, {}, torch.nn.GRU, "torch"),
    "gru_v1": (rnnkit.GRU, {"reset_after": False}, None, "reference"),
    "lstm_ln": (rnnkit.LayerNormLSTM, {}, None, "reference"),
}
F64 = {"dtype": torch.float64}


@pytest.mark.parametrize("cell", CELLS)
def test_auto_dispatch_on_cuda(cell):
    cls, kw, _, expected = CELLS[cell]
    layer = cls(3, 8, **kw).cuda()
    assert kernels.select_backend(layer.spec, torch.empty(2, 2, 3, device="cuda"), True).name == expected


@pytest.mark.parametrize("cell", CELLS)
def test_runs_on_cuda_like_cpu(cell):
    """Every cell, 2 layers, bidirectional, with lengths: the GPU's outputs, final states and
    gradients equal the CPU reference's (float64, where neither side rounds much)."""
    cls, kw, _, _ = CELLS[cell]
    torch.manual_seed(5)
    layer = cls(3, 8, num_layers=2, bidirectional=True, batch_first=True, backend="reference", **kw, **F64)
    gpu_layer = cls(3, 8, num_layers=2, bidirectional=True, batch_first=True, **kw, **F64).cuda()
    gpu_layer.load_state_dict(layer.state_dict())
    x = torch.randn(4, 6, 3, **F64)
    lengths = torch.tensor([6, 3, 1, 5])
    results = []
    for module, xi in ((layer, x.clone().requires_grad_()), (gpu_layer, x.cuda().requires_grad_())):
        out, hidden = module(xi, lengths=lengths.to(xi.device))
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        (out.sum() + sum((h * h).sum() for h in hidden)).backward()
        results.append([out, *hidden, xi.grad, *(p.grad for p in module.parameters())])
    assert all(t.is_cuda for t in results[1])
    for cpu, gpu in zip(*results):
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("cell", [c for c in CELLS if CELLS[c][2] is not None])
def test_matches_torch_nn_on_cuda(cell):
    """float32 on cuDNN: the same as torch.nn's layer with the same weights (both on cuDNN)."""
    cls, kw, torch_cls, _ = CELLS[cell]
    torch.manual_seed(0)
    theirs = torch_cls(16, 32, num_layers=2, bidirectional=True, batch_first=True, **kw).cuda()
    ours = cls(16, 32, num_layers=2, bidirectional=True, batch_first=True, **kw).cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(8, 50, 16, device="cuda")
    outs = []
    for module in (ours, theirs):
        with warnings.catch_warnings():  # ours: no advice to flatten weights (module docstring of native)
            warnings.simplefilter("error" if module is ours else "ignore")
            out, _ = module(x)
        out.square().mean().backward()
        outs.append([out] + [p.grad for p in module.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_on_cuda(dtype):
    """cuDNN runs an LSTM in half precision; its output stays near the float32 one."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(16, 32, batch_first=True).cuda()
    x = torch.randn(4, 30, 16, device="cuda")
    full, _ = layer(x)
    half, _ = layer.to(dtype)(x.to(dtype))
    assert half.dtype == dtype
    torch.testing.assert_close(half.float(), full, atol=3e-2, rtol=0)


def test_language_model_trains_on_cuda_and_loads_on_cpu(tmp_path):
    lines = ["the cats are cute", "the dogs are loud", "a cat is small", "the cats are lovely"]
    order = torch.randint(len(lines), (400,), generator=torch.Generator().manual_seed(0)).tolist()
    (tmp_path / "train.txt").write_text("\n".join(lines[i] for i in order) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines * 5) + "\n")
    experiment = LMExperiment(
        data=LMDataConfig(train=str(tmp_path / "train.txt"), valid=str(tmp_path / "valid.txt"),
                          batch_size=8, eval_batch_size=4, bptt=10),
        model=ModelConfig(cell="lstm", embedding_dim=24, hidden_size=32),
        train=TrainConfig(epochs=12, optimizer="adam", lr=1e-2, log_every=1000, device="cuda"))
    torch.cuda.reset_peak_memory_stats()
    lm = tasks.fit(experiment, tmp_path / "run")
    assert torch.cuda.max_memory_allocated() > 0  # it trained there
    loaded = rnnkit.load(tmp_path / "run" / "best")  # onto the CPU
    assert not next(loaded.model.parameters()).is_cuda
    assert {w for w, _ in loaded.predict_next("the cats are", k=2)} == {"cute", "lovely"}
    on_gpu = type(lm)(loaded.model.cuda(), lm.tokenizer, lm.vocab, lm.experiment)
    assert [w for w, _ in on_gpu.predict_next("the cats are", k=2)] == [w for w, _ in lm.predict_next("the cats are", k=2)]
    assert set(on_gpu.generate("the", length=8, seed=1).split()) <= set(" ".join(lines).split())


def test_bench_on_cuda(tmp_path):
    out = tmp_path / "speed.json"
    assert bench(["--device", "cuda", "--configs", "2x3x4x5", "--cells", "gru,lstm_ln", "--repeat", "1",
                  "--min-time", "0.001", "--no-stream", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cuda" and report["ours"] == "auto"
    train = {r["impl"]: r for r in report["rows"] if r["cell"] == "gru" and r["mode"] == "train"}
    assert set(train) == {"torch", "auto", "reference"}
    assert all(r["median_ms"] > 0 and r["peak_mib"] > 0 for r in train.values())
