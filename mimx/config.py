"""Configuration: hydra composition for the CLI and typed sections with clear errors."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


class UserError(ValueError):
    """Bad input from the user (config, data, checkpoint): the message names the thing and the fix."""


def to_plain(value: Any) -> Any:
    """OmegaConf containers to plain dicts/lists (resolved); anything else unchanged."""
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def name_list(value: str | Sequence[str] | None) -> list[str]:
    """Names from a comma-separated string (``rgb,depth``; one bare name is a one-item list) or a list."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(to_plain(value))
    return [str(n).strip() for n in parts if str(n).strip()]


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``values``; an unknown key gets one error with the valid keys."""
    values = dict(to_plain(values) or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            hints.append(f"{section}.{key}" + (f" (did you mean {section}.{close[0]}?)" if close else ""))
        raise UserError(f"unknown config key {', '.join(hints)}; valid keys in '{section}': {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _type_ok(value, hints.get(key, Any)):
            raise UserError(f"config key {section}.{key} must be {_type_name(hints[key])}, got {value!r}")
    return cls(**values)


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    return (origin or hint).__name__ if hasattr(origin or hint, "__name__") else str(hint)


def compose(config_module: str, config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose a hydra config from a package of yaml files, turning hydra's errors into :class:`UserError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    overrides = [quote_brace_patterns(o) for o in overrides]
    try:
        with initialize_config_module(config_module=config_module, version_base=None):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_explain_hydra_error(exc, overrides)) from None


_BRACE_PATTERN = re.compile(r"\{[^{}:]*(\.\.|,)[^{}:]*\}")


def quote_brace_patterns(override: str) -> str:
    """Quote ``key=...{000000..000099}...`` so hydra reads a shard pattern as a string, not a dict."""
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"" or not _BRACE_PATTERN.search(value):
        return override
    return f"{key}='{value}'" if "'" not in value else override


def _explain_hydra_error(exc: Exception, overrides: Sequence[str]) -> str:
    text = str(exc)
    missing_key = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if missing_key:
        key = missing_key.group(1)
        return (f"unknown config key '{key}'. Run the same command with --cfg job to see the valid keys; "
                f"to add a new key on purpose write +{key}=VALUE")
    text = text.split("Config search path")[0].strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = lines[0] + (" " + lines[1] + " " + ", ".join(lines[2:]) if len(lines) > 1 else "")
    if "override_grammar" in message:
        message += " (quote values with special characters: key='value')"
    return f"bad configuration ({' '.join(overrides) or 'no overrides'}): {message}"
