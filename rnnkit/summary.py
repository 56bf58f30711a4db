"""What a training run will do, said before its first step: data, model, where and how it runs.

A task describes its data (it alone knows what an example is); the Trainer adds what it knows of
the model and the machine, prints the summary on the progress output and writes it as the first
record of ``metrics.jsonl`` (``"type": "summary"``)::

    data = {"task": "classifier", "unit": "texts", "splits": {"train": 900, "valid": 100},
            "vocab_size": 5231, "classes": ["neg", "pos"], "batches_per_epoch": 15}
    summary = build_summary(model, {**data, "batch_size": 64}, device=torch.device("cpu"))
    print(format_summary(summary))

The fields of a summary: ``task``, ``unit`` (what the split sizes count: texts, tokens, questions,
windows), ``splits`` ({split: size}), ``vocab_size`` and ``classes`` when the task has them,
``batch_size``, any other data facts the task gives (``answers``, ``series`` ...), then
``parameters`` and ``trainable_parameters``, ``cells`` (one per recurrent layer: cell, hidden
size, layers, direction, e.g. ``"LSTM 128 x2 bidirectional"``), ``backends`` (the kernel each recurrent layer's training call runs on, as
``rnnkit.kernels.select_backend`` picks it for this device and dtype), ``threads``
(``torch.get_num_threads()``), ``device`` and ``batches_per_epoch``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["build_summary", "format_summary", "describe_model"]

_CLASSES_SHOWN = 10  # class names printed in full up to this many; the record always has them all


def _cell_name(layer: nn.Module) -> str:
    spec = layer.spec
    name = {"RNN_TANH": "RNN (tanh)", "RNN_RELU": "RNN (relu)", "MINGRU": "minGRU",
            "MINLSTM": "minLSTM"}.get(spec.mode, spec.mode)
    if spec.layer_norm:
        name = "layer-norm " + name
    extras = [f"x{layer.num_layers}"] if layer.num_layers > 1 else []
    if layer.bidirectional:
        extras.append("bidirectional")
    if spec.proj_size:
        extras.append(f"projection {spec.proj_size}")
    return " ".join([f"{name} {layer.hidden_size}", *extras])


def _backend(layer: nn.Module, device: torch.device, batch: int) -> str:
    """The backend a training call of ``batch`` sequences runs on (a probe input; nothing is run);
    for minGRU and minLSTM the scan that runs their recurrence."""
    from .kernels import select_backend
    from .layers.minimal import MinimalRecurrent
    dtype = next(layer.parameters()).dtype
    x = torch.empty(2, max(1, batch), layer.input_size, device=device, dtype=dtype)
    if isinstance(layer, MinimalRecurrent):
        return f"{layer.scan_method(x)} scan"
    try:
        return select_backend(layer.spec, x, True, layer.backend).name
    except (ValueError, RuntimeError) as error:  # a forced backend that cannot run this call
        return f"{layer.backend} (cannot run here: {error})"


def describe_model(model: nn.Module, device: torch.device | str = "cpu", batch: int = 1) -> dict[str, Any]:
    """Parameter counts, the recurrent layers' cells (of one member, for an ensemble) and the backend
    each one trains on."""
    from .layers.minimal import MinimalRecurrent
    from .layers.recurrent import RecurrentBase
    from .model import Ensemble
    device = torch.device(device)
    params = list(model.parameters())
    networks = list(model.members) if isinstance(model, Ensemble) else [model]
    layers = [m for m in networks[0].modules() if isinstance(m, (RecurrentBase, MinimalRecurrent))]
    return {"parameters": sum(p.numel() for p in params),
            "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "cells": [_cell_name(m) for m in layers], "networks": len(networks),
            "backends": sorted({_backend(m, device, batch) for m in layers})}


def build_summary(model: nn.Module, data: dict[str, Any] | None = None, *,
                  device: torch.device | str = "cpu") -> dict[str, Any]:
    """The summary record (module docstring): the task's ``data`` facts, then the model's and the
    machine's. ``data["batch_size"]`` (sequences per training call) picks the backend as training will."""
    data = dict(data or {})
    if not isinstance(data.get("splits", {}), dict):
        raise TypeError(f"summary: splits: expected a dict of split name -> size, got {data['splits']!r}")
    facts = {k: v for k, v in data.items() if k != "batches_per_epoch"}
    return {**facts, **describe_model(model, device, int(data.get("batch_size") or 1)),
            "threads": torch.get_num_threads(), "device": str(device),
            "batches_per_epoch": data.get("batches_per_epoch")}


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines for the progress output."""
    rows = []
    splits = summary.get("splits") or {}
    if splits:
        unit = summary.get("unit", "examples")
        rows.append(("data", f"{', '.join(f'{k} {_count(v)}' for k, v in splits.items())} {unit}"))
    known = {"task", "unit", "splits", "parameters", "trainable_parameters", "cells", "backends", "threads",
             "device", "batches_per_epoch", "classes", "networks"}
    if "classes" in summary:
        names = list(summary["classes"])
        shown = ", ".join(map(str, names[:_CLASSES_SHOWN])) + (", ..." if len(names) > _CLASSES_SHOWN else "")
        rows.append(("classes", f"{len(names)}: {shown}"))
    rows += [(key.replace("_", " "), _count(value)) for key, value in summary.items() if key not in known]
    trainable = summary.get("trainable_parameters")
    frozen = "" if trainable == summary.get("parameters") else f" ({_count(trainable)} trainable)"
    cells = ", ".join(summary.get("cells") or []) or "no recurrent layer"
    networks = summary.get("networks", 1)
    rows.append(("model", f"{_count(summary.get('parameters'))} parameters{frozen}; "
                          + (f"{networks} networks of {cells}" if networks > 1 else cells)))
    rows.append(("runs on", f"{summary.get('device')}, {summary.get('threads')} threads, backend "
                            f"{', '.join(summary.get('backends') or []) or '-'}"))
    rows.append(("batches", f"{_count(summary.get('batches_per_epoch') or '?')} per epoch"))
    width = max(len(label) for label, _ in rows)
    return "\n".join([f"training {summary.get('task') or 'a model'}:"]
                     + [f"  {label:<{width}}  {text}" for label, text in rows])
