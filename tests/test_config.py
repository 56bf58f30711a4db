"""Config base: strict keys, clear errors naming file and dotted key, overrides, TOML/JSON round trips."""

from typing import Literal

import pytest
from pydantic import Field, ValidationError

from rnnkit.config import Config, apply_overrides, load_toml, save_toml


class Net(Config):
    hidden_size: int = Field(64, ge=1, description="hidden units")
    cell: Literal["lstm", "gru"] = Field("lstm", description="cell kind")
    layers: list[int] = Field(default_factory=lambda: [1, 2], description="a list value")
    note: str | None = Field(None, description="free text")


class Train(Config):
    lr: float = Field(1.0, gt=0, description="learning rate")
    clip: bool = Field(True, description="clip gradients")
    name: str = Field("run", description="run name")


class Experiment(Config):
    model: Net = Field(default_factory=Net, description="the network")
    train: Train = Field(default_factory=Train, description="the optimiser")


def write(tmp_path, text, name="x.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_field_needs_a_default_and_a_description():
    with pytest.raises(TypeError, match="NoDefault.size: every config field needs a default"):
        class NoDefault(Config):
            size: int = Field(description="no default")
    with pytest.raises(TypeError, match="NoDoc.size: .*description"):
        class NoDoc(Config):
            size: int = 3


def test_load_toml_reads_nested_sections(tmp_path):
    path = write(tmp_path, '[model]\nhidden_size = 256\ncell = "gru"\n[train]\nlr = 0.5\n')
    cfg = load_toml(path, Experiment)
    assert (cfg.model.hidden_size, cfg.model.cell, cfg.train.lr, cfg.train.clip) == (256, "gru", 0.5, True)


def test_wrong_type_names_file_and_dotted_key(tmp_path):
    path = write(tmp_path, '[model]\nhidden_size = "big"\n')
    with pytest.raises(ValueError) as info:
        load_toml(path, Experiment)
    assert str(info.value) == f"{path}: model.hidden_size: expected an integer, got 'big'"


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    path = write(tmp_path, "[model]\nhiden_size = 3\n")
    with pytest.raises(ValueError, match=r"x\.toml: model\.hiden_size: unknown key .*did you mean 'hidden_size'"):
        load_toml(path, Experiment)
    with pytest.raises(ValueError, match=r"x\.toml: optimizer: unknown key"):
        load_toml(write(tmp_path, "[optimizer]\nlr = 1\n"), Experiment)


def test_bound_literal_and_several_errors(tmp_path):
    path = write(tmp_path, '[model]\ncell = "tree"\n[train]\nlr = 0\n')
    with pytest.raises(ValueError) as info:
        load_toml(path, Experiment)
    lines = str(info.value).splitlines()
    assert lines == [f"{path}: model.cell: expected 'lstm' or 'gru', got 'tree'",
                     f"{path}: train.lr: expected a value > 0.0, got 0"]


def test_missing_file_and_syntax_error(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.toml: config file not found"):
        load_toml(tmp_path / "nope.toml", Experiment)
    with pytest.raises(ValueError, match=r"x\.toml: invalid TOML: .*line 2"):
        load_toml(write(tmp_path, "[model]\nhidden_size = = 3\n"), Experiment)


def test_assignment_is_validated():
    cfg = Experiment()
    with pytest.raises(ValidationError):
        cfg.model.hidden_size = "big"
    with pytest.raises(ValidationError):
        cfg.model.colour = "red"


def test_overrides_parse_toml_literals_and_bare_strings():
    base = Experiment()
    cfg = apply_overrides(base, ["model.hidden_size=256", "train.lr=5e-1", "train.clip=false",
                                 "model.cell=gru", "train.name = 'my run'", "model.layers=[3, 4]",
                                 "model.note=a=b"])
    assert (cfg.model.hidden_size, cfg.train.lr, cfg.train.clip) == (256, 0.5, False)
    assert (cfg.model.cell, cfg.train.name, cfg.model.layers, cfg.model.note) == ("gru", "my run", [3, 4], "a=b")
    assert base == Experiment()  # the input is not modified


def test_override_errors_name_the_key():
    cfg = Experiment()
    with pytest.raises(ValueError, match=r"unknown key 'model.hidden'.*did you mean 'hidden_size'"):
        apply_overrides(cfg, ["model.hidden=3"])
    with pytest.raises(ValueError, match=r"unknown key 'modle'"):
        apply_overrides(cfg, ["modle.hidden_size=3"])
    with pytest.raises(ValueError, match=r"'model.hidden_size' is a value, not a section"):
        apply_overrides(cfg, ["model.hidden_size.x=3"])
    with pytest.raises(ValueError, match=r"expected key=value"):
        apply_overrides(cfg, ["model.hidden_size"])
    with pytest.raises(ValueError) as info:
        apply_overrides(cfg, ["model.hidden_size=big"])
    assert str(info.value) == "--set: model.hidden_size: expected an integer, got 'big'"


def test_toml_round_trip(tmp_path):
    cfg = apply_overrides(Experiment(), ['train.name="quote \\" and ünïcode\\ttab"', "train.lr=1e-5",
                                         "model.layers=[]"])
    path = tmp_path / "out.toml"
    save_toml(cfg, path)
    assert load_toml(path, Experiment) == cfg
    assert "note" not in path.read_text()  # None is left out and loads back as the default


def test_json_round_trip():
    cfg = apply_overrides(Experiment(), ["model.note=hello", "train.lr=0.25"])
    assert Experiment.from_json(cfg.to_json()) == cfg
    assert cfg.to_dict()["model"] == {"hidden_size": 64, "cell": "lstm", "layers": [1, 2], "note": "hello"}
    with pytest.raises(ValueError, match="ckpt/config.json: model.cell: expected 'lstm' or 'gru'"):
        Experiment.from_json('{"model": {"cell": "x"}}', source="ckpt/config.json")
