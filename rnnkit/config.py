"""Configuration: pydantic models read from TOML files and overridden with ``--set key=value``.

Every config is a ``Config`` subclass: an unknown key is an error, every field has a default and a
description (checked when the class is defined), and assignments are validated. Sections are
``Config`` submodels::

    class TrainConfig(Config):
        lr: float = Field(1.0, gt=0, description="learning rate")

    class Experiment(Config):
        model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
        train: TrainConfig = Field(default_factory=TrainConfig, description="the optimiser")

    cfg = load_toml("configs/ptb_small.toml", Experiment)
    cfg = apply_overrides(cfg, ["model.hidden_size=256", "train.lr=0.5"])

Errors are ``ValueError``s naming the source and the dotted key:
``configs/x.toml: model.hidden_size: expected an integer, got 'big'``.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every rnnkit config: strict keys, validated assignment, JSON and TOML round trips."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, field in cls.model_fields.items():
            if field.is_required():
                raise TypeError(f"{cls.__name__}.{name}: every config field needs a default")
            if not field.description:
                raise TypeError(f"{cls.__name__}.{name}: every config field needs "
                                "Field(description=...)")

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "") -> C:
        """Validate a plain dict (parsed TOML or JSON); errors name ``source`` and the dotted key."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ValueError(_format_errors(error, cls, source)) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible nested dict of every field (sections as dicts)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """The config as indented JSON, e.g. for a checkpoint's ``config.json``."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[C], text: str, source: str = "") -> C:
        """Inverse of ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source or 'json'}: invalid JSON: {error}") from None
        return cls.from_dict(data, source)

    def to_toml(self) -> str:
        """The config as TOML text, sections as ``[tables]``. Fields set to None are left out
        (TOML has no null), so they load back as their defaults."""
        return "\n".join(_toml_lines(self.to_dict(), "")).lstrip("\n") + "\n"


def load_toml(path: str | Path, cls: type[C]) -> C:
    """Read and validate a TOML config file.

    Raises ValueError naming the file for a missing or unreadable file, a TOML syntax error, an
    unknown key or a wrong value (with the dotted key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read config file: {error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: invalid TOML: {error}") from None
    return cls.from_dict(data, str(path))


def save_toml(config: Config, path: str | Path) -> None:
    """Write ``config.to_toml()`` to ``path``; ``load_toml(path, type(config))`` reads it back."""
    Path(path).write_text(config.to_toml(), encoding="utf-8")


def apply_overrides(config: C, overrides: Iterable[str]) -> C:
    """A copy of ``config`` with ``key=value`` overrides applied (the CLI's ``--set``).

    key is dotted through sections (``model.hidden_size``); value is a TOML literal (``256``,
    ``0.5``, ``true``, ``"text"``, ``[1, 2]``) or, when it does not parse as one, a bare string
    (``cell=gru``). The result is validated as a whole, so overrides that only make sense
    together may be given together.
    """
    data = config.model_dump()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. model.hidden_size=256")
        parts = key.split(".")
        section: type[Config] | None = type(config)
        node = data
        for depth, part in enumerate(parts):
            dotted = ".".join(parts[: depth + 1])
            if section is None:
                raise ValueError(f"--set {item}: {'.'.join(parts[:depth])!r} is a value, not a section")
            if part not in section.model_fields:
                raise ValueError(f"--set {item}: unknown key {dotted!r}{_suggest(part, section)}")
            if depth < len(parts) - 1:
                section = _section_type(section, part)
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
        node[parts[-1]] = _parse_literal(raw.strip())
    return type(config).from_dict(data, "--set")


# ------------------------------------------------------------------------------------ helpers
def _parse_literal(raw: str) -> Any:
    """A TOML literal's value, or the raw text when it is not one."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    return parsed["v"] if set(parsed) == {"v"} else raw


def _section_type(cls: type[Config], name: str) -> type[Config] | None:
    """The Config class of field ``name`` when it is a section, else None."""
    annotation = cls.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Config) else None


def _suggest(key: str, section: type[Config] | None) -> str:
    if section is None:
        return ""
    close = difflib.get_close_matches(key, section.model_fields, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (expected one of: {', '.join(section.model_fields)}){hint}"


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
}
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _format_errors(error: ValidationError, cls: type[Config], source: str) -> str:
    lines = []
    for e in error.errors():
        loc = [str(part) for part in e["loc"]]
        kind, ctx = e["type"], e.get("ctx", {})
        if kind == "extra_forbidden":
            section: type[Config] | None = cls
            for part in loc[:-1]:
                section = _section_type(section, part) if section and part in section.model_fields else None
            text = f"unknown key{_suggest(loc[-1], section)}"
        elif kind == "value_error":  # raised by a validator; its message names the fields
            text = str(ctx.get("error", e["msg"]))
        elif kind in _EXPECTED:
            text = f"expected {_EXPECTED[kind]}, got {e['input']!r}"
        elif kind == "literal_error":
            text = f"expected {ctx['expected']}, got {e['input']!r}"
        elif kind in _BOUNDS:
            op, name = _BOUNDS[kind]
            text = f"expected a value {op} {ctx[name]}, got {e['input']!r}"
        else:
            text = f"{e['msg']}, got {e['input']!r}"
        lines.append(": ".join(p for p in (source, ".".join(loc), text) if p))
    return "\n".join(lines)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_string(text: str) -> str:
    """A TOML basic string; JSON's escapes of control characters are valid TOML escapes."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise TypeError(f"{key}: cannot write {type(value).__name__} {value!r} as a TOML value")


def _toml_lines(data: dict[str, Any], prefix: str) -> list[str]:
    """Plain keys first, then one ``[table]`` per section (TOML requires this order)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v, prefix + k)}" for k, v in data.items()
             if v is not None and not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            name = prefix + _toml_key(k)
            lines += ["", f"[{name}]", *_toml_lines(v, name + ".")]
    return lines
