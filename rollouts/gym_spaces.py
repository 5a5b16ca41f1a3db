"""Gymnasium spaces as JSON, and the spaces ``dreamgym collect env=...`` can store.

A dataset collected from a Gymnasium env describes its observation and action spaces in its
manifest (``env.observation_space``, ``env.action_space``) with ``space_to_json``;
``space_from_json`` rebuilds the same ``gymnasium.spaces`` object. The JSON forms::

    {"type": "Box", "shape": [3], "dtype": "float32", "low": [-1.0, -1.0, -8.0], "high": 8.0}
    {"type": "Discrete", "n": 2, "start": 0}
    {"type": "Dict", "spaces": {"<key>": <a space>, ...}}     # keys in the space's order

A Box bound is a single number when every element has the same value, else nested lists of the
Box's shape; an infinite bound is the string ``"inf"`` or ``"-inf"`` (JSON has no infinity).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["check_action_space", "check_observation_space", "observation_layout", "space_from_json", "space_to_json"]

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")  # a Dict key that is a plain HDF5 dataset name


def _bound_to_json(a: np.ndarray) -> Any:
    def one(v):
        if isinstance(v, float) and not math.isfinite(v):
            if math.isnan(v):
                raise ValueError("a Box bound is NaN, which no dataset can describe")
            return "inf" if v > 0 else "-inf"
        return v

    flat = a.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return one(flat[0].item())
    values = [one(v) for v in flat.tolist()]
    return np.array(values, dtype=object).reshape(a.shape).tolist() if a.ndim > 1 else values


def _bound_from_json(v: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    def one(x):
        if x == "inf":
            return math.inf
        if x == "-inf":
            return -math.inf
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return x
        raise ValueError(f"a Box bound holds {x!r}; expected numbers, 'inf' or '-inf'")

    if isinstance(v, list):
        out = np.vectorize(one, otypes=[float if np.issubdtype(dtype, np.floating) else object])(np.array(v, dtype=object))
    else:
        out = np.full(shape, one(v), dtype=float if np.issubdtype(dtype, np.floating) else object)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"a Box bound has shape {list(out.shape)}, the Box {list(shape)}")
    return out.astype(dtype)


def space_to_json(space) -> dict[str, Any]:
    """The JSON description of a Box, Discrete or Dict space (nested Dicts too)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": [int(n) for n in space.shape],
            "dtype": str(np.dtype(space.dtype)),
            "low": _bound_to_json(np.asarray(space.low)),
            "high": _bound_to_json(np.asarray(space.high)),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {str(k): space_to_json(s) for k, s in space.spaces.items()}}
    raise ValueError(f"the space {space} ({type(space).__name__}) has no JSON description; only Box, Discrete and Dict do")


def space_from_json(d: Mapping[str, Any]):
    """The ``gymnasium.spaces`` object that ``space_to_json`` described."""
    from gymnasium import spaces

    if not isinstance(d, Mapping) or "type" not in d:
        raise ValueError(f"{d!r} is not a space description (a JSON object with a 'type')")
    kind = d["type"]
    if kind == "Box":
        shape, dtype = tuple(int(n) for n in d["shape"]), np.dtype(d["dtype"])
        return spaces.Box(_bound_from_json(d["low"], shape, dtype), _bound_from_json(d["high"], shape, dtype), shape, dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    if kind == "Dict":
        from collections import OrderedDict

        return spaces.Dict(OrderedDict((k, space_from_json(s)) for k, s in d["spaces"].items()))
    raise ValueError(f"unknown space type {kind!r}; a description is of a Box, Discrete or Dict")


# ---------------------------------------------------------------------------------------- what is stored
def check_action_space(space, env_id: str) -> None:
    """Refuse an action space ``collect`` cannot store: only Discrete and float Box are."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return
    if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
        return
    raise ValueError(
        f"env={env_id} has the action space {space}, which collect cannot store; "
        "it stores Discrete actions and Box actions of a float dtype"
    )


def _is_image(space) -> bool:
    return len(space.shape) == 3 and np.dtype(space.dtype) == np.uint8


def check_observation_space(space, env_id: str) -> None:
    """Refuse an observation space ``collect`` cannot store: a Box, or a Dict of Boxes."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return
    if isinstance(space, spaces.Dict):
        for k, s in space.spaces.items():
            if not isinstance(s, spaces.Box):
                what = "a nested Dict" if isinstance(s, spaces.Dict) else f"{s}"
                raise ValueError(
                    f"env={env_id}: observation key {k!r} is {what}, which collect cannot store; "
                    "it stores a Box observation or a Dict of Box observations (vectors or uint8 H x W x C images)"
                )
            if not KEY_PATTERN.match(str(k)) or str(k) in (".", ".."):
                raise ValueError(f"env={env_id}: observation key {k!r} is not a plain name (letters, digits, _ . + -)")
        return
    raise ValueError(
        f"env={env_id} has the observation space {space}, which collect cannot store; "
        "it stores a Box observation or a Dict of Box observations (vectors or uint8 H x W x C images)"
    )


def observation_layout(space) -> dict[str, dict[str, Any]]:
    """Stored key -> {shape, dtype, image} of each step's observation: ``obs`` for a Box, the
    Dict's keys for a Dict; ``image`` for uint8 H x W x C arrays (stored compressed)."""
    from gymnasium import spaces

    parts = space.spaces if isinstance(space, spaces.Dict) else {"obs": space}
    return {str(k): {"shape": [int(n) for n in s.shape], "dtype": str(np.dtype(s.dtype)), "image": _is_image(s)} for k, s in parts.items()}
