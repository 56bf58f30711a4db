"""``explain(layer, x)``: the plan a layer's call would run, and why, without running it."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import select_backend
from . import runtime
from .streaming import supports
from .plan import Call, Plan, layer_by_layer, plan
from .policies import current


def explain(layer, x: Tensor, lengths=None, *, streaming: bool = False, training: bool | None = None) -> Plan:
    """What ``layer(x, lengths=lengths)`` would run (or, with ``streaming``, one step of
    ``layer.step(x)`` / ``layer.streamer()``, x <f>[B, I]), as a ``Plan`` whose ``str`` reads as text:
    the path, its threads, and the rule and figures that chose it. training: whether autograd records
    the call (default: grad mode is on and the input or a parameter requires grad).

    Examples:
        >>> import torch, rnnkit
        >>> from rnnkit.kernels import explain
        >>> gru = rnnkit.GRU(32, 64, batch_first=True)
        >>> plan = explain(gru, torch.randn(2, 20, 32), training=False)
        >>> plan.path, plan.chunks
        ('stream', 1)
        >>> print(plan.reason)
        multiply-adds 737,280 <= stream_sequence_max_macs ...
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    spec, policy = layer.spec, current()
    if training is None:
        training = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))
    threads = runtime.threads(policy)
    if streaming:
        if x.dim() != 2:
            raise ValueError(f"x: a streaming step takes <float>[B, I], got shape {tuple(x.shape)}")
        backend = select_backend(spec, x.unsqueeze(0), False, layer.backend).name
        if backend != "fused" or not supports(spec, x) or layer.bidirectional:
            return Plan("step", "no compiled streaming step for this layer: step() runs the cell equations",
                        backend=backend)
        return plan(Call(spec, "step", 1, x.shape[0], x.shape[1], x.dtype, layers=layer.num_layers,
                         threads=threads), policy)
    if x.dim() == 2:
        x = x.unsqueeze(1)
    elif layer.batch_first:
        x = x.transpose(0, 1)
    T, B, I = x.shape
    masked = lengths is not None and int(torch.as_tensor(lengths).min()) < T
    backend = select_backend(spec, x, training, layer.backend).name
    if backend != "fused":
        return Plan(backend, f"backend {layer.backend!r} chose {backend!r} for this input", backend=backend)
    stack = Call(spec, "stack", T, B, I, x.dtype, training, masked, layer.num_layers, layer.num_directions, threads)
    if layer.training and layer.dropout > 0 and layer.num_layers > 1 and not training:
        return layer_by_layer(stack, policy, "dropout between layers in training mode")
    return plan(stack, policy)
