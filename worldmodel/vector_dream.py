"""Dreamed worlds of any Gymnasium env: a vector world model (``worldmodel.vector``) as an env.

    gym.make("dreamgym/Dream-v0", source_env="Pendulum-v1", checkpoint="runs/pendulum/final")
    gym.make_vec("dreamgym/Dream-v0", num_envs=64, source_env="Pendulum-v1", checkpoint=...)

``VectorDreamVecEnv`` steps B worlds at once (a ``gymnasium.vector.VectorEnv``, same-step
autoreset, and ``step_tensors`` / ``reset_tensors`` for ``envs.sb3.SB3VecEnv``); ``VectorDreamEnv``
is one world (a ``gymnasium.Env``). Both have the source env's own observation and action spaces
(from the checkpoint, where ``collect`` stored them), so a policy trained in the dream runs in the
source env unchanged.

- **Starts.** Each dreamed episode begins from K real rows (K = the model's context):
  ``starts="live"`` (default) resets the source env (``gym.make(source_env, **env_kwargs)``) and
  steps it K - 1 times with random actions, counting those real steps in ``real_steps``;
  ``starts="dataset:<dir>[:<split>]"`` takes K rows of a recorded episode (train split by default),
  costing no new real step.
- **A step.** Box actions are clipped to the action space (as SB3 does before ``env.step``); the
  model dreams the next observation (clipped to the observation space's finite bounds), the reward
  and termination from its heads. A prediction that is not finite ends the episode
  (terminated, ``info["dream_error"]``). Episodes are truncated at the source env's time limit,
  counted from its reset (the start's K - 1 real steps included), and with ``horizon=H`` also after
  H dreamed steps (truncated, not terminated: a learner bootstraps from its value there, so a short
  horizon from recorded starts keeps a policy away from far-drifted dreams).
- **Seeding.** ``reset(seed=s)`` reseeds the starts and the sampler noise, so a seeded episode
  under the same actions is dreamed the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from .vector import VectorWorldModel


def _load(world_model: Any, device: str) -> VectorWorldModel:
    if isinstance(world_model, VectorWorldModel):
        return world_model.to(device).eval()
    if world_model is None:
        raise ValueError("a Gymnasium env's dream needs its world model: checkpoint=<a train-wm run's final/ folder>")
    from .load import checkpoint_kind

    if checkpoint_kind(world_model) != "vector":
        raise ValueError(
            f"{world_model} is the room's world model; source_env= dreams a Gymnasium env's vector model (train-wm on a collect env=<id> dataset)"
        )
    return VectorWorldModel.from_pretrained(world_model, device=device)


def _check_device(device: str) -> str:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but this machine has no CUDA device; use device='cpu'")
    return str(device)


class VectorDreamVecEnv(VectorEnv):
    """B dreamed worlds of the Gymnasium env a ``VectorWorldModel`` was trained on (see the module docstring)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        world_model: Any = None,
        num_envs: int = 1,
        *,
        source_env: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        checkpoint: Any = None,
        starts: str = "live",
        device: str = "cpu",
        num_denoising_steps: int | None = None,
        init_noise: float | None = None,
        autoreset: bool = True,
        horizon: int | None = None,
    ):
        if checkpoint is not None:
            if world_model is not None:
                raise ValueError("the world model was given twice; pass only checkpoint=<dir>")
            world_model = checkpoint
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}: expected a whole number >= 1")
        self.device = _check_device(device)
        self.model = _load(world_model, self.device)
        arch = self.model.config
        if source_env is not None and source_env != arch.env_id:
            raise ValueError(f"source_env={source_env!r}, but the world model was trained on {arch.env_id!r}")
        self.env_id = arch.env_id
        self.env_kwargs = dict(arch.env_kwargs if env_kwargs is None else env_kwargs)
        self.num_envs, self.K = num_envs, arch.context
        self.single_observation_space, self.single_action_space = arch.spaces()
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.is_dict = isinstance(self.single_observation_space, gym.spaces.Dict)
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ValueError(f"horizon={horizon!r}: expected a whole number >= 1 or None (the source env's time limit)")
        self.max_steps = arch.max_episode_steps
        self.horizon = None if horizon is None else int(horizon)
        self.sample_kw = {"num_steps": num_denoising_steps, "init_noise": init_noise}
        self.autoreset = bool(autoreset)
        self.starts = self._starts(starts)
        self.real_steps = 0
        self._source: gym.Env | None = None
        self._gen = torch.Generator(device=self.device)
        self._np_rng = np.random.default_rng()
        self._obs: dict[str, torch.Tensor] = {}
        self._act: torch.Tensor | None = None
        self._elapsed = torch.zeros(num_envs, dtype=torch.long)
        self._dreamed = torch.zeros(num_envs, dtype=torch.long)

    # ------------------------------------------------------------------ starts
    def _starts(self, starts: str) -> dict[str, Any]:
        if starts == "live":
            return {"kind": "live"}
        if isinstance(starts, str) and starts.startswith("dataset:"):
            from .windows import DatasetSource

            rest = starts[len("dataset:") :]
            path, _, split = rest.partition(":")
            split = split or "train"
            if split not in ("train", "heldout", "all"):
                raise ValueError(f"starts={starts!r}: the split must be train, heldout or all")
            src = DatasetSource(Path(path), split, 0, gym=True)
            if src.env["env_id"] != self.env_id:
                raise ValueError(f"starts={starts!r} holds episodes of {src.env['env_id']}, the world model dreams {self.env_id}")
            windows = src.windows(self.K + 1)
            if len(windows) == 0:
                raise ValueError(f"starts={starts!r}: no episode of the {split} split has {self.K + 1} steps")
            return {"kind": "dataset", "path": path, "split": split, "windows": windows}
        raise ValueError(f"starts={starts!r}: expected 'live' or 'dataset:<dir>[:<split>]'")

    @property
    def starts_info(self) -> dict[str, Any]:
        return {k: v for k, v in self.starts.items() if k != "windows"}

    @property
    def sampler_info(self) -> dict[str, Any]:
        """The sampler each dreamed step runs (the model's own, with this env's overrides), as a run records it."""
        return self.model.sampler.to_dict() | {k: v for k, v in self.sample_kw.items() if v is not None}

    def _live_start(self, seed: int) -> tuple[dict[str, np.ndarray], list[Any], int]:
        """K real rows: the source env reset with ``seed``, then K - 1 random steps (re-drawn if it ends)."""
        if self._source is None:
            self._source = gym.make(self.env_id, **self.env_kwargs)
        env = self._source
        for attempt in range(100):
            obs, _ = env.reset(seed=seed + attempt * 1_000_003)
            env.action_space.seed(seed + attempt * 1_000_003)
            rows, acts, ok = [obs], [], True
            for _ in range(self.K - 1):
                a = env.action_space.sample()
                obs, _, term, trunc, _ = env.step(a)
                self.real_steps += 1
                acts.append(a)
                rows.append(obs)
                if term or trunc:
                    ok = False
                    break
            if ok:
                return self._stack_rows(rows), acts, self.K - 1
        raise RuntimeError(f"{self.env_id}: 100 resets in a row ended within the {self.K - 1} random steps of a dream's start")

    def _stack_rows(self, rows: list[Any]) -> dict[str, np.ndarray]:
        keys = self.model.output_keys()
        if self.is_dict:
            return {k: np.stack([r[k] for r in rows]) for k in keys}
        return {keys[0]: np.stack(rows)}

    def _start(self, i: int, seed: int) -> None:
        """World ``i`` begins a dreamed episode."""
        if self.starts["kind"] == "live":
            rows, acts, elapsed = self._live_start(seed)
            obs = {k: torch.as_tensor(v) for k, v in rows.items()}
            act = torch.as_tensor(np.stack(acts)) if acts else None
        else:
            w = self.starts["windows"][int(np.random.default_rng(seed).integers(len(self.starts["windows"])))]
            obs = {k: w[k][: self.K] for k in self.model.output_keys()}
            act = w["actions"][: self.K - 1] if self.K > 1 else None
            elapsed = int(w["t0"]) + self.K - 1
        for k, v in obs.items():
            self._obs[k][i] = v.to(self._obs[k])
        self._act[i] = 0
        if act is not None:
            self._act[i, : self.K - 1] = act.to(self._act).reshape(self._act[i, : self.K - 1].shape)
        self._elapsed[i] = elapsed
        self._dreamed[i] = 0

    # ------------------------------------------------------------------ the tensor API
    def reset_tensors(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._gen.manual_seed(int(seed))
            self._np_rng = np.random.default_rng(int(seed))
        B, K = self.num_envs, self.K
        self._obs = {p.key: torch.zeros((B, K, *p.shape), dtype=getattr(torch, p.dtype), device=self.device) for p in self.model.all_parts}
        discrete = self.model.config.discrete_actions()
        a_shape = () if discrete else tuple(self.single_action_space.shape)
        self._act = torch.zeros((B, K, *a_shape), dtype=torch.long if discrete else torch.float32, device=self.device)
        for i in range(B):
            self._start(i, int(self._np_rng.integers(2**31)))
        return self._current(), {}

    def _current(self) -> Any:
        last = {k: v[:, -1].clone() for k, v in self._obs.items()}
        return last if self.is_dict else last[self.model.output_keys()[0]]

    def _clip(self, actions: Any) -> torch.Tensor:
        a = torch.as_tensor(actions, device=self.device)
        if self.model.config.discrete_actions():
            space = self.single_action_space
            a = a.reshape(self.num_envs).long()
            if bool(((a < space.start) | (a >= space.start + space.n)).any()):
                raise ValueError(f"actions {a.tolist()} outside Discrete({space.n}, start={space.start})")
            return a
        a = a.reshape(self.num_envs, *self.single_action_space.shape).float()
        if not bool(torch.isfinite(a).all()):
            raise ValueError("actions hold NaN or infinite values")
        low = torch.as_tensor(self.single_action_space.low, device=self.device)
        high = torch.as_tensor(self.single_action_space.high, device=self.device)
        return torch.maximum(torch.minimum(a, high), low)

    def step_tensors(self, actions: Any):
        if self._act is None:
            raise RuntimeError("call reset() before step()")
        a = self._clip(actions)
        self._act[:, -1] = a
        out = self.model.imagine(self._obs, self._act, generator=self._gen, **self.sample_kw)
        keys = self.model.output_keys()
        finite = torch.stack([torch.isfinite(out[k].float()).reshape(self.num_envs, -1).all(1) for k in keys]).all(0)
        finite &= torch.isfinite(out["reward"])
        reward = torch.where(finite, out["reward"], torch.zeros_like(out["reward"]))
        term = out["terminated"] | ~finite
        self._elapsed += 1
        self._dreamed += 1
        limit = self._elapsed >= self.max_steps if self.max_steps else torch.zeros_like(self._elapsed, dtype=torch.bool)
        if self.horizon is not None:
            limit |= self._dreamed >= self.horizon
        trunc = limit.to(term.device) & ~term
        for k in keys:
            nxt = torch.where(finite.view(-1, *[1] * (out[k].dim() - 1)), out[k], self._obs[k][:, -1])
            self._obs[k] = torch.cat([self._obs[k][:, 1:], nxt[:, None]], 1)
        self._act = torch.cat([self._act[:, 1:], torch.zeros_like(self._act[:, :1])], 1)
        infos: dict[str, Any] = {"dream_error": ~finite}
        done = term | trunc
        if bool(done.any()):
            infos["final_obs"] = self._current()
            infos["_final_obs"] = done
            if self.autoreset:
                for i in torch.nonzero(done).flatten().tolist():
                    self._start(i, int(self._np_rng.integers(2**31)))
        return self._current(), reward, term, trunc, infos

    # ------------------------------------------------------------------ the numpy API (gymnasium.vector)
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, infos = self.reset_tensors(seed=seed)
        return _numpy(obs), infos

    def step(self, actions):
        obs, r, term, trunc, infos = self.step_tensors(actions)
        out = {k: _numpy(v) for k, v in infos.items()}
        return _numpy(obs), r.cpu().numpy().astype(np.float32), term.cpu().numpy(), trunc.cpu().numpy(), out

    def close_extras(self, **kwargs: Any) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


def _numpy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _numpy(v) for k, v in x.items()}
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


class VectorDreamEnv(gym.Env):
    """One dreamed world of a Gymnasium env (``gym.make("dreamgym/Dream-v0", source_env=ID, checkpoint=DIR)``);
    the arguments are ``VectorDreamVecEnv``'s without ``num_envs``."""

    metadata = {"render_modes": []}

    def __init__(self, world_model: Any = None, **kwargs: Any):
        if "num_envs" in kwargs:
            raise TypeError("VectorDreamEnv is one world; use VectorDreamVecEnv(num_envs=...) or gym.make_vec for B worlds")
        if "autoreset" in kwargs:
            raise TypeError("VectorDreamEnv takes no autoreset: a gymnasium.Env's episode ends until reset() is called")
        self.vec = VectorDreamVecEnv(world_model, num_envs=1, autoreset=False, **kwargs)
        self._done = True
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, _ = self.vec.reset_tensors(seed=seed if seed is not None else int(self.np_random.integers(2**31)))
        self._done = False
        return self._one(obs), {}

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended (or never began); call reset() before step()")
        a = np.asarray(action)[None] if not isinstance(action, (int, np.integer)) else np.asarray([action])
        obs, r, term, trunc, infos = self.vec.step_tensors(a)
        info = {"dream_error": bool(infos["dream_error"][0])}
        self._done = bool(term[0] or trunc[0])
        return self._one(obs), float(r[0]), bool(term[0]), bool(trunc[0]), info

    def _one(self, obs: Any) -> Any:
        if isinstance(obs, dict):
            return {k: v[0].cpu().numpy() for k, v in obs.items()}
        return obs[0].cpu().numpy()

    @property
    def real_steps(self) -> int:
        return self.vec.real_steps

    def close(self):
        self.vec.close()
