"""Forecasting competitions (M3, tourism) as long-format frames: one row per series and time step.

The registered files (``m3/m3_data.json``, ``tourism/tcomp_data.json``) hold each series with its
training part ``x`` and the competition's hold-out ``xx``. ``load_competition`` returns both parts
of one frequency as two frames with the columns Darts and neuralforecast users know:

    unique_id  ds  y       (plus the static column ``category``: MICRO, FINANCE, TOURISM, ...)

``ds`` is the step number within the series (0, 1, ...; the files give no calendar dates), and the
hold-out continues the numbering of the training part. Forecast ``test`` from ``train`` only.

    train, test = load_competition("tourism", "monthly")
    train.groupby("unique_id").size().min()   # shortest training part
    SEASON["monthly"]                         # 12, the seasonal-naive period of MASE's scale
    competition_frame("tourism/monthly")      # both parts as one frame (``data.competition``)
"""

from __future__ import annotations

import json
import os

import pandas as pd

from .datasets import dataset_file

FILES = {"m3": "m3_data.json", "tourism": "tcomp_data.json"}
FREQUENCIES = {"m3": ("yearly", "quarterly", "monthly", "other"), "tourism": ("yearly", "quarterly", "monthly")}
SEASON = {"yearly": 1, "quarterly": 4, "monthly": 12, "other": 1}  # the competitions' seasonal periods


def load_competition(name: str, frequency: str, data_dir: str | os.PathLike | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training parts and hold-outs of one competition's series of one frequency.

    Args:
        name: ``"m3"`` or ``"tourism"`` (registered data sets, found as ``dataset_file`` finds them).
        frequency: ``"yearly"``, ``"quarterly"``, ``"monthly"`` or (M3 only) ``"other"``.
        data_dir: root holding ``<name>/<file>`` (default: ``$RNNKIT_DATA``, then the cache).

    Returns:
        ``(train, test)``: long frames with columns ``unique_id`` (str), ``ds`` (int step),
        ``y`` (float) and ``category`` (str), sorted by series then step. Every series has
        ``h`` test rows, the competition's horizon for that frequency.

    Raises:
        ValueError: an unknown competition or frequency, or a file not laid out as the registry's.
    """
    if name not in FILES:
        raise ValueError(f"name: expected one of {sorted(FILES)}, got {name!r}")
    if frequency not in FREQUENCIES[name]:
        raise ValueError(f"frequency: expected one of {', '.join(FREQUENCIES[name])} for {name}, got {frequency!r}")
    path = dataset_file(name, FILES[name], data_dir=data_dir)
    with open(path, encoding="utf-8") as f:
        series = json.load(f)
    train, test = [], []
    for key, s in series.items():
        try:
            if s["period"][0].lower() != frequency:
                continue
            x, xx, category = s["x"], s["xx"], s["type"][0]
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: series {key!r}: expected fields period, type, x, xx as in the "
                             f"registered file, got {error!r}") from None
        train.append(pd.DataFrame({"unique_id": key, "ds": range(len(x)), "y": x, "category": category}))
        test.append(pd.DataFrame({"unique_id": key, "ds": range(len(x), len(x) + len(xx)), "y": xx,
                                  "category": category}))
    if not train:
        raise ValueError(f"{path}: no {frequency} series in the file")
    return tuple(pd.concat(part, ignore_index=True).astype({"y": "float64"}) for part in (train, test))


def competition_frame(collection: str, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One collection, ``"<competition>/<frequency>"`` (e.g. ``"tourism/monthly"``), as one long frame:
    each series' training part followed by its hold-out (``load_competition``'s two frames joined and
    sorted by series and step), so that a backtest over each series' last h steps (``data.test`` = the
    competition's horizon) forecasts the hold-out from the training part alone."""
    name, _, frequency = collection.partition("/")
    train, test = load_competition(name, frequency, data_dir)
    return pd.concat([train, test]).sort_values(["unique_id", "ds"], kind="stable", ignore_index=True)
