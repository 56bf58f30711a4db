"""Reading and writing models: safe checkpoints (``checkpoint``) and Keras weight conversion (``keras``)."""

from .checkpoint import FORMAT_VERSION, Checkpoint, check_state_dict, load_checkpoint, save_checkpoint

__all__ = ["FORMAT_VERSION", "Checkpoint", "save_checkpoint", "load_checkpoint", "check_state_dict"]
