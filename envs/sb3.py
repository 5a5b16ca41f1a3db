"""Stable-Baselines3 ``VecEnv`` adapter for any dreamgym batched env (real or dream).

The wrapped env must offer ``num_envs``, ``single_observation_space``, ``single_action_space``
and ``step_tensors`` / ``reset_tensors`` with same-step autoreset, as ``EgoRoomVecEnv`` does
(observations a dict of tensors, or one tensor for a Box space, as a foreign env's dream,
``worldmodel.vector_dream.VectorDreamVecEnv``, gives them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv


class SB3VecEnv(VecEnv):
    """Presents a dreamgym batched env as an SB3 ``VecEnv`` (numpy in, numpy out)."""

    def __init__(self, env):
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None
        self.render_mode = getattr(env, "render_mode", None)

    def reset(self):
        seed = self._seeds[0] if any(s is not None for s in self._seeds) else None
        obs, _ = self.env.reset_tensors(seed=seed)
        self._reset_seeds()
        return _np(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rew, term, trunc, infos = self.env.step_tensors(torch.as_tensor(self._actions))
        n = self.num_envs
        dones = (term | trunc).cpu().numpy()
        trunc_np = trunc.cpu().numpy()
        succ = infos.get("success")
        succ = succ.cpu().numpy() if isinstance(succ, torch.Tensor) else succ
        out_infos: list[dict[str, Any]] = [{} for _ in range(n)]
        if "final_obs" in infos:
            final = _np(infos["final_obs"])
            fs = infos.get("final_success")  # None: the env has no notion of success (a foreign env's dream)
            fs = fs.cpu().numpy() if isinstance(fs, torch.Tensor) else fs
            for i in np.nonzero(dones)[0]:
                out_infos[i]["terminal_observation"] = {k: v[i] for k, v in final.items()} if isinstance(final, dict) else final[i]
                out_infos[i]["TimeLimit.truncated"] = bool(trunc_np[i])
                if fs is not None:
                    out_infos[i]["is_success"] = bool(fs[i])
        for i in range(n):
            if succ is not None and "is_success" not in out_infos[i]:
                out_infos[i]["is_success"] = bool(succ[i])
        return _np(obs), rew.cpu().numpy().astype(np.float32), dones, out_infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.env, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.env, method_name)(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.env.render()
        return [None] * self.num_envs if frames is None else list(frames)

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


def _np(obs: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, np.ndarray] | np.ndarray:
    """Observations as numpy: a dict of keys, or one array (an env whose observation space is a Box)."""
    if not isinstance(obs, dict):
        return obs.cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs)
    return {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in obs.items()}
