"""rnnkit: recurrent neural networks from their equations, on PyTorch.

    rnnkit.RNN / LSTM / GRU      torch.nn-compatible recurrent layers (lengths=, step(), Keras init);
                                 LayerNormLSTM, the layer-normalised LSTM; MinGRU / MinLSTM, the
                                 minimal cells that train by a parallel scan (Feng et al. 2024)
    rnnkit.SequenceModel         input → [embedding] → recurrent stack → output layer
    rnnkit.Trainer               BPTT / truncated BPTT, clipping, schedules, checkpoints, DDP
    rnnkit.load(path)            a trained task from its checkpoint, e.g. .predict_next("the cats are")
"""

from __future__ import annotations

from pathlib import Path

from .cells import CellSpec, gru_step, lstm_step, rnn_step
from .config import Config, apply_overrides, load_toml
from .layers import GRU, LSTM, RNN, Embedding, LayerNormLSTM, MinGRU, MinLSTM, OutputLayer
from .model import ModelConfig, SequenceModel
from .train import TrainConfig, Trainer

__version__ = "0.1.0"


def load(path: str | Path):
    """Load a trained task (language model, classifier, forecaster, ...) from a checkpoint directory."""
    from .tasks import load as load_task
    return load_task(path)


__all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "MinGRU", "MinLSTM", "Embedding", "OutputLayer", "SequenceModel",
           "ModelConfig", "Trainer", "TrainConfig", "Config", "load_toml", "apply_overrides", "CellSpec", "rnn_step", "lstm_step",
           "gru_step", "load"]
