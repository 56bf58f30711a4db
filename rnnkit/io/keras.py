"""Weight conversion between rnnkit (torch.nn layout) and Keras weight lists, without TensorFlow.

A Keras recurrent layer's ``get_weights()`` is ``[kernel, recurrent_kernel, bias]``:

    kernel            [I, G*H]   = W_ihᵀ with the gate blocks in Keras order
    recurrent_kernel  [H, G*H]   = W_hhᵀ
    bias              [G*H]      = b_ih + b_hh (one bias), or for GRU(reset_after=True)
                      [2, G*H]   = [b_ih; b_hh] (the recurrent bias is scaled by the reset gate)

Gate orders: LSTM Keras ``i, f, c, o`` = torch ``i, f, g, o``; GRU Keras ``z, r, h`` vs torch
``r, z, n``. A Keras ``Bidirectional`` layer's list is the forward layer's weights followed by the
backward layer's. A stacked rnnkit layer maps to one Keras layer per level: ``to_keras`` returns,
and ``from_keras`` takes, one weight list per layer.

Going from Keras, a single bias lands in ``b_ih`` and ``b_hh`` is zero: exact for every cell,
since those biases only ever appear summed (in the Cho GRU variant ``b_hn`` sits outside the reset
product, so it too is a plain sum).
"""

from __future__ import annotations

import numpy as np
import torch

from ..layers.recurrent import RecurrentBase


def _gate_order(layer: RecurrentBase) -> list[int]:
    """Permutation of gate blocks between torch and Keras order (its own inverse)."""
    return [1, 0, 2] if layer.spec.mode == "GRU" else list(range(layer.spec.gates))


def _permute_gates(a: np.ndarray, order: list[int], axis: int) -> np.ndarray:
    return np.concatenate([np.split(a, len(order), axis=axis)[g] for g in order], axis=axis)


def _check_layer(layer: RecurrentBase) -> None:
    if not isinstance(layer, RecurrentBase):
        raise TypeError(f"layer: expected an rnnkit RNN, LSTM or GRU, got {type(layer).__name__}")
    if layer.proj_size:
        raise ValueError(f"layer: Keras has no LSTM projection; got proj_size={layer.proj_size}")
    if layer.spec.layer_norm:
        raise ValueError("layer: Keras has no layer-normalised LSTM layer; got a LayerNormLSTM")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _two_biases(layer: RecurrentBase) -> bool:
    return layer.spec.mode == "GRU" and layer.reset_after


def to_keras(layer: RecurrentBase) -> list[list[np.ndarray]]:
    """One Keras weight list per layer (forward then backward weights when bidirectional)."""
    _check_layer(layer)
    order, result = _gate_order(layer), []
    for index in range(layer.num_layers):
        weights: list[np.ndarray] = []
        for direction in range(layer.num_directions):
            w = layer.direction_weights(index, direction)
            weights += [_permute_gates(_numpy(w.w_ih).T, order, 1), _permute_gates(_numpy(w.w_hh).T, order, 1)]
            if w.b_ih is not None:
                b_ih, b_hh = _permute_gates(_numpy(w.b_ih), order, 0), _permute_gates(_numpy(w.b_hh), order, 0)
                weights.append(np.stack([b_ih, b_hh]) if _two_biases(layer) else b_ih + b_hh)
        result.append(weights)
    return result


def from_keras(layer: RecurrentBase, weights: list[list[np.ndarray]]) -> RecurrentBase:
    """Load Keras weight lists (as returned by ``to_keras`` or Keras ``get_weights()``) in place."""
    _check_layer(layer)
    if len(weights) != layer.num_layers:
        raise ValueError(f"weights: expected {layer.num_layers} weight lists (one per layer), got {len(weights)}")
    order, gh = _gate_order(layer), layer.spec.gates * layer.hidden_size
    per_direction = 3 if layer.bias else 2
    with torch.no_grad():
        for index, layer_weights in enumerate(weights):
            if len(layer_weights) != per_direction * layer.num_directions:
                raise ValueError(f"weights[{index}]: expected {per_direction * layer.num_directions} arrays "
                                 f"(kernel, recurrent_kernel{', bias' if layer.bias else ''} per direction), "
                                 f"got {len(layer_weights)}")
            for direction in range(layer.num_directions):
                w = layer.direction_weights(index, direction)
                arrays = [np.asarray(a) for a in layer_weights[direction * per_direction:][:per_direction]]
                bias_shape = (2, gh) if _two_biases(layer) else (gh,)
                expected = [(w.w_ih.shape[1], gh), (layer.hidden_size, gh), bias_shape][:per_direction]
                for k, (a, shape) in enumerate(zip(arrays, expected)):
                    if a.shape != shape:
                        name = ("kernel", "recurrent_kernel", "bias")[k]
                        raise ValueError(f"weights[{index}][{direction * per_direction + k}] ({name}): "
                                         f"expected shape {shape}, got {a.shape}")
                w.w_ih.copy_(torch.from_numpy(_permute_gates(arrays[0], order, 1).T.copy()))
                w.w_hh.copy_(torch.from_numpy(_permute_gates(arrays[1], order, 1).T.copy()))
                if layer.bias:
                    bias = arrays[2] if _two_biases(layer) else np.stack([arrays[2], np.zeros_like(arrays[2])])
                    w.b_ih.copy_(torch.from_numpy(_permute_gates(bias[0], order, 0).copy()))
                    w.b_hh.copy_(torch.from_numpy(_permute_gates(bias[1], order, 0).copy()))
    return layer
