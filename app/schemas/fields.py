"""Schema fields and the checks run on a merged config before a command does any work.

A schema is a dataclass, one field per YAML key. Its values come from the YAML (the documented
defaults), so a field is declared ``setting(...)`` (``MISSING`` until the YAML is merged on) with
the rules its value must meet::

    steps: int = setting(gt=0)
    task: str = setting(choices=task_names)
    data: str | None = setting(exists=True)

``validate`` walks a filled-in schema object: each field's rules, nested schemas, then the
object's own ``check()`` for rules that tie keys together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from dreamgym.configs import UserError


class BadValue(UserError):
    """A value that breaks its field's rule; ``key`` is its dotted name (the CLI adds its default)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def setting(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    exists: bool = False,
    keywords: Sequence[str] = (),
    device: bool = False,
) -> Any:
    """A schema field whose value comes from the YAML, with the rules it must meet.

    Numbers: ``gt``/``ge``/``lt``/``le`` bounds. ``choices``: the allowed values (or a function
    returning them). ``exists``: a path that must exist, unless it is one of ``keywords``.
    ``device``: a torch device that this machine has. ``None`` passes every rule (an optional
    key); a list is checked element by element.
    """
    rules: dict[str, Any] = {k: v for k, v in {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices}.items() if v is not None}
    rules.update({"exists": True, "keywords": tuple(keywords)} if exists else {})
    rules.update({"device": True} if device else {})
    return dataclasses.field(default=MISSING, metadata=rules)


def group(schema: type) -> Any:
    """A nested schema (a mapping in the YAML)."""
    return dataclasses.field(default_factory=schema)


# ------------------------------------------------------------------------------- the checks
def validate(obj: Any, prefix: str = "") -> None:
    """Check every field of the schema object ``obj`` (and nested ones); raise ``BadValue`` on the first break."""
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            validate(value, name + ".")
        elif f.metadata:
            check_value(name, value, f.metadata)
    check = getattr(obj, "check", None)
    if callable(check):
        check()


def validate_keys(obj: Any, keys: Sequence[str]) -> None:
    """Check only the fields named by the dotted ``keys`` of the schema object ``obj``."""
    for key in keys:
        *parents, last = key.lstrip("+").split(".")
        node = obj
        for p in parents:
            node = getattr(node, p, None)
        if dataclasses.is_dataclass(node):
            f = next((f for f in dataclasses.fields(node) if f.name == last), None)
            if f is not None and f.metadata:
                check_value(key.lstrip("+"), getattr(node, last), f.metadata)


def check_value(name: str, value: Any, rules: dict[str, Any]) -> None:
    """Raise ``BadValue`` when ``value`` (or an element of it) breaks one of ``rules``."""
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_one(name, v, rules, shown=value)
        return
    _check_one(name, value, rules, shown=value)


def _check_one(name: str, v: Any, rules: dict[str, Any], shown: Any) -> None:
    bounds = {
        "gt": (lambda a, b: a > b, ">"),
        "ge": (lambda a, b: a >= b, ">="),
        "lt": (lambda a, b: a < b, "<"),
        "le": (lambda a, b: a <= b, "<="),
    }
    for rule, (ok, sign) in bounds.items():
        if rule in rules and isinstance(v, (int, float)) and not ok(v, rules[rule]):
            each = "each element of " if isinstance(shown, (list, tuple)) else ""
            raise BadValue(name, f"{name}={fmt(shown)} is out of range; {each}{name} must be {sign} {fmt(rules[rule])}")
    if "choices" in rules:
        choices = rules["choices"]() if callable(rules["choices"]) else rules["choices"]
        if v not in choices:
            raise BadValue(name, f"{name}={fmt(shown)} is not one of the choices; choose from {', '.join(map(str, choices))}")
    if rules.get("exists") and str(v) not in rules.get("keywords", ()) and not Path(str(v)).exists():
        also = f" or one of {', '.join(rules['keywords'])}" if rules.get("keywords") else ""
        raise BadValue(name, f"{name}={v}: no such file or directory; give an existing path{also}")
    if rules.get("device"):
        check_device(name, str(v))


def check_device(name: str, value: str) -> None:
    """Refuse a device string torch cannot parse, or one this machine does not have."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise BadValue(name, f"{name}={value!r} is not a device; use {name}=cpu or {name}=cuda (cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadValue(name, f"{name}={value} but this machine has no CUDA device (torch {torch.__version__}); use {name}=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadValue(name, f"{name}={value} but this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 ...")
    elif dev.type != "cpu":
        raise BadValue(name, f"{name}={value}: only cpu and cuda are supported; use {name}=cpu or {name}=cuda")


def require(obj: Any, *names: str, hint: str) -> None:
    """Refuse when none of the keys ``names`` of ``obj`` is set (``hint``: an example command)."""
    if all(getattr(obj, n) in (None, "") for n in names):
        said = " or ".join(f"{n}=" for n in names)
        raise BadValue(names[0], f"{said} is required; {hint}")


def check_dataset(name: str, value: Any, files: bool = False) -> None:
    """Refuse a path that is not a ``dreamgym collect`` dataset (or, with ``files``, an episodes .safetensors)."""
    if value is None:
        return
    p = Path(str(value))
    if not p.exists():
        raise BadValue(name, f"{name}={p}: no such file or directory; give a dataset written by `dreamgym collect out=DIR`")
    if files and p.is_file() and p.suffix == ".safetensors":
        return
    if not (p / "manifest.json").is_file():
        raise BadValue(name, f"{name}={p} is not a dreamgym dataset (no manifest.json); give a directory written by `dreamgym collect`")


def fmt(v: Any) -> str:
    """A value as it is written on the command line."""
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(fmt(x) for x in v) + "]"
    return str(v)


# ----------------------------------------------------------------------- choices from the layers
def task_names() -> tuple[str, ...]:
    """The task names of ``dreamgym.envs.tasks``."""
    from dreamgym.envs.tasks import TASKS

    return tuple(sorted(TASKS))


def obs_key_names() -> tuple[str, ...]:
    """The observation keys of the env."""
    from dreamgym.envs.spaces import OBS_KEYS

    return tuple(OBS_KEYS)


def modality_names() -> tuple[str, ...]:
    """The world model's modalities."""
    from dreamgym.worldmodel.data import MODALITIES

    return tuple(MODALITIES)


def behaviour_names() -> tuple[str, ...]:
    """The partner's scripted behaviours."""
    from dreamgym.envs.partner import BEHAVIOURS

    return tuple(BEHAVIOURS)


SPLITS = ("train", "heldout", "all")
