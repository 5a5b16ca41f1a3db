"""Any Gymnasium env as a batched env of dreamgym's tensor step API.

``GymTensorVecEnv(env_id, num_envs)`` steps ``num_envs`` copies of ``gym.make(env_id,
**env_kwargs)`` in a ``SyncVectorEnv`` with same-step autoreset and offers what ``envs.sb3.SB3VecEnv``
and the trainers read from the room's ``EgoRoomVecEnv`` and the dreams: ``reset_tensors`` /
``step_tensors`` (torch in, torch out; ``infos["final_obs"]`` holds the last observation of the
worlds that ended, their rows of every other world being the current observation), the single
spaces, and ``real_steps`` (every world-step taken). Observations keep the source env's keys: one
tensor for a Box space, a dict for a Dict space. Float observations come as float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .gym_collect import make_env


def _tensor(x: Any) -> torch.Tensor:
    a = np.asarray(x)
    return torch.as_tensor(a.astype(np.float32) if a.dtype.kind == "f" else a)


def _tensors(obs: Any) -> Any:
    return {str(k): _tensor(v) for k, v in obs.items()} if isinstance(obs, Mapping) else _tensor(obs)


class GymTensorVecEnv:
    """``num_envs`` worlds of one registered Gymnasium env behind the tensor step API (see the module docstring)."""

    render_mode = None  # SB3's VecEnv asks for it; these worlds are not rendered

    def __init__(self, env_id: str, num_envs: int = 1, env_kwargs: Mapping[str, Any] | None = None, seed: int | None = None):
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}: expected a whole number >= 1")
        kwargs = dict(env_kwargs or {})
        first = make_env(env_id, kwargs)
        self.env_id, self.env_kwargs, self.num_envs = env_id, kwargs, num_envs
        self.vec = SyncVectorEnv(
            [lambda: first] + [lambda: make_env(env_id, kwargs)] * (num_envs - 1), autoreset_mode=AutoresetMode.SAME_STEP
        )
        self.single_observation_space = self.vec.single_observation_space
        self.single_action_space = self.vec.single_action_space
        self.device = "cpu"
        self.real_steps = 0
        self._seed = seed

    def reset_tensors(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        seed = self._seed if seed is None else seed
        self._seed = None  # a seed given at construction seeds the first reset only
        obs, _ = self.vec.reset(seed=None if seed is None else [int(seed) + i for i in range(self.num_envs)])
        return _tensors(obs), {}

    def step_tensors(self, actions: Any):
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        obs, rew, term, trunc, info = self.vec.step(a)
        self.real_steps += self.num_envs
        term_t, trunc_t = torch.as_tensor(np.asarray(term, bool)), torch.as_tensor(np.asarray(trunc, bool))
        infos: dict[str, Any] = {}
        done = np.asarray(term, bool) | np.asarray(trunc, bool)
        if done.any():
            finals = info["final_obs"]
            if isinstance(obs, Mapping):
                infos["final_obs"] = {
                    k: _tensor(np.stack([finals[i][k] if done[i] else obs[k][i] for i in range(self.num_envs)])) for k in obs
                }
            else:
                infos["final_obs"] = _tensor(np.stack([finals[i] if done[i] else obs[i] for i in range(self.num_envs)]))
            infos["_final_obs"] = torch.as_tensor(done)
        return _tensors(obs), torch.as_tensor(np.asarray(rew, np.float32)), term_t, trunc_t, infos

    def render(self) -> None:
        return None

    def close(self) -> None:
        self.vec.close()
