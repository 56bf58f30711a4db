"""Checkpoints: round trips, crash-safe saving, and clear errors for every kind of damage."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.io import FORMAT_VERSION, check_state_dict, load_checkpoint, save_checkpoint
from rnnkit.io import checkpoint as checkpoint_module


class TiedLM(torch.nn.Module):
    """Embedding → LSTM → decoder sharing the embedding's weight (tied weights)."""

    def __init__(self, vocab: int = 7, hidden: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.rnn = rnnkit.LSTM(hidden, hidden, batch_first=True)
        self.decoder = torch.nn.Linear(hidden, vocab)
        self.decoder.weight = self.embed.weight


def trained_adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    out, _ = model.rnn(model.embed(torch.tensor([[1, 2, 3]])))
    model.decoder(out).sum().backward()
    opt.step()
    return opt


def save_example(path, model: torch.nn.Module, tag: int = 0):
    opt = trained_adam(model)
    trainer_state = {"optimizer": opt.state_dict(), "epoch": tag, "best": float("inf"),
                     "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}}
    return save_checkpoint(path, model.state_dict(), {"hidden": 4, "tag": tag},
                           {"vocab": {"tokens": ["a", "b"]}, "scaler": {"mean": 1.5}}, trainer_state)


def test_round_trip_restores_weights_extras_and_trainer_state(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    path = save_example(tmp_path / "ckpt", model)
    assert sorted(os.listdir(path)) == ["checkpoint.json", "config.json", "model.safetensors",
                                        "scaler.json", "trainer.json", "trainer.safetensors", "vocab.json"]
    assert json.loads((path / "checkpoint.json").read_text())["format_version"] == FORMAT_VERSION

    config, state, extras, trainer_state = load_checkpoint(path)
    assert config == {"hidden": 4, "tag": 0}
    assert extras == {"vocab": {"tokens": ["a", "b"]}, "scaler": {"mean": 1.5}}
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    assert state["decoder.weight"] is state["embed.weight"]  # stored once, restored tied

    fresh = TiedLM()
    load_checkpoint(path, model=fresh)
    assert fresh.decoder.weight is fresh.embed.weight and torch.equal(fresh.embed.weight, model.embed.weight)
    opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    opt.load_state_dict(trainer_state["optimizer"])  # integer keys and tuples survived JSON
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert trainer_state["best"] == float("inf")
    np.random.set_state(trainer_state["rng"]["numpy"])
    random.setstate(trainer_state["rng"]["python"])
    torch.set_rng_state(trainer_state["rng"]["torch"])


def test_inference_checkpoint_without_trainer_state(tmp_path):
    model = torch.nn.Linear(2, 3)
    save_checkpoint(tmp_path / "c", model.state_dict(), {})
    checkpoint = load_checkpoint(tmp_path / "c")
    assert checkpoint.trainer_state is None and checkpoint.extras == {}


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last"
    save_example(path, TiedLM(), tag=1)
    real_write = checkpoint_module._write_file

    def crash_on_model(target, data):
        if target.name == "model.safetensors":
            raise OSError("disk died mid-save")
        real_write(target, data)

    monkeypatch.setattr(checkpoint_module, "_write_file", crash_on_model)
    with pytest.raises(OSError, match="disk died"):
        save_example(path, TiedLM(), tag=2)
    assert load_checkpoint(path).config["tag"] == 1
    monkeypatch.setattr(checkpoint_module, "_write_file", real_write)
    save_example(path, TiedLM(), tag=3)  # the leftover temporary directory does not get in the way
    assert load_checkpoint(path).config["tag"] == 3
    assert sorted(os.listdir(tmp_path)) == ["last"]


def test_crash_between_renames_falls_back_to_old(tmp_path, monkeypatch):
    path = tmp_path / "last"
    save_example(path, TiedLM(), tag=1)
    real_rename = os.rename

    def crash_on_second_rename(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "rename", crash_on_second_rename)
    with pytest.raises(OSError, match="killed"):
        save_example(path, TiedLM(), tag=2)
    monkeypatch.undo()
    assert not path.exists() and (tmp_path / "last.old").is_dir()
    with pytest.warns(UserWarning, match="previous checkpoint"):
        assert load_checkpoint(path).config["tag"] == 1
    path.mkdir()  # a damaged directory in the final place: still the complete old one loads
    (path / "model.safetensors").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="incomplete"):
        assert load_checkpoint(path).config["tag"] == 1
    save_example(path, TiedLM(), tag=3)
    assert load_checkpoint(path).config["tag"] == 3
    assert sorted(os.listdir(tmp_path)) == ["last"]


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    path = save_example(tmp_path / "c", TiedLM())
    (path / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_checkpoint(path)
    (path / "checkpoint.json").unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint.json"):
        load_checkpoint(path)
    save_example(tmp_path / "run" / "best", TiedLM())  # a training run's folder: its checkpoints one level down
    with pytest.raises(FileNotFoundError, match=r"run: not a checkpoint, but a run's folder holding the checkpoints "
                                                r".*run/best; load one of those"):
        load_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("name", ["model.safetensors", "trainer.safetensors"])
def test_truncated_or_corrupt_safetensors(tmp_path, name):
    path = save_example(tmp_path / "c", TiedLM())
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{name}.*truncated or corrupt"):
        load_checkpoint(path)
    (path / name).write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match=f"{name}.*truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["config.json", "trainer.json", "vocab.json", "checkpoint.json"])
def test_malformed_json(tmp_path, name):
    path = save_example(tmp_path / "c", TiedLM())
    (path / name).write_text('{"unterminated": ')
    with pytest.raises(ValueError, match=f"{name}: expected valid JSON"):
        load_checkpoint(path)


def test_unknown_format_version(tmp_path):
    path = save_example(tmp_path / "c", TiedLM())
    manifest = json.loads((path / "checkpoint.json").read_text())
    manifest["format_version"] = 99
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version 1, got 99"):
        load_checkpoint(path)


def test_state_dict_mismatch_names_keys_and_shapes(tmp_path):
    path = save_example(tmp_path / "c", TiedLM(vocab=7))
    with pytest.raises(ValueError, match=r"shape mismatches \(3\): embed.weight: model \(9, 4\), "
                                         r"checkpoint \(7, 4\)"):
        load_checkpoint(path, model=TiedLM(vocab=9))
    other = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"missing keys \(2\): 0.weight, 0.bias; "
                                         r"unexpected keys \(7\): embed.weight, rnn.weight_ih_l0"):
        load_checkpoint(path, model=other)
    check_state_dict(TiedLM(vocab=7), load_checkpoint(path).state_dict)  # a match passes


def test_bad_arguments(tmp_path):
    state = torch.nn.Linear(1, 1).state_dict()
    with pytest.raises(ValueError, match="extras"):
        save_checkpoint(tmp_path / "c", state, {}, {"config": {}})
    with pytest.raises(TypeError, match=r"extras\['vocab'\]: expected JSON-serializable"):
        save_checkpoint(tmp_path / "c", state, {}, {"vocab": {"x": object()}})
    with pytest.raises(TypeError, match=r"trainer_state\['fn'\]"):
        save_checkpoint(tmp_path / "c", state, {}, trainer_state={"fn": print})
    assert not (tmp_path / "c").exists()


def edit_manifest(path, **changes) -> None:
    manifest = json.loads((path / "checkpoint.json").read_text())
    manifest.update(changes)
    (path / "checkpoint.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("key, name", [("extras", "../../outside"), ("files", "../../outside.json"),
                                       ("extras", "/etc/passwd"), ("files", "/etc/hostname")])
def test_file_references_that_leave_the_directory_are_refused(tmp_path, key, name):
    path = save_example(tmp_path / "runs" / "c", TiedLM())
    (tmp_path / "outside.json").write_text('{"secret": 1}')
    manifest = json.loads((path / "checkpoint.json").read_text())
    edit_manifest(path, **{key: manifest[key] + [name]})
    with pytest.raises(ValueError, match=f"checkpoint.json: refers to '{name}', outside the checkpoint directory"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["vocab.json", "config.json", "model.safetensors", "checkpoint.json"])
def test_symbolic_links_out_of_the_directory_are_refused(tmp_path, name):
    path = save_example(tmp_path / "c", TiedLM())
    outside = tmp_path / "outside"
    os.replace(path / name, outside)
    (path / name).symlink_to(outside)
    with pytest.raises(ValueError, match=f"refers to '{name}' \\(a symbolic link to {outside}\\), outside"):
        load_checkpoint(path)


def test_symbolic_links_inside_the_directory_are_read(tmp_path):
    path = save_example(tmp_path / "c", TiedLM())
    os.replace(path / "vocab.json", path / "vocab.data")
    (path / "vocab.json").symlink_to("vocab.data")
    assert load_checkpoint(path).extras["vocab"] == {"tokens": ["a", "b"]}


def test_manifest_lists_must_be_lists_of_names(tmp_path):
    path = save_example(tmp_path / "c", TiedLM())
    edit_manifest(path, extras="vocab")
    with pytest.raises(ValueError, match="expected 'extras' to be a list of names, got 'vocab'"):
        load_checkpoint(path)
    edit_manifest(path, extras=["vocab", 3])
    with pytest.raises(ValueError, match="checkpoint.json: expected file names, got 3"):
        load_checkpoint(path)
