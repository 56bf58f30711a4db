"""torch.nn-compatible layers: input → embedding → recurrent → output."""

from .recurrent import GRU, LSTM, RNN, RecurrentBase

__all__ = ["RNN", "LSTM", "GRU", "RecurrentBase"]
