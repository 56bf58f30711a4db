"""Forecast and backtest plots: axis labels (units), date labels that suit the frequency and do not
overlap, the backtest plot's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rnnkit.plots import _time_axis, plot_backtest, plot_forecast


def drawn_ticks(index: pd.DatetimeIndex) -> tuple[list[str], list, str]:
    """The tick labels (text and extents) and x label of a 9-inch axis over ``index``, as rendered."""
    fig = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(index, np.arange(len(index)))
    _time_axis(ax, np.asarray(index), None)
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    renderer = fig.canvas.get_renderer()
    return [t.get_text() for t in labels], [t.get_window_extent(renderer) for t in labels], ax.get_xlabel()


@pytest.mark.parametrize("freq, periods, unit", [("h", 72, ":"), ("D", 120, ""), ("MS", 144, "")])
def test_date_labels_suit_the_frequency_and_do_not_overlap(freq, periods, unit):
    texts, boxes, xlabel = drawn_ticks(pd.date_range("2024-01-01", periods=periods, freq=freq))
    assert xlabel == "date" and len(texts) >= 3
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), texts  # left to right, apart
    if freq == "h":
        assert any(unit in t for t in texts), texts          # hours shown, e.g. "12:00"
    if freq == "MS":
        assert all(t.isdigit() and len(t) == 4 for t in texts), texts  # years over 12 years


def test_plot_backtest_draws_and_checks(tmp_path, monkeypatch):
    import rnnkit.plots
    saved = []
    save = rnnkit.plots._save
    monkeypatch.setattr(rnnkit.plots, "_save", lambda fig, path: saved.append(fig) or save(fig, path))
    y = np.sin(np.arange(100) / 5)
    origins = np.arange(60, 89)
    forecasts = np.stack([y[o:o + 12] + 0.1 for o in origins])
    index = pd.date_range("2024-01-01", periods=100, freq="h")
    path = plot_backtest(y, origins, forecasts, tmp_path / "bt.png", lower=forecasts - 0.3, upper=forecasts + 0.3,
                         index=index, ylabel="load (MW)")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (saved[-1].axes[0].get_xlabel(), saved[-1].axes[0].get_ylabel()) == ("date", "load (MW)")
    with pytest.raises(ValueError, match=r"origins: expected steps in \[0, 88\] .* got 60 .. 89"):
        plot_backtest(y, np.arange(60, 90), np.zeros((30, 12)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"origins: expected 29 origins \(one per forecast row\)"):
        plot_backtest(y, origins[:3], forecasts, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"lower: expected shape \(29, 12\)"):
        plot_backtest(y, origins, forecasts, tmp_path / "bad.png", lower=forecasts[:3], upper=forecasts[:3])
    # a forecast plot labels its axes: the date, the series with its units
    out = plot_forecast(y[:60], y[60:72], tmp_path / "fc.png", history_index=index[:60], forecast_index=index[60:72],
                        ylabel="load (MW)")
    assert out.is_file() and len(saved) == 2
    assert (saved[-1].axes[0].get_xlabel(), saved[-1].axes[0].get_ylabel()) == ("date", "load (MW)")
