"""Gradient diagnostics for recurrent networks: vanishing and exploding gradients.

- ``hidden_gradient_norms``: ‖∂L/∂h_t‖ at every time step, per layer and direction;
  ``vanishing_ratio``: ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ from those norms.
- ``spectral_radius`` of each recurrent matrix W_hh (per gate block), ``matrix_spectral_radius``,
  and ``scale_spectral_radius_`` to set an RNN's W_hh to a chosen radius.
- ``parameter_gradient_norms``: global and per-parameter gradient norms after ``backward()``.

∂L/∂h_t here is the total derivative of the loss with respect to the hidden state h_t: every path
from h_t to the loss counts, through the output at t, the layers above, and all later steps of
the recurrence (what backpropagation through time carries back to step t). The gradient of the
layer's output tensor alone (``register_layer_hook`` + ``retain_grad``) holds only the direct part:
with a loss on the last step it is zero everywhere but at T. So the diagnosed layers run the
reference kernel (``rnnkit.kernels.reference``, the cell equations the fast kernels are tested
against) with a zero "probe" added to each new h_t; ∂L/∂probe_t is the total ∂L/∂h_t.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .cells import CellSpec, State
from .kernels import DirectionWeights
from .layers.recurrent import RecurrentBase

GATE_NAMES = {"RNN_TANH": ("h",), "RNN_RELU": ("h",), "LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n")}
"""Names of the gate blocks stacked in W_hh, in torch.nn's order, per ``CellSpec.mode``."""


@dataclasses.dataclass(frozen=True)
class _ProbedSpec(CellSpec):
    """A CellSpec whose step adds a zero probe (requires_grad) to each new h_t and keeps it.

    ``probes`` gets one list per ``step_fn()`` call (one per direction run), in the order the
    steps run: forward in time, or backward for the reverse direction.
    """

    probes: list[list[Tensor]] = dataclasses.field(default_factory=list, compare=False, repr=False)

    def step_fn(self) -> Callable[..., State]:
        step = super().step_fn()
        run: list[Tensor] = []
        self.probes.append(run)

        def probed(gi: Tensor, state: State, *weights: Any) -> State:
            new = step(gi, state, *weights)
            probe = torch.zeros_like(new[0], requires_grad=True)
            run.append(probe)
            return (new[0] + probe, *new[1:])

        return probed


class _Recorder:
    """Collects the probes of one recurrent module: per layer and forward call, per direction,
    the T probe leaves <float>[B, P] in time order."""

    def __init__(self, module: RecurrentBase) -> None:
        self.module = module
        self.spec = _ProbedSpec(**{f.name: getattr(module.spec, f.name) for f in dataclasses.fields(CellSpec)})
        self.layers: list[list[list[list[Tensor]]]] = [[] for _ in range(module.num_layers)]

    def __call__(self, layer: int, output: Tensor) -> None:
        runs, directions = self.spec.probes, self.module.num_directions
        if len(runs) != directions or any(len(r) != output.shape[0] for r in runs):
            raise RuntimeError(f"hidden_gradient_norms: expected {directions} probed run(s) of "
                               f"{output.shape[0]} steps for layer {layer}, got "
                               f"{[len(r) for r in runs]}; was the layer's step() called?")
        self.layers[layer].append([r if d == 0 else r[::-1] for d, r in enumerate(runs)])  # time order
        runs.clear()

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Route the module through the probed reference kernel for the duration of the block."""
        module, saved = self.module, (self.module.spec, self.module.backend)
        handle = module.register_layer_hook(self)
        module.spec, module.backend = self.spec, "reference"
        try:
            yield
        finally:
            module.spec, module.backend = saved
            handle.remove()

    def norms(self) -> Tensor:
        """<float>[L*D, T]: per-example L2 norm over features, averaged over the batch."""
        if not self.layers[0]:
            raise RuntimeError("hidden_gradient_norms: a recurrent module was not run by forward()")
        rows = []
        for calls in self.layers:
            for direction in range(self.module.num_directions):
                grads = [torch.zeros_like(p) if p.grad is None else p.grad
                         for call in calls for p in call[direction]]
                rows.append(torch.stack(grads).norm(dim=2).mean(dim=1))  # <float>[T]
        return torch.stack(rows)


def hidden_gradient_norms(layer_or_model: nn.Module, inputs: Tensor | tuple, loss_fn: Callable[[Any], Tensor]
                          ) -> Tensor | dict[str, Tensor]:
    """‖∂L/∂h_t‖ for every time step t of every recurrent layer (total derivative; module docstring).

    layer_or_model: an rnnkit RNN/LSTM/GRU, or any nn.Module containing them (found by ``modules()``).
    inputs: the argument of its forward, or a tuple of arguments.
    loss_fn: maps what the module returns to a scalar loss L (a layer returns ``(output, h_n)``).

    Each norm is the L2 norm over the features of one example's ∂L/∂h_t, averaged over the batch
    (with a batch-mean loss each example's gradient carries a 1/B factor; ratios are unaffected).
    Steps past a sequence's end (``lengths=``) have norm 0. A module run several times in one
    forward (e.g. one chunk per call) has its calls concatenated along time. Only ``forward()``
    is probed: a model that mixes in ``step()`` calls gets a RuntimeError. Parameter gradients
    accumulate as with ``backward()``. In float32 norms below ~1e-38 underflow to 0 (at T=200
    every untrained cell gets there); run the model in float64 to measure deep vanishing.

    returns <float>[L*D, T] for a recurrent layer (row ``l * D + d``: layer l, direction d, as in
    h_n; ``[layers, T]`` when unidirectional), or for a model a dict from each recurrent
    module's name in ``named_modules()`` to that tensor.
    """
    if not isinstance(layer_or_model, nn.Module):
        raise TypeError(f"layer_or_model: expected an nn.Module, got {type(layer_or_model).__name__}")
    found = {name: m for name, m in layer_or_model.named_modules() if isinstance(m, RecurrentBase)}
    if not found:
        raise ValueError(f"layer_or_model: expected an rnnkit RNN/LSTM/GRU or a module containing one, "
                         f"got {type(layer_or_model).__name__} without any")
    recorders = {name: _Recorder(m) for name, m in found.items()}
    with contextlib.ExitStack() as stack, torch.enable_grad():
        for recorder in recorders.values():
            stack.enter_context(recorder.attached())
        outputs = layer_or_model(*inputs) if isinstance(inputs, tuple) else layer_or_model(inputs)
    loss = loss_fn(outputs)
    if not (isinstance(loss, Tensor) and loss.numel() == 1):
        raise ValueError(f"loss_fn: expected a scalar tensor, got "
                         f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
    loss.backward()
    norms = {name: recorder.norms() for name, recorder in recorders.items()}
    return norms[""] if isinstance(layer_or_model, RecurrentBase) else norms


def vanishing_ratio(norms: Tensor) -> Tensor:
    """‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ along the last (time) dim of ``norms`` <float>[..., T] → <float>[...].

    Far below 1: the gradient vanishes going back in time; far above: it explodes. 0/0 gives nan.
    """
    if not isinstance(norms, Tensor) or norms.dim() < 1 or norms.shape[-1] < 1:
        raise ValueError(f"norms: expected a tensor [..., T] with T >= 1, got "
                         f"{tuple(norms.shape) if isinstance(norms, Tensor) else type(norms).__name__}")
    return norms[..., 0] / norms[..., -1]


def matrix_spectral_radius(matrix: Tensor) -> float:
    """max |λ| over the eigenvalues λ of a square matrix <float>[n, n]."""
    if not isinstance(matrix, Tensor) or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix: expected a square 2-D tensor, got "
                         f"{tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__}")
    return float(torch.linalg.eigvals(matrix.detach().double()).abs().max())


def _gate_blocks(layer: RecurrentBase, weights: DirectionWeights) -> list[Tensor]:
    """The square recurrent matrices of one direction: W_hh's G blocks <float>[H, H]
    (with an LSTM projection, W_h{gate} @ W_hr, which maps h_{t-1} to the gate through c)."""
    blocks = weights.w_hh.detach().chunk(layer.spec.gates, dim=0)
    if weights.w_hr is not None:
        blocks = tuple(b @ weights.w_hr.detach() for b in blocks)
    return list(blocks)


def spectral_radius(layer: RecurrentBase) -> dict[str, dict[str, float]]:
    """Spectral radius of each recurrent weight matrix of an rnnkit RNN/LSTM/GRU.

    W_hh stacks G gate blocks (<float>[G*H, H]; RNN [h], LSTM [i, f, g, o], GRU [r, z, n]) and
    is square only for the RNN, so the radius max |λ| is given per block, under the gate's name.
    ``"spectral_norm"`` is the largest singular value of the whole stacked W_hh (an upper bound
    on every block's radius). With an LSTM projection a block is W_h{gate} @ W_hr <float>[H, H].

    returns {parameter name (``weight_hh_l0``, ``weight_hh_l0_reverse``, …): {gate: radius, …,
    "spectral_norm": σ_max}}
    """
    if not isinstance(layer, RecurrentBase):
        raise TypeError(f"layer: expected an rnnkit RNN, LSTM or GRU, got {type(layer).__name__}")
    result = {}
    for index in range(layer.num_layers):
        for direction in range(layer.num_directions):
            weights = layer.direction_weights(index, direction)
            name = "weight_hh_l{}{}".format(index, "_reverse" if direction else "")
            radii = {gate: matrix_spectral_radius(block)
                     for gate, block in zip(GATE_NAMES[layer.spec.mode], _gate_blocks(layer, weights))}
            radii["spectral_norm"] = float(torch.linalg.matrix_norm(weights.w_hh.detach().double(), ord=2))
            result[name] = radii
    return result


def scale_spectral_radius_(layer: RecurrentBase, radius: float) -> RecurrentBase:
    """Rescale every W_hh of an rnnkit ``RNN`` in place so that its spectral radius is ``radius``.

    E.g. ``radius > 1`` on a relu RNN to demonstrate exploding gradients. Returns the layer.
    """
    if not isinstance(layer, RecurrentBase) or layer.spec.mode not in ("RNN_TANH", "RNN_RELU"):
        raise TypeError(f"layer: expected an rnnkit RNN (a single square W_hh per direction), got "
                        f"{type(layer).__name__}")
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a finite number > 0, got {radius!r}")
    with torch.no_grad():
        for index in range(layer.num_layers):
            for direction in range(layer.num_directions):
                w_hh = layer.direction_weights(index, direction).w_hh
                current = matrix_spectral_radius(w_hh)
                if current == 0:
                    raise ValueError(f"layer: W_hh of layer {index} direction {direction} has spectral "
                                     "radius 0 and cannot be rescaled")
                w_hh.mul_(radius / current)
    return layer


class GradientNorms(NamedTuple):
    """Gradient norms of a model's parameters after ``backward()``."""

    total: float
    """Global L2 norm over all gradients (what ``clip_grad_norm_`` compares to max_norm)."""
    per_parameter: dict[str, float]
    """L2 norm of each parameter's gradient, by name in ``named_parameters()``."""


def parameter_gradient_norms(model: nn.Module) -> GradientNorms:
    """Global and per-parameter gradient norms; parameters without a gradient are left out."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    per_parameter = {name: float(p.grad.detach().double().norm())
                     for name, p in model.named_parameters() if p.grad is not None}
    return GradientNorms(math.sqrt(sum(n * n for n in per_parameter.values())), per_parameter)
