"""The policy interface every policy family meets, the built-in policies and the loader registry.

A **policy** is anything with

- ``obs_keys``: the observation keys it reads (an evaluator asks the env for exactly these; state
  keys such as ``task_obs``/``motion`` make the simulator skip rendering);
- ``act(obs, deterministic=True) -> (B, 6) float tensor``: ``obs`` maps each of ``obs_keys`` to a
  batched tensor (B, ...) in the env's dtypes (``ego_rgb`` uint8, ``instruction`` long, the rest
  float32); the actions are in [-1, 1] on the device of ``obs``;

and optionally

- ``reset(mask)``: called with a (B,) bool tensor when episodes end (recurrent or stateful policies
  clear their memory for those rows; stateless policies need not define it);
- ``bind(env)``: called once before a rollout with the batched env (or a view of some of its rows);
  policies that read privileged state through the env, such as the scripted expert, use it.

Real and dream envs share one step API, so the same ``act`` runs in both. Families plug in by
registering a loader::

    from dreamgym.policies.base import register_policy_loader
    register_policy_loader("vla", matches=lambda p: ..., load=lambda spec, task, device: MyVLA(...))

``load_policy(spec)`` tries, in order: a ``Policy`` instance (returned as is), the built-in names
``expert`` (``expert:noise=0.3``: Gaussian noise when sampling) and ``random`` (``random:hold=10``:
each action held for 10 steps), a directory (or file beside) with ``policy.json`` whose ``"family"``
names a registered loader, then each registered loader's ``matches``. ``train-policy`` writes
``policy.safetensors`` + ``policy.json`` (family ``sb3``, see ``sb3_format``), read without
unpickling; a Stable-Baselines3 ``.zip`` is loaded only with ``allow_pickle=True``, since its
loading runs whatever code a crafted file holds. Modules named in ``LOADER_MODULES`` are imported
first so that the families of other modules (``policies/vla*.py``, ``policies/social*.py``) register themselves.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .run_record import check_finished
from .sb3_format import ALGOS as ALGOS
from .sb3_format import WEIGHTS, load_sb3_network, policy_files
from .weights import read_json

ACTION_DIM = 6
POLICY_CONFIG = "policy.json"
# Modules whose import registers more policy families (missing ones are skipped).
LOADER_MODULES: list[str] = ["dreamgym.policies.vla", "dreamgym.policies.social"]


@runtime_checkable
class Policy(Protocol):
    """What an evaluator or a training loop needs from a policy (see the module docstring)."""

    obs_keys: tuple[str, ...]

    def act(self, obs: Mapping[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        """(B, 6) actions in [-1, 1] for a batch of observations."""
        ...


def check_actions(actions: torch.Tensor, batch: int, who: str) -> torch.Tensor:
    """Raise naming ``who`` when a policy returned the wrong shape or non-finite actions."""
    if not isinstance(actions, torch.Tensor):
        raise TypeError(f"{who}.act returned {type(actions).__name__}, expected a torch.Tensor of shape ({batch}, {ACTION_DIM})")
    if tuple(actions.shape) != (batch, ACTION_DIM):
        raise ValueError(f"{who}.act returned actions of shape {tuple(actions.shape)}, expected ({batch}, {ACTION_DIM})")
    if not bool(torch.isfinite(actions).all()):
        raise ValueError(f"{who}.act returned NaN or infinite actions")
    return actions


def _batch_size(obs: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(obs.values())).shape[0])


# ----------------------------------------------------------------------------- built-in policies
class ExpertPolicy:
    """The task's scripted expert: reads privileged state through the env it is bound to.

    It works in any env with ``expert_actions()`` (``EgoRoomVecEnv``, ``DreamVecEnv``), and is what
    ``policy=expert`` means on the command line.
    """

    obs_keys: tuple[str, ...] = ("task_obs",)

    def __init__(self, noise: float = 0.0, seed: int = 0):
        self.noise = float(noise)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.env: Any = None

    def bind(self, env: Any) -> None:
        if not hasattr(env, "expert_actions"):
            raise TypeError(f"the expert policy needs an env with expert_actions(); {type(env).__name__} has none")
        self.env = env

    def act(self, obs: Mapping[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        if self.env is None:
            raise RuntimeError("ExpertPolicy.act before bind(env): the expert reads the env's state")
        a = self.env.expert_actions()
        if self.noise > 0 and not deterministic:
            a = a + self.noise * torch.randn(a.shape, generator=self.gen).to(a.device)
        return a.clamp(-1.0, 1.0)


class RandomPolicy:
    """Uniform random actions in [-1, 1] (``random``), each held for ``hold`` steps (``random:hold=10``).

    Held actions make the body actually walk and turn (a fresh action every 50 ms mostly cancels
    out in the gait controller), which is what a world model needs to see to learn the controls.
    """

    obs_keys: tuple[str, ...] = ("task_obs",)

    def __init__(self, seed: int = 0, hold: int = 1):
        if int(hold) < 1:
            raise ValueError(f"hold must be at least 1 step, got {hold}")
        self.gen = torch.Generator().manual_seed(int(seed))
        self.hold = int(hold)
        self._action: torch.Tensor | None = None
        self._age: torch.Tensor | None = None

    def reset(self, mask: torch.Tensor) -> None:
        if self._age is not None and len(mask) == len(self._age):
            self._age[mask.cpu()] = self.hold  # draw afresh at the next step

    def act(self, obs: Mapping[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        B = _batch_size(obs)
        dev = next(iter(obs.values())).device
        fresh = torch.rand(B, ACTION_DIM, generator=self.gen) * 2 - 1
        if self._action is None or self._action.shape[0] != B:
            self._action, self._age = fresh, torch.zeros(B, dtype=torch.long)
        else:
            redraw = self._age >= self.hold
            self._action = torch.where(redraw[:, None], fresh, self._action)
            self._age = torch.where(redraw, 0, self._age)
        self._age += 1
        return self._action.to(dev)


def _parse_builtin(spec: str) -> tuple[str, dict[str, float]]:
    """``"random:hold=10,seed=3"`` -> ("random", {"hold": 10.0, "seed": 3.0})."""
    name, _, rest = spec.partition(":")
    kw = {}
    for part in filter(None, rest.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise ValueError(f"policy {spec!r}: options look like name:key=value,key=value")
        kw[k.strip()] = float(v)
    return name, kw


class SB3Policy:
    """A Stable-Baselines3 policy network (PPO's or SAC's) behind the ``Policy`` interface.

    Built from a network (``stable_baselines3`` ``BasePolicy``) or from an algorithm object (its
    ``.policy`` is used). ``act`` calls the network on torch tensors directly (no numpy round
    trip); Box actions are clipped (Gaussian policies) or unscaled (squashed policies) as
    ``predict`` does. ``SB3Policy.load`` reads dreamgym's ``policy.safetensors`` + ``policy.json``
    without unpickling anything.
    """

    def __init__(self, network: Any, exploration_noise: float = 0.0, seed: int = 0, algo: str | None = None):
        from gymnasium import spaces
        from stable_baselines3.common.base_class import BaseAlgorithm

        if isinstance(network, BaseAlgorithm):
            algo = algo or type(network).__name__.lower()
            network = network.policy
        self.network = network
        self.algo = algo
        space = network.observation_space
        if not isinstance(space, spaces.Dict):
            raise TypeError(f"SB3Policy needs a network trained on a Dict observation space, got {type(space).__name__}")
        from dreamgym.envs.spaces import OBS_KEYS

        self.obs_keys = tuple(k for k in OBS_KEYS if k in space.spaces)  # SB3 sorts Dict keys; use the env's order
        self.exploration_noise = float(exploration_noise)
        self.gen = torch.Generator().manual_seed(int(seed))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SB3Policy:
        """A policy saved by ``train-policy`` (its folder or its ``policy.safetensors``); nothing is unpickled.

        A train-policy run folder must have finished (its ``run.json``), else ``CheckpointError``.
        """
        weights, _ = policy_files(path)
        network, cfg = load_sb3_network(path, device)
        check_finished(weights.parent, cfg)
        return cls(network, algo=str(cfg["algo"]))

    @classmethod
    def load_zip(cls, path: str | Path, device: str | torch.device = "cpu", allow_pickle: bool = False) -> SB3Policy:
        """A Stable-Baselines3 ``.zip``; refused unless ``allow_pickle`` (loading it unpickles)."""
        model = load_sb3_model(path, device, allow_pickle=allow_pickle)
        return cls(model)

    def act(self, obs: Mapping[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        from gymnasium import spaces

        pol = self.network
        pol.set_training_mode(False)
        dev = pol.device
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"the policy reads observation keys {list(self.obs_keys)}; the env gave {sorted(obs)} (missing {missing})")
        x = {k: torch.as_tensor(obs[k]).to(dev) for k in self.obs_keys}
        with torch.no_grad():
            a = pol._predict(x, deterministic=deterministic).float()
        if pol.squash_output:
            space = pol.action_space
            assert isinstance(space, spaces.Box)
            low = torch.as_tensor(space.low, device=a.device)
            high = torch.as_tensor(space.high, device=a.device)
            a = low + 0.5 * (a + 1.0) * (high - low)
        if self.exploration_noise > 0:
            a = a + self.exploration_noise * torch.randn(a.shape, generator=self.gen).to(a.device)
        out_dev = next(iter(obs.values())).device
        return a.clamp(-1.0, 1.0).to(out_dev)


def sb3_algo_class(algo: str):
    """The SB3 class for ``algo`` (``ppo`` or ``sac``)."""
    from stable_baselines3 import PPO, SAC

    classes = {"ppo": PPO, "sac": SAC}
    if algo not in classes:
        raise ValueError(f"unknown algo {algo!r}; valid: {list(classes)}")
    return classes[algo]


def pickle_refusal(path: Path) -> str:
    """The one-line refusal of an SB3 zip without the opt-in."""
    return (
        f"{path}: refused: a Stable-Baselines3 .zip unpickles its 'data' part when loaded, which runs any code "
        f"a crafted file holds; pass allow_pickle=true only for a file you trust (train-policy writes {WEIGHTS} + {POLICY_CONFIG})"
    )


def load_sb3_model(path: str | Path, device: str | torch.device = "cpu", allow_pickle: bool = False):
    """An SB3 model from its ``.zip`` -- this unpickles, so only with ``allow_pickle=True``
    (else ``UnsafeCheckpointError``). The algorithm comes from the zip's ``policy_class`` entry."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"policy checkpoint not found: {p}")
    if not allow_pickle:
        raise UnsafeCheckpointError(pickle_refusal(p))
    algo = sb3_algo_of(p)
    return sb3_algo_class(algo).load(str(p), device=device)


def sb3_algo_of(p: Path) -> str:
    """Read which algorithm saved an SB3 zip (PPO's policies are actor-critic, SAC's are not)."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            data = json.loads(z.read("data").decode())
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: not a Stable-Baselines3 checkpoint ({e})") from None
    module = str(data.get("policy_class", {}).get("__module__", ""))
    if "sac" in module:
        return "sac"
    if "ppo" in module or "common.policies" in module:
        return "ppo"
    raise CheckpointError(f"{p}: cannot tell which SB3 algorithm saved it (policy class module {module!r}); expected PPO or SAC")


def sb3_zip_of(p: Path) -> Path | None:
    """The SB3 ``.zip`` that loading ``p`` would unpickle: ``p`` itself, or the ``policy.zip`` of a
    folder without ``policy.safetensors`` (a run of an older dreamgym)."""
    if p.is_file() and p.suffix == ".zip":
        return p
    if p.is_dir() and (p / "policy.zip").is_file() and not (p / WEIGHTS).is_file():
        return p / "policy.zip"
    return None


# ----------------------------------------------------------------------------- registry
@dataclass
class PolicyLoader:
    """How to recognise and load one policy family."""

    name: str
    matches: Callable[[Path], bool]
    load: Callable[..., Policy]  # load(spec: Path, task: str, device) -> Policy


POLICY_LOADERS: dict[str, PolicyLoader] = {}


def register_policy_loader(name: str, matches: Callable[[Path], bool], load: Callable[..., Policy]) -> None:
    """Register (or replace) the loader of a policy family."""
    POLICY_LOADERS[name] = PolicyLoader(name, matches, load)


def _is_sb3(p: Path) -> bool:
    return (p.is_file() and p.name == WEIGHTS) or (p.is_dir() and (p / WEIGHTS).is_file())


def _load_sb3(p: Path, task: str | None = None, device: str | torch.device = "cpu") -> SB3Policy:
    return SB3Policy.load(p, device)


# a train-policy run folder or checkpoint (policy.safetensors + policy.json, family "sb3")
register_policy_loader("sb3", matches=_is_sb3, load=_load_sb3)


def _import_family_modules() -> None:
    for mod in LOADER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the module exists but something it imports does not
                raise


def load_policy(
    spec: str | Path | Policy, task: str = "reach", device: str | torch.device = "cpu", seed: int = 0, allow_pickle: bool = False
) -> Policy:
    """A policy from an instance, a built-in name (``expert``, ``random``) or a checkpoint path.

    Nothing is unpickled unless ``allow_pickle``: a Stable-Baselines3 ``.zip`` (or a folder holding
    only one) raises ``UnsafeCheckpointError`` without it. A train-policy run folder that has not
    finished raises ``CheckpointError``. Raises ``ValueError`` listing what is understood when
    nothing matches.
    """
    if not isinstance(spec, (str, Path)):
        if isinstance(spec, Policy):
            return spec
        raise TypeError(f"not a policy: {type(spec).__name__} has no obs_keys/act")
    s = str(spec)
    name, kw = _parse_builtin(s) if s.split(":")[0] in ("expert", "random") else (s, {})
    if name == "expert":  # expert[:noise=0.3]
        return ExpertPolicy(noise=kw.get("noise", 0.0), seed=int(kw.get("seed", seed)))
    if name == "random":  # random[:hold=10]
        return RandomPolicy(seed=int(kw.get("seed", seed)), hold=int(kw.get("hold", 1)))
    _import_family_modules()
    p = Path(s)
    check_finished(p if p.is_dir() else p.parent)  # a train-policy run folder: only once it has finished
    zipped = sb3_zip_of(p)
    if zipped is not None:  # before anything reads it
        return SB3Policy.load_zip(zipped, device, allow_pickle=allow_pickle)
    cfg_file = p / POLICY_CONFIG if p.is_dir() else p.parent / POLICY_CONFIG
    if cfg_file.exists():
        family = read_json(cfg_file, "policy config").get("family")
        if family in POLICY_LOADERS:
            return POLICY_LOADERS[family].load(p, task=task, device=device)
        if family is not None:
            raise CheckpointError(f"{cfg_file}: policy family {family!r} is not registered; known: {sorted(POLICY_LOADERS)}")
    if not p.exists():
        raise FileNotFoundError(f"policy {s!r} is neither 'expert', 'random' nor an existing checkpoint path")
    for loader in POLICY_LOADERS.values():
        if loader.matches(p):
            return loader.load(p, task=task, device=device)
    raise CheckpointError(
        f"no policy loader recognises {p}; built-ins: 'expert', 'random'; registered families: {sorted(POLICY_LOADERS)} "
        f"(train-policy writes {WEIGHTS} + {POLICY_CONFIG}; other families put a {POLICY_CONFIG} naming their family beside the weights)"
    )


def required_obs_keys(policies: Sequence[Policy]) -> tuple[str, ...]:
    """The union of the observation keys of ``policies``, in the env's canonical order."""
    from dreamgym.envs.spaces import OBS_KEYS

    want = {k for p in policies for k in p.obs_keys}
    unknown = sorted(want - set(OBS_KEYS))
    if unknown:
        raise ValueError(f"policies read unknown observation keys {unknown}; valid: {list(OBS_KEYS)}")
    return tuple(k for k in OBS_KEYS if k in want)
