"""The network's side of forecasting: the three input layouts, each window's reference level, the
output heads (point, Gaussian, quantile) with their losses, and forecasting (recursive included)."""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ...model import Ensemble, SequenceModel
from .config import SEASONAL_REFERENCES, ForecastExperiment
from .data import _Batch


def _reference(y_in: np.ndarray, how: str) -> np.ndarray:
    """<float32>[W, 1, C]: each window's level that inputs and targets are taken relative to."""
    if how == "none":
        return np.zeros((y_in.shape[0], 1, y_in.shape[2]), np.float32)
    if how == "mean":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmean(y_in, axis=1, keepdims=True)
    else:  # the last observed value of each column
        seen = ~np.isnan(y_in)
        last = y_in.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)          # [W, C]
        ref = np.take_along_axis(y_in, last[:, None, :], axis=1)
    return np.nan_to_num(ref).astype(np.float32)


def _seasonal_reference(y_in: np.ndarray, horizon: int, season: int, last: np.ndarray,
                        trend: bool = False) -> np.ndarray:
    """<float32>[W, horizon, C]: the seasonal-naive forecast of each window, y at the same point of
    the last season (``last`` where that value is missing); with ``trend``, moved by the change over
    the last season once per season ahead (the forecast of the seasonal random walk, ARIMA(0,1,0)(0,1,0)s)."""
    lookback, steps = y_in.shape[1], np.arange(horizon)
    ref = y_in[:, lookback - season + steps % season]
    if trend:
        change = np.nan_to_num(y_in[:, -1:] - y_in[:, -1 - season:-season])        # [W, 1, C]
        ref = ref + change * (steps // season + 1)[None, :, None]
    return np.where(np.isnan(ref), last, ref).astype(np.float32)


def _sizes(columns: dict[str, Any]) -> dict[str, int]:
    """The network's input widths from the column roles: targets, past and future covariates (the
    one-hot static categories count as future covariates: known at every step)."""
    static = sum(len(values) for values in columns.get("categories", {}).values())
    past = sum(len(columns.get("categorical", {}).get(name, [name])) for name in columns["past"])
    return {"target": len(columns["target"]), "past": past,
            "future": len(columns["future_all"]) + static}


class _Network:
    """Builds the inputs of a layout, reads its outputs and computes the loss (module docstring)."""

    def __init__(self, experiment: ForecastExperiment, sizes: dict[str, int]) -> None:
        self.fc, self.data, self.season = experiment.forecast, experiment.data, experiment.evaluate.season
        self.c, self.pc, self.fcov = sizes["target"], sizes["past"], sizes["future"]
        self.k = {"point": 1, "gaussian": 2, "quantile": len(self.fc.quantiles)}[self.fc.output]
        # a hybrid reads its statistical forecast (relative to the last value) at each horizon step
        self.stat = self.c if self.fc.normalize.startswith("auto_") else 0
        if self.fc.strategy == "recursive":
            self.layout = "recursive"
        else:
            self.layout = "steps" if self.fcov or self.stat else "last"
        # forecast.combine_weight = "validation": the network's weight per step, once fitted (``fit_weights``)
        self.weights: np.ndarray | None = None

    def network_weight(self, horizon: int) -> float | np.ndarray:
        """The network's weight in forecast.combine: the configured number, or the fitted weights of the
        first ``horizon`` steps as <float32>[1, horizon, 1] (the last one beyond the fitted steps); 1 (the
        network alone) while they are being fitted."""
        if self.fc.combine_weight != "validation":
            return self.fc.combine_weight
        if self.weights is None:
            return 1.0
        steps = np.minimum(np.arange(horizon), len(self.weights) - 1)
        return self.weights[steps].astype(np.float32)[None, :, None]

    def model_fields(self) -> dict[str, Any]:
        """The ModelConfig fields that the data decides."""
        h, c, k = self.data.horizon, self.c, self.k
        if self.layout == "last":
            return {"input_size": c + self.pc, "output_size": h * c * k, "output_per": "sequence",
                    "pooling": "last", "vocab_size": 0, "output_activation": "linear"}
        return {"input_size": c + self.pc + self.fcov + self.stat + 1, "output_size": c * k, "output_per": "step",
                "vocab_size": 0, "output_activation": "linear"}

    # ---------------------------------------------------------------------------- inputs
    def inputs(self, b: _Batch, horizon: int) -> tuple[Tensor, np.ndarray]:
        """(x, reference) for ``horizon`` steps; for "recursive" x holds the lookback steps only
        unless ``b.y_out`` is given (teacher forcing). The reference is <float32>[W, 1, C], or
        [W, horizon, C] for ``normalize = "seasonal"`` or a statistical model (inputs relative to the
        last value, targets to the seasonal-naive or the statistical forecast, the last value where
        that failed)."""
        how = self.fc.normalize
        ref = last = _reference(b.y_in, how if how in ("none", "last", "mean") else "last")
        y_in = np.nan_to_num(b.y_in - ref)
        if how in SEASONAL_REFERENCES:
            ref = _seasonal_reference(b.y_in, horizon, self.season, ref, trend=how == "seasonal_trend")
        elif self.stat:
            ref = np.where(np.isnan(b.statistical[:, :horizon]), ref, b.statistical[:, :horizon]).astype(np.float32)
        w, lookback = y_in.shape[:2]
        if self.layout == "last":
            return torch.from_numpy(np.concatenate([y_in, b.past], axis=2)), ref
        if self.layout == "steps":
            hist = np.concatenate([y_in, b.past, b.fut_in, np.zeros((w, lookback, self.stat), np.float32),
                                   np.ones((w, lookback, 1), np.float32)], axis=2)
            stat = (ref - last) if self.stat else np.zeros((w, horizon, 0), np.float32)
            ahead = np.concatenate([np.zeros((w, horizon, self.c + self.pc), np.float32), b.fut_out[:, :horizon],
                                    stat, np.zeros((w, horizon, 1), np.float32)], axis=2)
            return torch.from_numpy(np.concatenate([hist, ahead], axis=1)), ref
        # recursive: step t reads y_t, past_t (while observed), future covariates of step t+1, flag
        fut_next = np.concatenate([b.fut_in[:, 1:], b.fut_out[:, :1]], axis=1)
        hist = np.concatenate([y_in, b.past, fut_next, np.ones((w, lookback, 1), np.float32)], axis=2)
        if b.y_out is None:
            return torch.from_numpy(hist), ref
        y_ahead = np.nan_to_num(b.y_out[:, :horizon - 1] - ref)
        ahead = self.step_inputs(y_ahead, b.fut_out[:, 1:horizon])
        return torch.from_numpy(np.concatenate([hist, ahead], axis=1)), ref

    def step_inputs(self, y: np.ndarray, fut_next: np.ndarray) -> np.ndarray:
        """Recursive inputs past the origin: value fed back, no past covariates, flag 0."""
        w, t = y.shape[:2]
        return np.concatenate([y, np.zeros((w, t, self.pc), np.float32), fut_next,
                               np.zeros((w, t, 1), np.float32)], axis=2).astype(np.float32)

    def targets(self, b: _Batch, ref: np.ndarray) -> Tensor:
        """Training targets, relative to the reference: [W, H, C], or [W, L+H−1, C] for recursive."""
        if self.layout == "recursive":
            seq = np.concatenate([b.y_in[:, 1:], b.y_out], axis=1)
            return torch.from_numpy(seq - ref)
        return torch.from_numpy(b.y_out - ref)

    def split_outputs(self, logits: Tensor, horizon: int) -> Tensor:
        """Network output → <float>[W, steps, C, K] (steps: horizon, or every step for recursive); an
        ensemble's (forecast.ensemble > 1: its members' outputs stacked) → [members, W, steps, C, K]."""
        if self.fc.ensemble > 1:
            out = self._split(logits.flatten(0, 1), horizon)
            return out.reshape(len(logits), -1, *out.shape[1:])
        return self._split(logits, horizon)

    def _split(self, logits: Tensor, horizon: int) -> Tensor:
        w = logits.shape[0]
        if self.layout == "last":
            return logits.view(w, self.data.horizon, self.c, self.k)[:, :horizon]
        out = logits.view(w, logits.shape[1], self.c, self.k)
        return out if self.layout == "recursive" else out[:, -horizon:]

    # ------------------------------------------------------------------------------ loss
    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        """Mean loss over the observed targets (and an ensemble's members): MSE, Gaussian NLL or pinball."""
        target = target.expand(out.shape[:-1])
        mask = ~torch.isnan(target)
        t = torch.nan_to_num(target)
        if self.fc.output == "point":
            elem = (out[..., 0] - t) ** 2
        elif self.fc.output == "gaussian":
            mu, sigma = out[..., 0], self.spread(out[..., 1])
            elem = torch.log(sigma) + 0.5 * ((t - mu) / sigma) ** 2
        else:
            q = torch.tensor(self.fc.quantiles, dtype=out.dtype, device=out.device)
            err = t.unsqueeze(-1) - out
            elem = torch.maximum(q * err, (q - 1) * err).mean(-1)
        return (elem * mask).sum() / mask.sum().clamp(min=1)

    @staticmethod
    def spread(raw: Tensor) -> Tensor:
        return F.softplus(raw) + 1e-3

    # ------------------------------------------------------------------------- inference
    @torch.no_grad()
    def forecast(self, model: SequenceModel | Ensemble, b: _Batch, horizon: int,
                 level: float) -> dict[str, np.ndarray]:
        """Forecasts in model space plus the reference: {"point", "lower", "upper", "quantiles"}, each
        <float32>[W, horizon, C] ("quantiles": [W, horizon, C, Q]); intervals only when probabilistic;
        a hybrid's statistical forecast alone as "statistical". An ensemble's members are combined:
        the mean point, the Gaussian mixture's interval, the mean quantiles."""
        model.eval()
        device = next(model.parameters()).device
        x, ref = self.inputs(b, horizon)
        ensemble = isinstance(model, Ensemble)
        if self.layout != "recursive":
            logits, _ = model(x.to(device))
            params = self.split_outputs(logits, horizon).cpu()
            out = self._read(params if ensemble else params[None], level)
        else:
            out = self._recursive(list(model.members) if ensemble else [model], x.to(device), b, horizon, level,
                                  device)
        out = {name: (v + (ref[..., None] if v.ndim == 4 else ref)).astype(np.float32) for name, v in out.items()}
        if b.statistical is None:
            return out
        if self.stat:  # the network corrected the statistical forecast, its reference
            out["statistical"] = np.broadcast_to(ref, out["point"].shape).astype(np.float32)
        else:
            stat = b.statistical[:, :horizon]
            out["statistical"] = np.where(np.isnan(stat), out["point"], stat)
        return self.combined(out, horizon) if self.fc.combine != "none" else out

    def combined(self, out: dict[str, np.ndarray], horizon: int) -> dict[str, np.ndarray]:
        """forecast.combine: the weighted mean of the network's point and out["statistical"]; the interval
        and quantiles move with the point."""
        shift = (1 - self.network_weight(horizon)) * (out["statistical"] - out["point"])
        return {name: v + (shift[..., None] if v.ndim == 4 else shift) if name != "statistical" else v
                for name, v in out.items()}

    def _read(self, params: Tensor, level: float) -> dict[str, np.ndarray]:
        """The members' <float>[M, W, steps, C, K] outputs → forecasts (``forecast``'s keys)."""
        if self.fc.output == "point":
            return {"point": params[..., 0].mean(0).numpy()}
        if self.fc.output == "gaussian":
            mu, sigma = params[..., 0], self.spread(params[..., 1])
            lower, upper = gaussian_interval(mu, sigma, level)
            return {"point": mu.mean(0).numpy(), "lower": lower.numpy(), "upper": upper.numpy()}
        qs = params.sort(dim=-1).values.mean(0).numpy()
        return {"point": qs[..., self.fc.quantiles.index(0.5)], "lower": qs[..., 0], "upper": qs[..., -1],
                "quantiles": qs}

    def _recursive(self, members: list[SequenceModel], x: Tensor, b: _Batch, horizon: int, level: float,
                   device: torch.device) -> dict[str, np.ndarray]:
        """Feed the mean back for the point forecast (the members' mean); sample paths for the Gaussian
        interval (pooled over the members: their mixture's)."""
        fut_next = torch.from_numpy(np.ascontiguousarray(b.fut_out[:, 1:horizon])).to(device)

        def run(model: SequenceModel, inputs: Tensor, sample: torch.Generator | None, reps: int) -> Tensor:
            logits, state = model(inputs.repeat(reps, 1, 1) if reps > 1 else inputs)
            steps = []
            for k in range(horizon):
                params = logits[:, -1].view(logits.shape[0], self.c, self.k)
                value = params[..., 0]
                if sample is not None:  # the same draws for every origin: a backtest agrees with predict
                    noise = torch.randn((reps, 1, self.c), generator=sample, dtype=value.dtype)
                    noise = noise.expand(reps, value.shape[0] // reps, self.c).reshape(value.shape).to(device)
                    value = value + self.spread(params[..., 1]) * noise
                steps.append(value)
                if k == horizon - 1:
                    break
                f = fut_next[:, k:k + 1].repeat(reps, 1, 1) if reps > 1 else fut_next[:, k:k + 1]
                step = torch.cat([value[:, None], value.new_zeros(value.shape[0], 1, self.pc), f,
                                  value.new_zeros(value.shape[0], 1, 1)], dim=2)
                logits, state = model(step, state=state)
            return torch.stack(steps, dim=1).cpu()  # [reps*W, horizon, C]

        out = {"point": torch.stack([run(model, x, None, 1) for model in members]).mean(0).numpy()}
        if self.fc.output == "gaussian":
            w, reps = x.shape[0], self.fc.samples
            paths = torch.cat([run(model, x, torch.Generator().manual_seed(self.fc.seed), reps)
                               .view(reps, w, horizon, self.c) for model in members])
            lo, hi = torch.quantile(paths, torch.tensor([0.5 - level / 2, 0.5 + level / 2]), dim=0)
            # step 1: the exact Gaussian (mixture)
            first = torch.stack([model(x)[0][:, -1].view(w, self.c, self.k).cpu() for model in members])
            lo[:, 0], hi[:, 0] = gaussian_interval(first[..., 0], self.spread(first[..., 1]), level)
            out["lower"], out["upper"] = lo.numpy(), hi.numpy()
        return out


class MemberBest:
    """Each member of an ensemble keeps its own best epoch, as if trained alone with early stopping.

    After each validation pass, ``update(model, losses)`` takes the members' validation losses, keeps a
    CPU copy of every member whose loss is its lowest so far and returns the epoch's metrics:
    ``val_loss``, the mean of the members' lowest losses so far (what the Trainer monitors: it improves
    while any member improves, so an early stop waits for the last one), and ``val_loss_members``, the
    mean of this epoch's. ``restore(model)`` puts each member's best weights back."""

    def __init__(self, size: int) -> None:
        self.best = [math.inf] * size
        self.states: list[dict[str, Tensor] | None] = [None] * size

    def update(self, model: Ensemble, losses: list[float]) -> dict[str, float]:
        for k, loss in enumerate(losses):
            if loss < self.best[k]:
                self.best[k] = loss
                self.states[k] = {name: t.detach().cpu().clone() for name, t in model.members[k].state_dict().items()}
        return {"val_loss": float(np.mean(self.best)), "val_loss_members": float(np.mean(losses))}

    def restore(self, model: Ensemble) -> None:
        for member, state in zip(model.members, self.states):
            if state is not None:
                member.load_state_dict(state)


def gaussian_interval(mu: Tensor, sigma: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """The central ``level`` interval of the equal-weight mixture of the Gaussians N(mu[i], sigma[i]),
    members on the first dimension: exact for one member, else by bisection on the mixture's CDF.

    mu, sigma: <float>[M, ...]; returns (lower, upper), each <float>[...].

    >>> lo, hi = gaussian_interval(torch.tensor([[-1.0], [1.0]]), torch.tensor([[1e-3], [1e-3]]), 0.5)
    >>> [round(v, 2) for v in (lo.item(), hi.item())]
    [-1.0, 1.0]
    """
    if len(mu) == 1:
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return mu[0] - z * sigma[0], mu[0] + z * sigma[0]

    def quantile(p: float) -> Tensor:
        a, b = (mu - 8 * sigma).amin(0), (mu + 8 * sigma).amax(0)
        for _ in range(48):
            mid = (a + b) / 2
            below = torch.special.ndtr((mid - mu) / sigma).mean(0) < p
            a, b = torch.where(below, mid, a), torch.where(below, b, mid)
        return (a + b) / 2

    return quantile(0.5 - level / 2), quantile(0.5 + level / 2)


def fit_weights(network: np.ndarray, statistical: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """<float64>[H]: the network's weight per step in the combination w·network + (1 − w)·statistical that
    weighs each forecast by its inverse mean squared error over the windows and columns (Bates & Granger
    1969): w = MSE_stat / (MSE_net + MSE_stat). All three <float>[W, H, C]; NaN actuals are skipped; a step
    with no actual (or two perfect forecasts) gets 0.5.

    >>> fit_weights(np.array([[[1.0]]]), np.array([[[2.0]]]), np.array([[[0.0]]]))
    array([0.8])
    """
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a step without any actual
        mse_net = np.nanmean((network - actual) ** 2, axis=(0, 2))
        mse_stat = np.nanmean((statistical - actual) ** 2, axis=(0, 2))
        w = mse_stat / (mse_net + mse_stat)
    return np.where(np.isfinite(w), w, 0.5)
