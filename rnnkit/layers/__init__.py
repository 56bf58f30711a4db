"""torch.nn-compatible layers: input → embedding → recurrent → output."""

from .dropout import EmbeddingDropout, LockedDropout
from .embedding import Embedding
from .output import OutputLayer, pool, sequence_mask
from .recurrent import GRU, LSTM, RNN, LayerNormLSTM, RecurrentBase

__all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "RecurrentBase", "Embedding", "LockedDropout", "EmbeddingDropout",
           "OutputLayer", "pool", "sequence_mask"]
