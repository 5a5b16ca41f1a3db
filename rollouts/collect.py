"""``dreamgym collect``: episodes from ``EgoRoomVecEnv`` into a crash-safe, resumable dataset.

    dreamgym collect task=reach steps=20000 'policy="expert:0.5,noisy:0.3,random:0.2"' out=data/reach

(Hydra reads an unquoted comma as a sweep: quote the mix as above, or write it as a dict,
``policy={expert:0.5,noisy:0.3,random:0.2}``.)

How collection is organised, and why:

- **Rounds.** The B worlds are reset together at the start of every round, with rooms drawn from a
  seed that depends only on ``(seed, round)``; within a round, worlds auto-reset as episodes end.
  A round lasts ``round_steps`` steps; episodes still running when it ends are stored as truncated
  (``truncations[-1]`` true, attribute ``cut``). MuJoCo Warp on CPU is deterministic, so a round
  is a pure function of its seed, which is what makes collection resumable: a re-run replays the
  unfinished round (writing none of the episodes it already has, and checking that their rooms
  come out the same) and carries on, so the result is the one an uninterrupted run gives, episode
  for episode.
- **Budget.** ``steps`` counts transitions over all worlds: each world runs ``ceil(steps / B)``
  steps, every one of which lands in exactly one stored episode.
- **Behaviours.** Each episode gets one behaviour, drawn when it starts from the ``policy`` mix:
  ``expert`` (the task's scripted expert), ``noisy`` (expert plus Gaussian noise of std ``noise``,
  clipped to [-1, 1]), ``random`` (uniform in [-1, 1], drawn anew every step) or ``held``
  (uniform in [-1, 1], each draw held for 4-20 steps: the body walks and turns for real, which
  i.i.d. random actions, averaging out within a few steps, never do; a world model needs such
  sustained, off-expert commands to learn what its actions do).
- **Nothing lost.** Finished episodes go through a bounded queue to a writer thread that packs
  ``shard_episodes`` of them into a shard (see ``dataset``), so stepping never waits for disk. A
  ``SIGKILL`` loses only the episodes not yet in a shard; Ctrl-C or ``stop_after_steps`` also
  writes the finished ones out first. The progress bar counts the steps in listed shards (what a
  kill would keep), and says how many stepped ones are not stored yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .dataset import Manifest, room_split
from .resume import CollectResult, run_collection
from .writer import EpisodeBuffers, ShardWriter, _np, env_spec

__all__ = [
    "BEHAVIOURS",
    "BehaviourMix",
    "CollectResult",
    "Collector",
    "EpisodeBuffers",
    "ShardWriter",
    "collect",
    "env_spec",
    "parse_policy",
    "run",
]

BEHAVIOURS: tuple[str, ...] = ("expert", "noisy", "random", "held")
ROOM_POLICY = "expert:0.5,noisy:0.3,random:0.2"  # the room's default behaviour mix
EXPERT, NOISY, RANDOM, HELD = range(4)
HOLD_STEPS = (4, 20)  # a held random action lasts this many steps (inclusive), uniformly drawn
# Settings a resumed collection must share with the run that started the dataset.
RESUME_KEYS = ("task", "num_envs", "seed", "policy", "noise", "resolution", "round_steps", "obs_keys")


def parse_policy(spec: str | Mapping[str, float] | Sequence[str]) -> dict[str, float]:
    """A behaviour mix from ``"expert:0.5,noisy:0.3,random:0.2"`` (or a dict, or a list of
    ``"name:weight"``); a bare name means weight 1. Weights are normalised to sum to 1."""
    if isinstance(spec, str):
        items = [s for s in spec.replace("+", ",").split(",") if s.strip()]
    elif isinstance(spec, Mapping):
        items = [f"{k}:{v}" for k, v in spec.items()]
    else:
        items = [str(s) for s in spec]
    mix: dict[str, float] = {}
    for item in items:
        name, _, weight = item.strip().partition(":")
        name = name.strip()
        if name not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {name!r} in policy {spec!r}; choose from {list(BEHAVIOURS)}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"behaviour weight {weight!r} in policy {spec!r} is not a number") from None
        if w < 0 or not math.isfinite(w):
            raise ValueError(f"behaviour weight for {name!r} must be a finite number >= 0, got {w}")
        mix[name] = mix.get(name, 0.0) + w
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"policy {spec!r} gives no behaviour a positive weight, e.g. policy=expert:0.5,random:0.5")
    return {k: round(mix[k] / total, 12) for k in BEHAVIOURS if mix.get(k, 0) > 0}


def round_seed(seed: int, index: int, num_envs: int) -> int:
    """The seed of round ``index``: its worlds start in rooms ``round_seed + i``."""
    s = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(s % np.uint64(2**31 - 1 - num_envs))


class BehaviourMix:
    """The behaviours of one round: who acts how, drawn per episode, and their actions.

    Everything random comes from generators seeded by ``(seed, round)``, so a round replays
    exactly; ``bench collect`` drives its bare-env baseline with the same object.
    """

    def __init__(self, mix: Mapping[str, float], noise: float, seed: int, round_index: int, num_envs: int):
        self.codes = np.array([BEHAVIOURS.index(k) for k in mix])
        self.weights = np.array(list(mix.values()), dtype=float)
        self.noise = float(noise)
        self.B = int(num_envs)
        self.rng = np.random.default_rng([int(seed), int(round_index), 1])
        self.gen = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(round_index), 2]).generate_state(1)[0]))
        self.behaviour = np.zeros(self.B, np.int64)  # per world, index into BEHAVIOURS
        self._b = torch.zeros(self.B, 1, dtype=torch.long)
        self._held = torch.zeros(self.B, 6)
        self._left = torch.zeros(self.B, dtype=torch.long)  # steps the held action still lasts

    def draw(self, worlds: np.ndarray) -> None:
        """New behaviours for the episodes starting in ``worlds`` (in world order)."""
        if len(worlds):
            self.behaviour[worlds] = self.codes[self.rng.choice(len(self.codes), size=len(worlds), p=self.weights)]
            self._b = torch.as_tensor(self.behaviour)[:, None]
            self._left[torch.as_tensor(worlds, dtype=torch.long)] = 0

    def actions(self, env) -> torch.Tensor:
        """(B, 6) actions for the worlds' current states."""
        expert = env.expert_actions()
        noisy = torch.clamp(expert + self.noise * torch.randn(self.B, 6, generator=self.gen), -1.0, 1.0)
        rand = torch.rand(self.B, 6, generator=self.gen) * 2 - 1
        if HELD in self.codes:
            new = self._left <= 0
            fresh = torch.rand(self.B, 6, generator=self.gen) * 2 - 1
            dur = torch.randint(HOLD_STEPS[0], HOLD_STEPS[1] + 1, (self.B,), generator=self.gen)
            self._held = torch.where(new[:, None], fresh, self._held)
            self._left = torch.where(new, dur, self._left) - 1
        held = self._held.to(expert.device)
        b = self._b.to(expert.device)
        out = torch.where(b == NOISY, noisy.to(expert.device), rand.to(expert.device))
        out = torch.where(b == HELD, held, out)
        return torch.where(b == EXPERT, expert, out)


def _settings(task, steps, num_envs, policy, noise, seed, resolution, obs_keys, round_steps, heldout_fraction) -> dict[str, Any]:
    """The checked settings that shape a dataset (``RESUME_KEYS``); raises ValueError on a bad one."""
    from dreamgym.envs.spaces import check_obs_keys, check_resolution
    from dreamgym.envs.tasks import make_task

    mix = parse_policy(policy)
    B = int(num_envs)
    if B < 1 or int(steps) < 1 or int(round_steps) < 1:
        raise ValueError(f"num_envs, steps and round_steps must be positive, got {B}, {steps}, {round_steps}")
    if not 0.0 <= float(heldout_fraction) < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if not float(noise) >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    keys = list(check_obs_keys(obs_keys))
    res = list(check_resolution(resolution))
    make_task(task)  # fails early, with the list of tasks, on a wrong name
    return {
        "task": task,
        "num_envs": B,
        "seed": int(seed),
        "policy": mix,
        "noise": float(noise),
        "resolution": res,
        "round_steps": int(round_steps),
        "obs_keys": keys,
    }


def collect(
    out: str | Path,
    *,
    task: str = "reach",
    steps: int = 20000,
    num_envs: int = 16,
    policy: str | Mapping[str, float] = ROOM_POLICY,
    noise: float = 0.3,
    seed: int = 0,
    resolution: int = 64,
    obs_keys: Sequence[str] | None = None,
    round_steps: int = 500,
    shard_episodes: int = 16,
    heldout_fraction: float = 0.1,
    compression: str | None = "gzip",
    compression_level: int | None = 1,
    image_chunk_steps: int = 4,
    queue_episodes: int = 16,
    stop_after_steps: int | None = None,
    progress: bool = True,
    env=None,
) -> CollectResult:
    """Collect (or continue collecting) ``steps`` transitions into the dataset at ``out``.

    Re-running with the same settings continues an interrupted collection and ends with exactly
    the episodes an uninterrupted run has; a larger ``steps`` extends a finished one. Settings
    that shape the data (``RESUME_KEYS``, ``heldout_fraction``) must match the dataset's.
    ``stop_after_steps`` stops this call after that many new steps (as an interruption would).
    ``env`` reuses an ``EgoRoomVecEnv`` built with the same task, ``num_envs`` and resolution.
    (``gym_collect.collect_gym`` collects from a Gymnasium env instead.)
    """
    settings = _settings(task, steps, num_envs, policy, noise, seed, resolution, obs_keys, round_steps, heldout_fraction)
    B, res, keys = settings["num_envs"], settings["resolution"], settings["obs_keys"]

    def open_env():
        nonlocal env
        if env is None:
            from dreamgym.envs.vec_env import EgoRoomVecEnv

            env = EgoRoomVecEnv(num_envs=B, task=task, resolution=res, seed=int(seed), obs_keys=keys, return_tensors=True)
        elif (env.num_envs, env.core.task.name, list(env.resolution), list(env.obs_keys)) != (B, task, res, keys):
            raise ValueError("the env passed to collect() does not match num_envs/task/resolution/obs_keys")

        def make_collector(writer: ShardWriter, manifest: Manifest, capacity: int) -> Collector:
            stored = {e["key"]: e["room_seed"] for _, e in manifest.episodes()}
            return Collector(env, settings, writer, stored, float(heldout_fraction), capacity)

        return env_spec(env, task), make_collector

    return run_collection(
        out,
        settings,
        steps=int(steps),
        heldout_fraction=float(heldout_fraction),
        open_env=open_env,
        desc=f"collect {task} (stored)",
        shard_episodes=shard_episodes,
        queue_episodes=queue_episodes,
        shard_kwargs={
            "compression": compression or None,
            "compression_level": compression_level,
            "image_chunk_steps": int(image_chunk_steps),
        },
        stop_after_steps=stop_after_steps,
        progress=progress,
        resume_keys=RESUME_KEYS,
    )


class Collector:
    """Runs rounds on an env, recording every world's episodes and handing finished ones to a
    ``ShardWriter``; episodes already ``stored`` (key -> room seed) are replayed but not written."""

    def __init__(
        self,
        env,
        settings: Mapping[str, Any],
        writer: ShardWriter,
        stored: Mapping[str, int] | None = None,
        heldout_fraction: float = 0.1,
        capacity: int | None = None,
    ):
        self.env, self.settings, self.writer = env, settings, writer
        self.stored = dict(stored or {})  # key -> room seed of the episodes already in the dataset
        self.heldout_fraction = float(heldout_fraction)
        self.B = env.num_envs
        capacity = int(env.core.task.max_steps) if capacity is None else min(int(capacity), int(env.core.task.max_steps))
        q = env.sim_state()
        self.buf = EpisodeBuffers(self.B, capacity, env.single_observation_space, q["qpos"].shape[1], q["qvel"].shape[1])
        self.simulated = 0  # world-steps stepped
        self.new_steps = 0  # world-steps that belong to episodes not stored before

    def run_round(self, r: int, L: int, on_step=None) -> None:
        """Round ``r`` of ``L`` steps. ``on_step(new_world_steps, t)`` is called after every step
        (to show progress, or to stop by raising)."""
        env, buf, B, writer = self.env, self.buf, self.B, self.writer
        seed, task_name = self.settings["seed"], self.settings["task"]
        rs = round_seed(seed, r, B)
        writer.put("round_start", {"index": r, "seed": rs, "steps": L})
        policy = BehaviourMix(self.settings["policy"], self.settings["noise"], seed, r, B)
        obs_t, infos = env.reset_tensors(seed=rs)
        buf.pos[:] = 0
        ep_count = np.zeros(B, np.int64)
        meta: list[dict[str, Any]] = [{} for _ in range(B)]

        def start(worlds: np.ndarray, obs: dict, infos: dict) -> None:
            policy.draw(worlds)
            for w in worlds:
                key = f"r{r}-w{w}-e{ep_count[w]}"
                seed_w = int(infos["room_seed"][w])
                if key in self.stored and self.stored[key] != seed_w:
                    raise RuntimeError(
                        f"replaying round {r} diverged: episode {key} has room {seed_w}, the dataset room "
                        f"{self.stored[key]}; the simulator is not deterministic here, continue into a new out="
                    )
                meta[w] = {
                    "key": key,
                    "round": r,
                    "world": int(w),
                    "task": task_name,
                    "instruction": int(obs["instruction"][w]) if "instruction" in obs else -1,
                    "instruction_text": str(infos["instruction_text"][w]),
                    "room_seed": seed_w,
                    "behaviour": BEHAVIOURS[int(policy.behaviour[w])],
                    "partner_behaviour": str(infos["partner_behaviour"][w]),
                    "utterance": str(infos["utterance"][w]),
                    "split": room_split(seed_w, self.heldout_fraction),
                    "stored": key in self.stored,
                }

        def emit(w: int, success: bool, terminated: bool, truncated: bool, cut: bool) -> None:
            m = meta[w]
            ep_count[w] += 1
            if m.pop("stored") or buf.pos[w] == 0:
                return
            attrs = {**m, "success": bool(success), "terminated": bool(terminated), "truncated": bool(truncated), "cut": bool(cut)}
            writer.put("episode", buf.take(w, attrs))

        obs = _np(obs_t)
        buf.put_obs(buf.rows, obs, _np(env.sim_state()))
        start(buf.rows, obs, infos)
        for t in range(L):
            act = policy.actions(env)
            obs_t, rew, term, trunc, infos = env.step_tensors(act)
            fresh = sum(not m["stored"] for m in meta)
            buf.put_transition(act.cpu().numpy(), rew.cpu().numpy(), term.cpu().numpy(), trunc.cpu().numpy())
            obs = _np(obs_t)
            state = _np(env.sim_state())
            buf.put_obs(buf.rows, obs, state)
            done = (term | trunc).cpu().numpy()
            if done.any():
                ended = np.nonzero(done)[0]
                # The ended rows' last observation and state are in infos; the returned ones
                # already start their next episode.
                buf.put_obs(ended, _np(infos["final_obs"]), _np(infos["final_state"]))
                fs = infos["final_success"].cpu().numpy()
                te, tr = term.cpu().numpy(), trunc.cpu().numpy()
                for w in ended:
                    emit(int(w), fs[w], te[w], tr[w], cut=False)
                buf.pos[ended] = 0
                buf.put_obs(ended, obs, state)
                start(ended, obs, infos)
            self.simulated += B
            self.new_steps += fresh
            if on_step is not None:
                on_step(fresh, t)
        success = infos["success"]
        success = success.cpu().numpy() if isinstance(success, torch.Tensor) else np.asarray(success)
        for w in range(B):  # episodes still running when the round ends are cut
            if buf.pos[w] > 0:
                buf.truncations[w, buf.pos[w] - 1] = True
            emit(w, success[w], False, True, cut=True)
        writer.put("round_end", r)


def collect_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``collect`` keyword arguments from a ``configs/collect.yaml``-shaped config (``policy``
    null: the room's default mix)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    names = (
        "task",
        "steps",
        "num_envs",
        "policy",
        "noise",
        "seed",
        "resolution",
        "obs_keys",
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
    return {k: c[k] for k in names if k in c and not (k == "policy" and c[k] is None)}


def run(cfg: DictConfig) -> int:
    """``dreamgym collect``: see the module docstring and ``configs/collect.yaml``; ``env=<id>``
    collects from a registered Gymnasium env instead (``gym_collect``)."""
    out = cfg.get("out") or cfg.get("path")
    if not out:
        raise SystemExit("dreamgym collect: say where to write, e.g. out=data/reach")
    try:
        if cfg.get("env"):
            from .gym_collect import collect_gym, gym_kwargs

            result = collect_gym(out, **gym_kwargs(cfg))
        else:
            if cfg.get("env_kwargs"):
                raise ValueError("env_kwargs= are passed to gym.make with env=<a Gymnasium id>; the room takes none (drop env_kwargs=)")
            result = collect(out, **collect_kwargs(cfg))
    except ValueError as e:
        raise SystemExit(f"dreamgym collect: {e}") from None
    state = "complete" if result.complete else "incomplete (re-run the same command to continue)"
    print(
        f"{result.out}: {result.episodes} episodes, {result.steps} steps, {state}; "
        f"this run added {result.new_episodes} episodes, {result.new_steps} steps in {result.seconds:.1f} s"
    )
    return 130 if result.stopped == "interrupted" else 0
