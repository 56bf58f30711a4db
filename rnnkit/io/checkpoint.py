"""Safe checkpoints: a directory of safetensors and JSON files, never pickle.

Layout of a checkpoint directory::

    checkpoint.json       manifest: format_version, the files below, state dict key order, tied-weight aliases
    config.json           the config the caller passed (how to rebuild the model)
    model.safetensors     the model's state dict
    <name>.json           one per extra, e.g. vocab.json, scaler.json
    trainer.json          trainer state without its tensors (counters, history, optimizer hyper-parameters)
    trainer.safetensors   the trainer state's tensors (optimizer moments, RNG states, carried state)

Saving is crash-safe: everything is written and fsynced in a temporary sibling ``<name>.tmp``,
then swapped in (``<name>`` → ``<name>.old``, ``<name>.tmp`` → ``<name>``, remove ``<name>.old``).
A process killed at any moment leaves either the new or the previous checkpoint complete, and
``load_checkpoint`` falls back to ``<name>.old`` when ``<name>`` is missing or incomplete.

Trainer state is a tree of dicts, lists, tuples, numbers, strings, None, tensors and numpy arrays;
tensors and arrays go to ``trainer.safetensors`` and are referenced from ``trainer.json``, so
optimizer state dicts (integer keys, tuples) round-trip exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

__all__ = ["FORMAT_VERSION", "Checkpoint", "save_checkpoint", "load_checkpoint", "check_state_dict"]

FORMAT_VERSION = 1
MANIFEST, CONFIG, MODEL = "checkpoint.json", "config.json", "model.safetensors"
TRAINER_JSON, TRAINER_TENSORS = "trainer.json", "trainer.safetensors"
_RESERVED = {"checkpoint", "config", "model", "trainer"}
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns; unpacks as ``config, state_dict, extras, trainer_state``."""

    config: dict
    state_dict: dict[str, torch.Tensor]
    extras: dict[str, Any]
    trainer_state: dict | None


# ------------------------------------------------------------------------------------- writing
def _write_file(path: Path, data: bytes) -> None:
    """Write bytes and fsync them: after this returns the file survives a power cut."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new entries in it are durable (POSIX only)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(value: Any, what: str) -> bytes:
    try:
        return json.dumps(value, indent=1, sort_keys=False).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: expected JSON-serializable data, got {e}") from None


def _model_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into tensors to store and aliases (tied weights stored once)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple, str] = {}
    seen_storage: set[int] = set()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"model_state[{name!r}]: expected a tensor, got {type(t).__name__}")
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.cpu().clone()
            continue
        storage = t.untyped_storage().data_ptr()
        view = (storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in seen_views:
            aliases[name] = seen_views[view]
            continue
        seen_views[view] = name
        t = t.cpu().contiguous()
        tensors[name] = t.clone() if storage in seen_storage else t
        seen_storage.add(storage)
    return tensors, aliases


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """Trainer state → JSON-ready tree; tensors and arrays move to ``tensors`` under unique keys."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        key = where if where not in tensors else f"{where}#{len(tensors)}"
        if isinstance(value, np.ndarray):
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {"__ndarray__": key}
        tensors[key] = value.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, _join(where, i)) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, _join(where, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, _join(where, k)) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, _join(where, "key")), _encode(v, tensors, _join(where, k))]
                              for k, v in value.items()]}
    raise TypeError(f"trainer_state[{where!r}]: expected tensors, arrays, numbers, strings, None, lists, "
                    f"tuples or dicts, got {type(value).__name__}")


def save_checkpoint(path: str | os.PathLike, model_state: dict[str, torch.Tensor], config: dict,
                    extras: dict[str, Any] | None = None, trainer_state: dict | None = None) -> Path:
    """Write a checkpoint directory at ``path`` atomically (see the module docstring); returns it.

    model_state: a state dict (tied weights are stored once and restored as one tensor).
    config: JSON-serializable dict, typically the model/task config needed to rebuild the model.
    extras: ``{name: JSON data}``, each written to ``<name>.json`` (e.g. ``{"vocab": {...}}``).
    trainer_state: optional tree (see the module docstring) for exact resumption of training.
    """
    final = Path(path)
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    extras = dict(extras or {})
    for name in extras:
        if not isinstance(name, str) or not _EXTRA_NAME.match(name) or name in _RESERVED:
            raise ValueError(f"extras: expected names like 'vocab' (letters, digits, _ . -; not one of "
                             f"{sorted(_RESERVED)}), got {name!r}")
    tensors, aliases = _model_tensors(model_state)
    files = {CONFIG: _json_bytes(config, "config"),
             MODEL: save_safetensors_bytes(tensors, metadata={"format": "pt",
                                                              "rnnkit_format_version": str(FORMAT_VERSION)})}
    for name, data in extras.items():
        files[f"{name}.json"] = _json_bytes(data, f"extras[{name!r}]")
    if trainer_state is not None:
        if not isinstance(trainer_state, dict):
            raise TypeError(f"trainer_state: expected a dict or None, got {type(trainer_state).__name__}")
        trainer_tensors: dict[str, torch.Tensor] = {}
        tree = _encode(trainer_state, trainer_tensors, "")
        files[TRAINER_JSON] = _json_bytes(tree, "trainer_state")
        files[TRAINER_TENSORS] = save_safetensors_bytes(trainer_tensors, metadata={"format": "pt"})
    manifest = {"format_version": FORMAT_VERSION, "files": sorted(files), "keys": list(model_state),
                "aliases": aliases, "extras": sorted(extras), "has_trainer_state": trainer_state is not None}

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier crash
    tmp.mkdir()
    for name, data in files.items():
        _write_file(tmp / name, data)
    _write_file(tmp / MANIFEST, _json_bytes(manifest, "manifest"))  # last: marks the directory complete
    _fsync_dir(tmp)
    _swap_into_place(tmp, final, old)
    return final


def _swap_into_place(tmp: Path, final: Path, old: Path) -> None:
    """tmp → final with a complete checkpoint on disk at every instant (final, or else old)."""
    if _is_complete(final):
        shutil.rmtree(old, ignore_errors=True)  # stale: final is complete, so old is not needed
        os.rename(final, old)
    elif final.exists():  # incomplete (damaged): old, if any, stays the fallback until tmp lands
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------- reading
def _member(directory: Path, name: Any) -> Path:
    """``directory / name`` for a file the manifest names; a ValueError for a name that is not a plain
    file name or that leads out of the directory (``..``, an absolute path, a symbolic link)."""
    if not isinstance(name, str):
        raise ValueError(f"{directory / MANIFEST}: expected file names, got {name!r}")
    plain = name not in ("", ".", "..") and "/" not in name and "\\" not in name
    path = directory / name if plain else None
    if path is None or not path.resolve().is_relative_to(directory.resolve()):
        link = f" (a symbolic link to {path.resolve()})" if path is not None else ""
        raise ValueError(f"{directory / MANIFEST}: refers to {name!r}{link}, outside the checkpoint directory "
                         f"{directory}; a checkpoint reads only the files inside its directory (is it damaged "
                         "or crafted?)")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: expected valid JSON, got a malformed file ({e})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint file is missing") from None
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: expected a safetensors file, got a truncated or corrupt one "
                         f"({e})") from None


def _decode(value: Any, tensors: dict[str, torch.Tensor], source: Path) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, source) for v in value]
    if not isinstance(value, dict):
        return value
    for marker in ("__tensor__", "__ndarray__"):
        if marker in value:
            key = value[marker]
            if key not in tensors:
                raise ValueError(f"{source}: trainer.json refers to tensor {key!r}, "
                                 f"which {TRAINER_TENSORS} does not contain")
            return tensors[key].numpy() if marker == "__ndarray__" else tensors[key]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, source) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors, source): _decode(v, tensors, source) for k, v in value["__items__"]}
    return {k: _decode(v, tensors, source) for k, v in value.items()}


def _is_complete(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return all(_member(directory, name).is_file() for name in manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _resolve(path: Path) -> Path:
    """The directory to read: ``path``, or ``path.old`` when ``path`` is missing or incomplete."""
    old = path.with_name(path.name + ".old")
    if not _is_complete(path) and old.is_dir() and _is_complete(old):
        warnings.warn(f"{path}: missing or incomplete (interrupted save?); loading the previous "
                      f"checkpoint {old}", stacklevel=3)
        return old
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no checkpoint directory here "
                                f"(expected a directory with {MANIFEST})")
    return path


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None) -> Checkpoint:
    """Read a checkpoint directory written by ``save_checkpoint``.

    Returns ``Checkpoint(config, state_dict, extras, trainer_state)`` (trainer_state None if not
    saved). With ``model``, the state dict is also checked against it (``check_state_dict``) and
    loaded into it. Raises FileNotFoundError for a missing directory or file, ValueError for
    malformed JSON, a truncated/corrupt safetensors file, an unknown format version, or a file
    reference that leads out of the directory (``..``, an absolute path, a symbolic link).
    """
    directory = _resolve(Path(path))
    if directory.is_dir() and not (directory / MANIFEST).exists():
        inside = [name for name in ("best", "last") if (directory / name / MANIFEST).is_file()]
        if inside:  # a training run's folder: its checkpoints are one level down
            raise FileNotFoundError(f"{directory}: not a checkpoint, but a run's folder holding the checkpoints "
                                    f"{' and '.join(str(directory / n) for n in inside)}; load one of those")
    manifest = _read_json(_member(directory, MANIFEST))
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{directory / MANIFEST}: expected format_version {FORMAT_VERSION}, "
                         f"got {version!r}")
    for key in ("files", "extras"):
        if not isinstance(manifest.get(key, []), list):
            raise ValueError(f"{directory / MANIFEST}: expected {key!r} to be a list of names, "
                             f"got {manifest[key]!r:.80}")
    for name in manifest.get("files", []):
        _member(directory, name)
    config = _read_json(_member(directory, CONFIG))
    state = _read_safetensors(_member(directory, MODEL))
    for alias, target in manifest.get("aliases", {}).items():
        if target not in state:
            raise ValueError(f"{directory / MANIFEST}: alias {alias!r} points to {target!r}, "
                             f"which {MODEL} does not contain")
        state[alias] = state[target]
    state = {key: state[key] for key in manifest.get("keys", []) if key in state} | state  # saved order
    extras = {}
    for name in manifest.get("extras", []):
        if not isinstance(name, str) or not _EXTRA_NAME.match(name):
            _member(directory, name)  # names the problem when it is a path
            raise ValueError(f"{directory / MANIFEST}: expected extra names like 'vocab', got {name!r}")
        extras[name] = _read_json(_member(directory, f"{name}.json"))
    trainer_state = None
    if manifest.get("has_trainer_state"):
        tensors = _read_safetensors(_member(directory, TRAINER_TENSORS))
        trainer_state = _decode(_read_json(_member(directory, TRAINER_JSON)), tensors, directory)
    if model is not None:
        check_state_dict(model, state, source=directory / MODEL)
        model.load_state_dict(state)
    return Checkpoint(config, state, extras, trainer_state)


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor],
                     source: str | os.PathLike = "state_dict", limit: int = 8) -> None:
    """Raise ValueError naming missing keys, unexpected keys and shape mismatches between
    ``model.state_dict()`` and ``state`` (at most ``limit`` of each)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: model {tuple(expected[k].shape)}, checkpoint {tuple(state[k].shape)}"
              for k in expected if k in state and expected[k].shape != state[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes)):
        if items:
            more = f" … and {len(items) - limit} more" if len(items) > limit else ""
            problems.append(f"{label} ({len(items)}): {', '.join(items[:limit])}{more}")
    if problems:
        raise ValueError(f"{source}: state dict does not match the model ({type(model).__name__}); "
                         + "; ".join(problems))
