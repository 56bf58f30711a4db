"""torch.nn-compatible layers: input → embedding → recurrent → output."""

import torch

from ..cells import CellSpec
from ..kernels.base import DirectionWeights
from .dropout import EmbeddingDropout, LockedDropout
from .embedding import Embedding
from .output import OutputLayer, pool, sequence_mask
from .minimal import MinGRU, MinLSTM
from .recurrent import GRU, LSTM, RNN, LayerNormLSTM, RecurrentBase

# A whole layer saved with torch.save loads with torch.load(..., weights_only=True), as a torch.nn
# one does: these are the classes such a pickle names besides torch.nn's (the layers, and the plain
# cell spec and weight names a recurrent layer holds). Each is rebuilt from data alone.
torch.serialization.add_safe_globals([RNN, LSTM, GRU, LayerNormLSTM, Embedding, LockedDropout, EmbeddingDropout,
                                      OutputLayer, CellSpec, DirectionWeights])

__all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "MinGRU", "MinLSTM", "RecurrentBase", "Embedding", "LockedDropout", "EmbeddingDropout",
           "OutputLayer", "pool", "sequence_mask"]
