"""Hydra configs shipped with the package: one file per command, groups per concern.

``compose`` reads ``configs/<name>.yaml`` with command-line overrides; given a ``schema`` (a
dataclass: a Hydra structured config) it merges the YAML onto it, so a wrong type or a key the
schema does not know is refused by name. ``UserError`` is the error for bad input from a user.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf


class UserError(ValueError):
    """Bad input from a user (a key, a value, a path, a file); the CLI prints it as one line.

    The message says what was wrong, then, after ``"; "``, what to do.
    """


def compose(config_name: str, overrides: list[str], schema: type | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides (``key=value``).

    With ``schema`` (a dataclass) the result is the YAML merged onto ``OmegaConf.structured(schema)``:
    typed, and closed to keys the schema does not declare. Bad overrides raise ``UserError``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"overrides must look like key=value, got {bad}; write e.g. steps=100")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="dreamgym.configs", version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except HydraException as e:
        raise UserError(f"{_bad_override(overrides)}{_hydra_message(e, schema)}") from None
    return cfg if schema is None else typed(cfg, schema)


def typed(cfg: DictConfig, schema: type) -> DictConfig:
    """``cfg`` merged onto the structured config of ``schema``; wrong keys or types raise ``UserError``."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, cfg)
    except ConfigKeyError as e:
        raise UserError(_unknown_key_message(schema, str(e.full_key))) from None
    except ValidationError as e:
        raise UserError(_type_message(schema, str(e.full_key), e)) from None
    except OmegaConfBaseException as e:
        raise UserError(f"{_first_line(e)}; check the value's type (`--cfg` prints the config)") from None
    assert isinstance(merged, DictConfig)
    return merged


# ---------------------------------------------------------------------------------- messages
def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _bad_override(overrides: list[str]) -> str:
    """``"<override>: "`` for the first override Hydra's grammar cannot parse ("" if none)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException:
            return f"cannot parse {o!r} (quote a value holding = [ ] , or spaces, e.g. 'a=\"x=1\"'): "
    return ""


def _hydra_message(e: BaseException, schema: type | None) -> str:
    text = str(e)
    if "Could not override" in text and "To append" in text:
        key = text.split("'")[1]
        if schema is not None:
            return _unknown_key_message(schema, key)
        return f"unknown key {key!r}; `--cfg` lists the valid keys"
    if "An item is already at" in text:
        key = text.split("'")[1]
        return f"{key!r} is already a key; write {key}=VALUE without the +"
    if "Ambiguous value for argument" in text:
        arg = text.split("'")[1]
        key = arg.split("=", 1)[0]
        return f"{arg!r}: a comma makes a list or a sweep; quote the value, e.g. '{key}=\"a,b\"', or give a list, {key}=[a,b]"
    options = getattr(e, "options", None)
    if options and getattr(e, "missing_cfg_file", None):
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        return f"no {group} config {name!r}; choose one of {', '.join(options)}"
    lines = [ln.strip() for ln in text.split("Config search path")[0].splitlines() if ln.strip()]
    if lines and lines[-1].startswith("See https://hydra.cc"):
        lines = lines[:-1]
    return "; ".join(lines) + "; see https://hydra.cc/docs/advanced/override_grammar/basic for the override syntax"


def _node(schema: Any, path: list[str]) -> tuple[Any, Any]:
    """The dataclass (or None) and the type hint at ``path`` below ``schema``."""
    hint: Any = schema
    for name in path:
        cls = _dataclass_of(hint)
        if cls is None:
            return None, None
        hint = typing.get_type_hints(cls).get(name)
    return _dataclass_of(hint), hint


def _dataclass_of(hint: Any) -> type | None:
    for h in (hint, *typing.get_args(hint)):
        if isinstance(h, type) and dataclasses.is_dataclass(h):
            return h
    return None


def _split(full_key: str) -> list[str]:
    return [p for p in full_key.replace("[", ".[").split(".") if p and not p.startswith("[")]


def _unknown_key_message(schema: type, full_key: str) -> str:
    path = _split(full_key)
    parent, _ = _node(schema, path[:-1])
    if parent is None:
        return f"unknown key {full_key!r}: {'.'.join(path[:-1])} has no keys of its own; write {'.'.join(path[:-1])}=VALUE"
    where = f" in {'.'.join(path[:-1])}" if len(path) > 1 else ""
    return f"unknown key {full_key!r}{where}; valid keys: {', '.join(f.name for f in dataclasses.fields(parent))}"


_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "whole numbers", float: "numbers", bool: "booleans", str: "strings"}


def _type_message(schema: type, full_key: str, e: BaseException) -> str:
    path = _split(full_key)
    _, hint = _node(schema, path)
    want = _describe(hint)
    return f"{full_key}: {_first_line(e)}; give {'.'.join(path)} {want}" if want else f"{full_key}: {_first_line(e)}; see `--cfg`"


def _describe(hint: Any) -> str:
    if hint in _WORDS:
        return _WORDS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (_describe(inner[0]) + " or null") if len(inner) == 1 and _describe(inner[0]) else "a value or null"
    if origin is list:
        return f"a list of {_PLURALS[args[0]]}, e.g. [1,2]" if args and args[0] in _PLURALS else "a list, e.g. [a,b]"
    if origin is dict:
        return "a mapping, e.g. {a:1}"
    if _dataclass_of(hint) is not None:
        return "a mapping of its keys (see `--cfg`)"
    return ""
