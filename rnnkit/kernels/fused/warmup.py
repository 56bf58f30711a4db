"""Compiling every loop of the fused backend into numba's on-disk cache, once after installing (``make``),
so that no first call pays for compilation (4-15 s per cell otherwise; ~0.5 s to load from the cache)."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor

import torch

from ...cells import CellSpec
from ..base import DirectionWeights
from . import minimal, runtime, streaming
from .backend import ZONE_MASK_PAR_MIN, run_layer, zoneout_mask
from .drivers import Scan, cell
from .plan import Plan
from .policies import NEVER, Policy, policy

WARM_UP_GROUPS = (
    (CellSpec("RNN_TANH", 3), CellSpec("GRU", 3), CellSpec("GRU", 3, reset_after=False)),
    (CellSpec("LSTM", 3), CellSpec("LSTM", 3, proj_size=2), CellSpec("LSTM", 3, layer_norm=True)),
    (CellSpec("MINGRU", 3), CellSpec("MINLSTM", 3)),
)
"""The cells ``warm_up`` compiles, in groups that share no compiled function (``loops.rnn``, ``loops.gru``
| ``loops.lstm``, ``loops.ln`` | ``loops.minimal``): numba keeps one index file per function, which two
processes compiling it at once could each rewrite, losing the other's entry."""


def warm_up(dtypes=(torch.float32, torch.float64), processes: int = 2) -> None:
    """Compile every loop of this backend into numba's cache. The groups of ``WARM_UP_GROUPS`` compile in
    ``processes`` processes at once (numba compiles on one thread: two processes take about half the
    time on two cores), beside zoneout's mask draw (``warm_up_masks``)."""
    if processes > 1:
        with ProcessPoolExecutor(min(processes, len(WARM_UP_GROUPS)), multiprocessing.get_context("spawn")) as pool:
            masks = pool.submit(warm_up_masks, dtypes)
            list(pool.map(warm_up_cells, WARM_UP_GROUPS, [dtypes] * len(WARM_UP_GROUPS)))
            masks.result()
    else:
        for group in WARM_UP_GROUPS:
            warm_up_cells(group, dtypes)
        warm_up_masks(dtypes)


def warm_up_masks(dtypes) -> None:
    """Zoneout's mask draw once per dtype, on one thread and split over threads."""
    for dtype in dtypes:
        zoneout_mask((1, 1, 1), 0.5, 0, dtype)
        zoneout_mask((2, 1, ZONE_MASK_PAR_MIN), 0.5, 0, dtype)


def warm_up_cells(specs, dtypes) -> None:
    """Run every path of these cells once, forward and backward, with and without a mask."""
    threads = runtime.threads(Policy())
    loops = Policy(lstm_loops_inference=True, lstm_loops_training=True, onednn_lstm_min_macs=NEVER,
                   onednn_lstm_train_min_macs=NEVER, step_loop_min_steps=1, small_train_max_macs=-1,
                   stream_sequence_max_macs=-1)
    drivers = [replace(loops, step_loop_min_weight=NEVER, par_min_rows=NEVER)]
    if threads > 1:  # split across threads
        drivers.append(replace(loops, step_loop_min_weight=NEVER, par_min_rows=1, par_row_bytes=NEVER))
    for dtype in dtypes:
        for spec in specs:
            if isinstance(cell(spec), Scan):
                warm_up_scan(spec, dtype)
                continue
            g, h, p = spec.gates * spec.hidden_size, spec.hidden_size, spec.output_size

            def param(*shape):
                return torch.randn(*shape, dtype=dtype, requires_grad=True)

            w = DirectionWeights(param(g, 2), param(g, p), param(g), param(g),
                                 param(p, h) if spec.proj_size else None, param(10 * h) if spec.layer_norm else None)
            x = torch.randn(2, 4, 2, dtype=dtype)
            state = (torch.zeros(4, p, dtype=dtype), torch.zeros(4, h, dtype=dtype))[:len(spec.state_sizes)]
            step_loop = replace(loops, step_loop_min_weight=0, par_min_rows=NEVER)
            paths = drivers + ([step_loop] if dtype == torch.float32 else [])
            for chosen in paths:
                with policy(chosen):
                    for mask in (None, torch.ones(2, 4, 1, dtype=torch.bool)):
                        run_layer(spec, x, [w], [state], mask)[0].sum().backward()
                        with torch.no_grad():
                            run_layer(spec, x, [w], [state], mask)
            with policy(replace(loops, small_train_max_macs=NEVER)):
                run_layer(spec, x, [w], [state], None)[0].sum().backward()  # the small-training path
            if streaming.supports(spec, x[0]):  # one kernel for every depth
                layers = [DirectionWeights(*(None if t is None else t.detach() for t in w))]
                for chunks in (1, 2) if threads > 1 else (1,):
                    streaming.stream_step(spec, x[0], layers, None, p=Plan("stream", "warm-up", chunks=chunks))
                with policy(Policy(stream_units_min_weight=0, stream_units_min_layer_weight=0)):  # units split
                    streaming.stream_step(spec, x[0, :1], layers, None)


def warm_up_scan(spec: CellSpec, dtype: torch.dtype) -> None:
    """A minimal cell's loops once: forward and backward (with padding: its types are the same without)
    and the streaming step."""
    x = torch.randn(4, 2, 2, dtype=dtype, requires_grad=True)  # batch first
    w = torch.randn(spec.gates * spec.hidden_size, 2, dtype=dtype, requires_grad=True)
    b = torch.zeros(w.shape[0], dtype=dtype, requires_grad=True)
    h0 = torch.zeros(4, spec.hidden_size, dtype=dtype)
    h, final = minimal.fused_layer(x, w, b, h0, torch.ones(4, 2, dtype=torch.bool), spec, False)
    (h.sum() + final.sum()).backward()
    gi = w.new_empty(w.shape[0]).detach().numpy()
    runtime.loops().minimal.stream_layer(cell(spec).code, x[:, 0].detach().contiguous().numpy(), w.detach().numpy(),
                                         b.detach().numpy(), h0.numpy(), gi)
