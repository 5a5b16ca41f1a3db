"""``dreamgym collect env=<id>``: episodes of any registered Gymnasium env into the same
crash-safe, resumable dataset format as the room's.

    dreamgym collect env=CartPole-v1 steps=2000 num_envs=4 out=data/cartpole
    dreamgym collect env=Pendulum-v1 'env_kwargs={g:9.81}' 'policy="random:0.5,held:0.5"' out=data/pendulum

How it runs:

- **Worlds.** ``num_envs`` copies of ``gym.make(env, **env_kwargs)`` step together in a
  ``gymnasium.vector.SyncVectorEnv`` with autoreset disabled: when an episode ends, its final
  observation is the one ``step`` returned, and the collector resets that world itself
  (``reset_mask``), with the episode's own seed. No step is ever a reset in disguise (as the
  NEXT_STEP autoreset's step after a done is), so every stored transition is a real one.
- **Rounds and seeds** (``resume.run_collection``, as for the room). Every world resets at the
  start of a round of ``round_steps`` steps; episodes still running when it ends are stored as
  truncated (attribute ``cut``). Episode ``e`` of world ``w`` in round ``r`` is reset with a seed
  drawn from ``(seed, r, w, e)`` (stored as its ``room_seed``, which also decides its split), and
  its behaviour and random actions come from generators seeded the same way, so an episode is a
  pure function of the settings and its place: a re-run replays the unfinished round without
  writing the episodes already stored, checks that their lengths come out the same, and ends
  with the episodes of an uninterrupted run.
- **Behaviours**, one per episode, drawn from the ``policy`` mix: ``random`` (a uniform sample of
  the action space every step; the default) or ``held`` (a sample held for 4-20 steps). The
  room's ``expert`` and ``noisy`` do not exist here and are refused.
- **Spaces.** Actions: Discrete (stored (T,) int64) or a float Box (stored (T, *shape) float32).
  Observations: a Box (stored as ``observations/obs``, its shape and dtype) or a Dict of Boxes
  (one ``observations/<key>`` each); uint8 H x W x C images are stored as the env gives them,
  compressed. No physics state (``qpos``/``qvel``). See ``DATASET.md``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .collect import HOLD_STEPS, parse_policy
from .dataset import FORMAT_VERSION, Manifest, room_split
from .gym_spaces import check_action_space, check_observation_space, observation_layout, space_to_json
from .resume import CollectResult, run_collection
from .writer import EpisodeBuffers, ShardWriter

__all__ = [
    "GYM_BEHAVIOURS",
    "GYM_RESUME_KEYS",
    "GymCollector",
    "collect_gym",
    "episode_seed",
    "gym_env_spec",
    "make_env",
    "parse_gym_policy",
]

GYM_BEHAVIOURS: tuple[str, ...] = ("random", "held")
# Settings a resumed collection must share with the run that started the dataset.
GYM_RESUME_KEYS = ("env_id", "env_kwargs", "num_envs", "seed", "policy", "round_steps")


def parse_gym_policy(spec: Any, env_id: str) -> dict[str, float]:
    """The behaviour mix for a Gymnasium env: ``random`` (default, ``spec`` None) and ``held``."""
    mix = parse_policy("random" if spec is None else spec)
    other = [k for k in mix if k not in GYM_BEHAVIOURS]
    if other:
        raise ValueError(
            f"policy names {other}, behaviours of the room (its scripted expert), which env={env_id} has not; "
            'use policy=random, policy=held or a mix such as policy="random:0.5,held:0.5"'
        )
    return mix


def episode_seed(seed: int, round_index: int, world: int, episode: int, stream: int = 0) -> int:
    """A seed in [0, 2**31) for episode ``episode`` of ``world`` in round ``round_index``:
    stream 0 resets the env, 1 seeds its action samples, 2 its behaviour and hold lengths."""
    s = np.random.SeedSequence([int(seed), int(round_index), int(world), int(episode), int(stream)]).generate_state(1, np.uint32)[0]
    return int(s) & 0x7FFFFFFF


def _json_kwargs(env_kwargs: Any) -> dict[str, Any]:
    if env_kwargs is None:
        return {}
    if not isinstance(env_kwargs, Mapping):
        raise ValueError(f"env_kwargs must be a mapping of keyword arguments for gym.make, e.g. env_kwargs={{g:9.81}}, got {env_kwargs!r}")
    try:
        return json.loads(json.dumps(dict(env_kwargs), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"env_kwargs must hold JSON values (numbers, strings, lists, mappings): {e}") from None


def make_env(env_id: str, env_kwargs: Mapping[str, Any]):
    """``gym.make(env_id, **env_kwargs)``; a ValueError naming what was wrong if it fails."""
    import gymnasium as gym

    import dreamgym.envs  # noqa: F401  (registers dreamgym/Pixels-v0 and the room's ids)

    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ValueError(
            f"env={env_id} is not a registered Gymnasium id ({e}); give one of gymnasium.registry, e.g. env=CartPole-v1"
        ) from None
    try:
        return gym.make(env_id, **env_kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise ValueError(f"env={env_id} needs a package that is not installed ({e})") from None
    except (TypeError, ValueError, AssertionError, KeyError, gym.error.Error) as e:
        raise ValueError(f"gym.make({env_id!r}) refused env_kwargs={env_kwargs} ({type(e).__name__}: {e}); fix env_kwargs=") from None


def _check_spaces(env, env_id: str) -> None:
    check_observation_space(env.observation_space, env_id)
    check_action_space(env.action_space, env_id)


def _time_limit(env) -> int | None:
    """The env's time limit: its registration's, else a ``TimeLimit`` wrapper's inside it."""
    import gymnasium as gym

    spec = getattr(env, "spec", None)
    if spec is not None and spec.max_episode_steps is not None:
        return int(spec.max_episode_steps)
    e = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, gym.wrappers.TimeLimit):
            return int(e._max_episode_steps)
        e = e.env
    return None


def gym_env_spec(env_id: str, env_kwargs: Mapping[str, Any], env) -> dict[str, Any]:
    """What a dataset records of the Gymnasium env that produced it (also in every shard's attrs)."""
    import gymnasium as gym

    layout = observation_layout(env.observation_space)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    return {
        "kind": "gym",
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs),
        "gymnasium_version": gym.__version__,
        "obs_layout_version": FORMAT_VERSION,
        "max_episode_steps": _time_limit(env),
        "observation_space": space_to_json(env.observation_space),
        "action_space": space_to_json(env.action_space),
        "observations": layout,
        "obs_keys": list(layout),
        "actions": {"shape": [] if discrete else [int(n) for n in env.action_space.shape], "dtype": "int64" if discrete else "float32"},
    }


def _obs_dict(obs: Any) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v) for k, v in obs.items()} if isinstance(obs, Mapping) else {"obs": np.asarray(obs)}


class GymBehaviours:
    """The behaviour of each world's current episode and its actions, seeded per episode."""

    def __init__(self, action_space, mix: Mapping[str, float], num_envs: int, actor=None):
        import gymnasium as gym

        if "actor" in mix and actor is None:
            raise ValueError("the behaviour mix names actor, but no actor was given")
        self.actor = actor

        self.B = int(num_envs)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.names = list(mix)
        self.weights = np.array(list(mix.values()), dtype=float)
        self.spaces = [copy.deepcopy(action_space) for _ in range(self.B)]
        self.rngs: list[np.random.Generator] = [np.random.default_rng(0) for _ in range(self.B)]
        self.behaviour = ["random"] * self.B
        self.held: list[Any] = [None] * self.B
        self.left = np.zeros(self.B, np.int64)  # steps the held action still lasts

    def start(self, w: int, seed: int, r: int, e: int) -> str:
        """Draw the behaviour of episode ``e`` of world ``w`` in round ``r``; returns its name."""
        self.spaces[w].seed(episode_seed(seed, r, w, e, 1))
        rng = self.rngs[w] = np.random.default_rng(episode_seed(seed, r, w, e, 2))
        self.behaviour[w] = self.names[int(rng.choice(len(self.names), p=self.weights))]
        self.left[w] = 0
        return self.behaviour[w]

    def actions(self, obs: Any = None) -> np.ndarray:
        """(B,) int64 or (B, *shape) float32: every world's next action (``obs``: every world's
        current observation, which the actor reads)."""
        acted = self.actor(obs) if self.actor is not None and "actor" in self.behaviour else None
        out = []
        for w in range(self.B):
            if self.behaviour[w] == "actor":
                out.append(np.asarray(acted[w]))
            elif self.behaviour[w] == "held":
                if self.left[w] <= 0:
                    self.held[w] = self.spaces[w].sample()
                    self.left[w] = int(self.rngs[w].integers(HOLD_STEPS[0], HOLD_STEPS[1] + 1))
                self.left[w] -= 1
                out.append(self.held[w])
            else:
                out.append(self.spaces[w].sample())
        return np.asarray(out, np.int64) if self.discrete else np.stack(out).astype(np.float32)


class GymCollector:
    """Runs rounds on a ``SyncVectorEnv`` (autoreset disabled), recording every world's episodes and
    handing finished ones to a ``ShardWriter``; episodes already ``stored`` (key -> steps) are
    replayed but not written."""

    def __init__(
        self,
        env,
        settings: Mapping[str, Any],
        writer: ShardWriter,
        stored: Mapping[str, int],
        heldout_fraction: float,
        capacity: int,
        actor=None,
    ):
        import gymnasium as gym

        self.env, self.settings, self.writer, self.actor = env, settings, writer, actor
        self.stored = dict(stored)
        self.heldout_fraction = float(heldout_fraction)
        self.B = env.num_envs
        space, act = env.single_observation_space, env.single_action_space
        parts = space.spaces if isinstance(space, gym.spaces.Dict) else {"obs": space}
        discrete = isinstance(act, gym.spaces.Discrete)
        shape, dtype = ((), np.int64) if discrete else (tuple(act.shape), np.float32)
        self.buf = EpisodeBuffers(self.B, int(capacity), {str(k): s for k, s in parts.items()}, None, None, shape, dtype)
        self.simulated = 0  # world-steps stepped
        self.new_steps = 0  # world-steps that belong to episodes not stored before

    def run_round(self, r: int, L: int, on_step=None) -> None:
        """Round ``r`` of ``L`` steps; ``on_step(new_world_steps, t)`` after every step."""
        env, buf, B, writer = self.env, self.buf, self.B, self.writer
        seed, env_id = int(self.settings["seed"]), self.settings["env_id"]
        writer.put("round_start", {"index": r, "steps": L})
        policy = GymBehaviours(env.single_action_space, self.settings["policy"], B, self.actor)
        last: list[Any] = [None]  # every world's current observation (the actor reads it)
        ep_count = np.zeros(B, np.int64)
        meta: list[dict[str, Any]] = [{} for _ in range(B)]

        def start(w: int) -> None:
            key, reset_seed = f"r{r}-w{w}-e{ep_count[w]}", episode_seed(seed, r, w, int(ep_count[w]))
            behaviour = policy.start(w, seed, r, int(ep_count[w]))
            split = room_split(reset_seed, self.heldout_fraction)
            meta[w] = {
                "key": key,
                "round": r,
                "world": w,
                "env_id": env_id,
                "room_seed": reset_seed,
                "behaviour": behaviour,
                "split": split,
            }

        def emit(w: int, terminated: bool, truncated: bool, cut: bool) -> None:
            m = meta[w]
            ep_count[w] += 1
            T = int(buf.pos[w])
            if m["key"] in self.stored:
                if T != self.stored[m["key"]]:
                    raise RuntimeError(
                        f"replaying round {r} diverged: episode {m['key']} has {T} steps, the dataset's {self.stored[m['key']]}; "
                        f"env={env_id} does not replay from its seeds, continue into a new out="
                    )
                return
            if T == 0:
                return
            writer.put("episode", buf.take(w, {**m, "terminated": bool(terminated), "truncated": bool(truncated), "cut": bool(cut)}))

        def reset(worlds: np.ndarray) -> None:
            seeds = [episode_seed(seed, r, w, int(ep_count[w])) if w in worlds else None for w in range(B)]
            mask = np.zeros(B, bool)
            mask[worlds] = True
            obs, _ = env.reset(seed=seeds, options={"reset_mask": mask} if len(worlds) < B else None)
            last[0] = obs
            buf.pos[worlds] = 0
            buf.put_obs(worlds, _obs_dict(obs))
            for w in worlds:
                start(int(w))

        reset(buf.rows)
        for t in range(L):
            act = policy.actions(last[0])
            obs, rew, term, trunc, _ = env.step(act)
            last[0] = obs
            fresh = sum(m["key"] not in self.stored for m in meta)
            term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
            buf.put_transition(act, np.asarray(rew, np.float32), term, trunc)
            buf.put_obs(buf.rows, _obs_dict(obs))  # an ended world's final observation
            done = term | trunc
            if done.any():
                ended = np.nonzero(done)[0]
                for w in ended:
                    emit(int(w), term[w], trunc[w], cut=False)
                reset(ended)
            self.simulated += B
            self.new_steps += fresh
            if on_step is not None:
                on_step(fresh, t)
        for w in range(B):  # episodes still running when the round ends are cut
            if buf.pos[w] > 0:
                buf.truncations[w, buf.pos[w] - 1] = True
            emit(w, False, True, cut=True)
        writer.put("round_end", r)


def _gym_settings(env_id, env_kwargs, steps, num_envs, policy, seed, round_steps, heldout_fraction, actor_name=None) -> dict[str, Any]:
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env must be a registered Gymnasium id such as env=CartPole-v1, got {env_id!r}")
    if int(num_envs) < 1 or int(steps) < 1 or int(round_steps) < 1:
        raise ValueError(f"num_envs, steps and round_steps must be positive, got {num_envs}, {steps}, {round_steps}")
    if not 0.0 <= float(heldout_fraction) < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return {
        "env_id": env_id,
        "env_kwargs": _json_kwargs(env_kwargs),
        "num_envs": int(num_envs),
        "seed": int(seed),
        "policy": {"actor": 1.0} if actor_name is not None else parse_gym_policy(policy, env_id),
        "round_steps": int(round_steps),
        **({"actor": str(actor_name)} if actor_name is not None else {}),
    }


def collect_gym(
    out: str | Path,
    *,
    env: str,
    env_kwargs: Mapping[str, Any] | None = None,
    steps: int = 20000,
    num_envs: int = 16,
    policy: Any = None,
    seed: int = 0,
    round_steps: int = 500,
    shard_episodes: int = 16,
    heldout_fraction: float = 0.1,
    compression: str | None = "gzip",
    compression_level: int | None = 1,
    image_chunk_steps: int = 4,
    queue_episodes: int = 16,
    stop_after_steps: int | None = None,
    progress: bool = True,
    actor=None,
    actor_name: str | None = None,
) -> CollectResult:
    """Collect (or continue collecting) ``steps`` transitions of the Gymnasium env ``env``
    (``gym.make(env, **env_kwargs)``) into the dataset at ``out``; ``policy`` None: random.

    ``actor`` (Python callers, such as ``diamond env=<id>``): ``actor(obs) -> actions``, a batch
    of every world's observations in, a batch of actions out; it acts in every episode (behaviour
    ``actor``) instead of the ``policy`` mix. ``actor_name`` names it in the manifest, and a
    resumed collection must name the same one.

    Resuming, extending and the refusal of other settings (``GYM_RESUME_KEYS``,
    ``heldout_fraction``) work as for the room's ``collect``. Raises ValueError (one line) for an
    unregistered id, env_kwargs that ``gym.make`` refuses, or spaces that cannot be stored.
    """
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    if (actor is None) != (actor_name is None):
        raise ValueError("give actor and actor_name together (the name is what a resumed collection checks)")
    settings = _gym_settings(env, env_kwargs, steps, num_envs, policy, seed, round_steps, heldout_fraction, actor_name)
    env_id, kwargs, B = settings["env_id"], settings["env_kwargs"], settings["num_envs"]
    first = make_env(env_id, kwargs)
    try:
        _check_spaces(first, env_id)
    except ValueError:
        first.close()
        raise
    spec = gym_env_spec(env_id, kwargs, first)
    vec = SyncVectorEnv([lambda: first] + [lambda: make_env(env_id, kwargs)] * (B - 1), autoreset_mode=AutoresetMode.DISABLED)

    def open_env():
        def make_collector(writer: ShardWriter, manifest: Manifest, capacity: int) -> GymCollector:
            stored = {e["key"]: int(e["steps"]) for _, e in manifest.episodes()}
            return GymCollector(vec, settings, writer, stored, float(heldout_fraction), capacity, actor)

        return spec, make_collector

    try:
        return run_collection(
            out,
            settings,
            steps=int(steps),
            heldout_fraction=float(heldout_fraction),
            open_env=open_env,
            desc=f"collect {env_id} (stored)",
            shard_episodes=shard_episodes,
            queue_episodes=queue_episodes,
            shard_kwargs={
                "compression": compression or None,
                "compression_level": compression_level,
                "image_chunk_steps": int(image_chunk_steps),
            },
            stop_after_steps=stop_after_steps,
            progress=progress,
            resume_keys=GYM_RESUME_KEYS + (("actor",) if actor is not None else ()),
            kind="gym",
        )
    finally:
        vec.close()


def gym_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``collect_gym`` keyword arguments from a ``configs/collect.yaml``-shaped config with ``env``
    set; the room's settings (task, noise, resolution, obs_keys) do not apply and are left out."""
    c = OmegaConf.to_container(cfg, resolve=True)
    names = (
        "env",
        "env_kwargs",
        "steps",
        "num_envs",
        "policy",
        "seed",
        "round_steps",
        "shard_episodes",
        "heldout_fraction",
        "compression",
        "compression_level",
        "image_chunk_steps",
        "queue_episodes",
        "stop_after_steps",
        "progress",
    )
    return {k: c[k] for k in names if k in c}
