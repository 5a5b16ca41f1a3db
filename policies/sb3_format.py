"""dreamgym's format for Stable-Baselines3 policies: ``policy.safetensors`` plus ``policy.json``.

SB3's own ``.zip`` unpickles its ``data`` part when loaded, so a zip from elsewhere can run any
code. Here the policy network's state dict goes to safetensors, and everything needed to rebuild
the network goes to JSON:

- ``algo`` (``ppo`` or ``sac``, which fixes the SB3 policy class);
- ``policy_kwargs``: the network's constructor arguments as SB3 reports them
  (``_get_constructor_parameters``): the observation and action spaces (as JSON, keys in order),
  ``net_arch``, the activation, the features extractor, ``log_std_init`` and the rest. Classes are
  stored by name and looked up in fixed tables (``CLASSES``), never imported by a name from the file.

The observation statistics that ``networks.ObsExtractor`` standardises with are buffers of the
network (``features_extractor.mean_<key>`` / ``std_<key>``), so they travel in the safetensors with
the weights. Loading builds the SB3 policy object from the JSON and calls ``load_state_dict``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .errors import CheckpointError
from .weights import atomic_write_json, read_json, read_safetensors, write_safetensors

FORMAT_VERSION = 1
WEIGHTS = "policy.safetensors"
CONFIG = "policy.json"
ALGOS = ("ppo", "sac")


def _classes() -> dict[str, dict[str, type]]:
    """The classes a policy.json may name, per role (nothing else can be built from a file)."""
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

    from .networks import ObsExtractor, PixelExtractor

    return {
        "activation_fn": {c.__name__: c for c in (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU)},
        "optimizer_class": {c.__name__: c for c in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.SGD)},
        "features_extractor_class": {c.__name__: c for c in (ObsExtractor, PixelExtractor, FlattenExtractor, CombinedExtractor)},
    }


def policy_classes(algo: str) -> dict[str, type]:
    """The SB3 policy classes ``algo`` may save as, by name: its ``MultiInputPolicy`` (Dict
    observations: the room) and its ``MlpPolicy`` (a Box: a Gymnasium env's own observations)."""
    from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
    from stable_baselines3.sac.policies import MultiInputPolicy as SACMultiInputPolicy
    from stable_baselines3.sac.policies import SACPolicy

    table = {"ppo": (MultiInputActorCriticPolicy, ActorCriticPolicy), "sac": (SACMultiInputPolicy, SACPolicy)}
    if algo not in table:
        raise CheckpointError(f"unknown algo {algo!r}; valid: {list(table)}")
    return {c.__name__: c for c in table[algo]}


def policy_class(algo: str, name: str | None = None) -> type:
    """The SB3 policy class called ``name`` of ``algo`` (None: its ``MultiInputPolicy``)."""
    classes = policy_classes(algo)
    if name is None:
        return next(iter(classes.values()))
    if name not in classes:
        raise CheckpointError(f"policy_class {name!r} is not one a {algo} policy saves as ({list(classes)})")
    return classes[name]


# ----------------------------------------------------------------------------- spaces as JSON
def _bound(a: np.ndarray) -> Any:
    """A Box bound as JSON: one number when every entry is equal, else the nested list; infinities as strings."""
    a = np.asarray(a, dtype=np.float64)
    flat = a.reshape(-1)
    enc = lambda x: ("inf" if x > 0 else "-inf") if math.isinf(x) else float(x)  # noqa: E731
    if flat.size and (flat == flat[0]).all():
        return enc(float(flat[0]))
    return np.vectorize(enc, otypes=[object])(a).tolist()


def _unbound(v: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    dec = lambda x: float(x) if isinstance(x, str) else x  # noqa: E731  ("inf" -> inf)
    if isinstance(v, list):
        return np.vectorize(dec, otypes=[np.float64])(np.asarray(v, dtype=object)).astype(dtype)
    return np.full(shape, dec(v), dtype=dtype)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A Box, Discrete or Dict space (Dict keys in their order) as plain JSON."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": [[k, space_to_json(s)] for k, s in space.spaces.items()]}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ValueError(f"cannot store a {type(space).__name__} space in policy.json (Box, Discrete and Dict are supported)")


def space_from_json(d: Mapping[str, Any]) -> spaces.Space:
    """The space ``space_to_json`` wrote."""
    kind = d.get("type")
    if kind == "Dict":
        return spaces.Dict(OrderedDict((str(k), space_from_json(s)) for k, s in d["spaces"]))
    if kind == "Box":
        shape = tuple(int(x) for x in d["shape"])
        dtype = np.dtype(str(d["dtype"]))
        if dtype.kind not in "uif":
            raise ValueError(f"Box dtype {dtype} is not a number type")
        return spaces.Box(_unbound(d["low"], shape, dtype), _unbound(d["high"], shape, dtype), shape, dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    raise ValueError(f"unknown space type {kind!r}; valid: Box, Discrete, Dict")


# ----------------------------------------------------------------------------- constructor arguments
def _encode(key: str, v: Any, classes: Mapping[str, Mapping[str, type]]) -> Any:
    if isinstance(v, spaces.Space):
        return {"space": space_to_json(v)}
    if isinstance(v, type):
        for name, c in classes.get(key, {}).items():
            if v is c:
                return {"class": name}
        raise ValueError(f"policy argument {key}={v.__name__} cannot be stored; allowed: {sorted(classes.get(key, {}))}")
    if isinstance(v, dict):
        return {"dict": {str(k): _encode(f"{key}.{k}", x, classes) for k, x in v.items()}}
    if isinstance(v, (list, tuple)):
        return [_encode(key, x, classes) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ValueError(f"policy argument {key}={v!r} cannot be stored in JSON")


def _decode(key: str, v: Any, classes: Mapping[str, Mapping[str, type]]) -> Any:
    if isinstance(v, dict) and set(v) == {"space"}:
        return space_from_json(v["space"])
    if isinstance(v, dict) and set(v) == {"class"}:
        table = classes.get(key, {})
        if v["class"] not in table:
            raise ValueError(f"{key}: unknown class {v['class']!r}; allowed: {sorted(table)}")
        return table[v["class"]]
    if isinstance(v, dict) and set(v) == {"dict"}:
        return {k: _decode(f"{key}.{k}", x, classes) for k, x in v["dict"].items()}
    if isinstance(v, list):
        return [_decode(key, x, classes) for x in v]
    if isinstance(v, dict):
        raise ValueError(f"{key}: unexpected JSON object {sorted(v)}")
    return v


def policy_kwargs_to_json(network: Any) -> dict[str, Any]:
    """The network's constructor arguments as JSON (the schedule and the observation statistics,
    which live in the weights, are left out)."""
    params = dict(network._get_constructor_parameters())
    params.pop("lr_schedule", None)
    fx = dict(params.get("features_extractor_kwargs") or {})
    fx.pop("stats", None)  # buffers of ObsExtractor: in the safetensors
    params["features_extractor_kwargs"] = fx
    classes = _classes()
    return {k: _encode(k, v, classes) for k, v in params.items()}


def policy_kwargs_from_json(d: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments from ``policy_kwargs_to_json``'s output."""
    classes = _classes()
    return {k: _decode(k, v, classes) for k, v in d.items()}


# ----------------------------------------------------------------------------- state dicts
def shared_names(module: nn.Module) -> dict[str, str]:
    """``{name: first name}`` for state-dict entries that are the same tensor as an earlier one
    (PPO's actor and critic share one features extractor, so its buffers appear three times)."""
    first: dict[tuple, str] = {}
    alias = {}
    for k, t in module.state_dict().items():
        if t.numel() == 0:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if ident in first:
            alias[k] = first[ident]
        else:
            first[ident] = k
    return alias


def unique_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict without the names that repeat a shared tensor."""
    alias = shared_names(module)
    return {k: v for k, v in module.state_dict().items() if k not in alias}


def load_unique_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: Path) -> None:
    """Load what ``unique_state_dict`` gave, naming ``source`` when tensors are missing, extra or misshapen."""
    full = dict(sd)
    for k, first in shared_names(module).items():
        if k not in full and first in full:
            full[k] = full[first]
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(full)), sorted(set(full) - set(own))
    bad = [f"{k} {tuple(full[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in full and full[k].shape != own[k].shape]
    if missing or extra or bad:
        parts = [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {extra[:3]}" if extra else "",
            f"shapes {bad[:3]}" if bad else "",
        ]
        raise CheckpointError(f"{source}: the tensors do not fit the network its config describes ({'; '.join(p for p in parts if p)})")
    module.load_state_dict(full)


# ----------------------------------------------------------------------------- save / load
def save_sb3_policy(network: Any, algo: str, out: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``out/policy.safetensors`` and ``out/policy.json`` (family ``sb3``, plus ``meta``); returns the weights' path.

    The JSON is written first and the weights last, each atomically: a folder with the weights
    holds a config that fits them.
    """
    if type(network) not in policy_classes(algo).values():
        raise ValueError(f"a {algo} policy saves as one of {list(policy_classes(algo))}, got {type(network).__name__}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "family": "sb3",
        "format_version": FORMAT_VERSION,
        "algo": algo,
        "policy_class": type(network).__name__,
        "policy_kwargs": policy_kwargs_to_json(network),
        **dict(meta or {}),
    }
    atomic_write_json(out / CONFIG, config)
    return write_safetensors(unique_state_dict(network), out / WEIGHTS, metadata={"format": "dreamgym-sb3-policy"})


def policy_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, config) of a policy given as its folder or as its ``policy.safetensors``."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    return folder / WEIGHTS, folder / CONFIG


def read_policy_config(cfg_file: Path) -> dict[str, Any]:
    """A policy.json, checked for the keys and the format version this code reads."""
    cfg = read_json(cfg_file, "policy config")
    need = [k for k in ("algo", "policy_kwargs") if k not in cfg]
    if need:
        raise CheckpointError(f"{cfg_file}: missing {need} (an SB3 policy config names its algo and policy_kwargs)")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{cfg_file}: format_version {version!r} is not a version this dreamgym wrote")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file}: format_version {version} is newer than this dreamgym reads ({FORMAT_VERSION}); update dreamgym")
    if cfg["algo"] not in ALGOS:
        raise CheckpointError(f"{cfg_file}: algo {cfg['algo']!r} is not one of {list(ALGOS)}")
    return cfg


def build_sb3_network(cfg: Mapping[str, Any], cfg_file: Path | str = CONFIG) -> Any:
    """An SB3 policy network, untrained, as a policy.json describes it."""
    try:
        kwargs = policy_kwargs_from_json(cfg["policy_kwargs"])
        obs_space, act_space = kwargs.pop("observation_space"), kwargs.pop("action_space")
        return policy_class(str(cfg["algo"]), cfg.get("policy_class"))(obs_space, act_space, lambda _: 0.0, **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: cannot rebuild the policy network from it ({type(e).__name__}: {e})") from None


def load_sb3_network(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """(network, config) of a policy saved by ``save_sb3_policy``; nothing is unpickled."""
    weights, cfg_file = policy_files(path)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: file not found (a dreamgym SB3 policy is {WEIGHTS} beside {CONFIG})")
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: missing: {weights.name} needs it to say how to rebuild the network (algo, spaces, net_arch)")
    cfg = read_policy_config(cfg_file)
    network = build_sb3_network(cfg, cfg_file)
    load_unique_state_dict(network, read_safetensors(weights), weights)
    network.set_training_mode(False)
    return network.to(device), cfg
