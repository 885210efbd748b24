"""Pipeline configs: YAML presets validated by pydantic, with ``--set key=value`` overrides.

An unknown key or a value of the wrong type is a ``ConfigError`` naming the
dotted key, e.g. ``unknown config key 'train.epoch'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from components.errors import TvpError

PRESETS_DIR = Path(__file__).parent / "configs"
Model = TypeVar("Model", bound=BaseModel)


class ConfigError(TvpError, ValueError):
    pass


def named_yaml(name_or_path: str | Path, folder: Path, what: str) -> Path:
    """A YAML file given by path, or by the name of one shipped in ``folder`` (a preset, an example pipeline)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist")
        return path
    candidate = folder / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"unknown {what} {name_or_path!r} (known: {known}; or give a .yaml path)")
    return candidate


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name (``tiny``) from pipelines/configs, or a path to a YAML file."""
    return named_yaml(name_or_path, PRESETS_DIR, "config preset")


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    """The mapping a YAML file holds (empty for an empty file); one-line errors name the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must hold a mapping at the top level")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in nested ``data``; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parts[: depth + 1])!r} is not a section; cannot set {key!r}")
        node = child
    node[parts[-1]] = value


def _describe(error: dict[str, Any]) -> str:
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # raised by a validator that already names the key
        return str(cause)
    key = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown config key {key!r}"
    if error["type"] == "missing":
        return f"missing config key {key!r}"
    if not key:
        return f"invalid config: {message}"
    return f"config key {key!r}: {message} (got {error.get('input')!r})"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``, section by section. An empty mapping in ``top`` empties the key (``classes: {}``
    in a fine-tuning preset drops the parent's classes) rather than changing nothing."""
    merged = dict(base)
    for key, value in top.items():
        nested = isinstance(value, dict) and value and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def load_config(
    model: type[Model],
    preset: str | Path | None = None,
    overrides: list[str] | None = None,
    ignore_sections: tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> Model:
    """``ignore_sections`` are preset sections this pipeline does not use (the demo's ``data``, say);
    ``base`` is what the preset is laid over (a parent checkpoint's settings, say)."""
    data = _merge(base or {}, read_yaml_mapping(preset_path(preset)) if preset else {})
    for section in ignore_sections:
        data.pop(section, None)
    for item in overrides or []:
        apply_override(data, item)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
