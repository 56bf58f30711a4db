"""The fused CPU backend: every cell, forward and backward, float32 and float64, on compiled loops.

How a call runs is decided by one pure function, ``plan.plan(call, policy)``, from the call's
description and a ``Policy`` (host-derived defaults, plus the decisions ``rnnkit tune`` measured on
this CPU model): ``explain(layer, x)`` shows it. The modules:

- ``policies``: the host's properties (``Host``) and every tuned quantity (``Policy``); ``policy(p)``
  runs a block under another policy.
- ``plan``: ``Call`` → ``Plan`` (path, threads, reason); ``record()`` collects the plans that ran.
- ``drivers``: the table of cells (their compiled loops and Python drivers); ``layer``: a plain
  cell's layer as an autograd Function, and oneDNN's LSTM layer; ``small``: small training calls;
  ``ln``: the layer-normalised LSTM; ``minimal``: the minimal cells (MinGRU, MinLSTM) on their scan
  loops.
- ``gemm``: the whole-sequence products, weight gradients and oneDNN's per-step GEMM.
- ``streaming``: whole stacks, one step (or a small call) in one compiled call; ``Streamer``.
- ``backend``: the entry points ``rnnkit.kernels`` calls (and zoneout's mask draw). ``warmup``:
  compiling every loop into numba's cache. ``tune``: ``rnnkit tune``.
- ``loops``: the compiled loops (numba), one module per cell family; ``runtime``: those loops, loaded
  on first use, and the threads they may run on.
"""

from __future__ import annotations

from .. import Backend, register_backend
from . import runtime
from .backend import run_layer, stream_step_if_planned, streamer_if_supported, supports, zoneout_mask
from .drivers import takes_noise
from .explain import explain
from .plan import Call, Plan, plan, record
from .policies import Host, Policy, current, default_policy, policy
from .streaming import Streamer, stream_step
from .streaming import supports as stream_supports
from .warmup import WARM_UP_GROUPS, warm_up

__all__ = ["Call", "Host", "Plan", "Policy", "Streamer", "WARM_UP_GROUPS", "current", "default_policy", "explain",
           "plan", "policy", "record", "run_layer", "runtime", "stream_step", "stream_supports", "supports", "warm_up",
           "zoneout_mask"]

register_backend(Backend("fused", run_layer, supports, stream_step_if_planned, streamer_if_supported,
                         noise=takes_noise))
