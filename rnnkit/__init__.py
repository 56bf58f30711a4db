"""rnnkit: recurrent neural networks from their equations, on PyTorch."""

from .cells import CellSpec, gru_step, lstm_step, rnn_step
from .layers import GRU, LSTM, RNN

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "CellSpec", "rnn_step", "lstm_step", "gru_step"]
