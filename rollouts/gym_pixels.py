"""``dreamgym/Pixels-v0``: any Gymnasium env that renders, observed through its pixels only.

    gym.make("dreamgym/Pixels-v0", env="CartPole-v1", size=32)
    dreamgym collect env=dreamgym/Pixels-v0 'env_kwargs={env:CartPole-v1,size:32}' out=data/cartpole_px

The wrapped env is made with ``render_mode="rgb_array"`` (and ``env_kwargs``); each observation is
its rendered frame, resized to ``size`` x ``size`` (box filter), as a (size, size, 3) uint8 image;
with ``stack=n`` the last n frames, oldest first, on the channels ((size, size, 3 n); at a reset
the first frame fills them), so that one observation shows motion as well as pose.
The state the env computes is not shown to the policy: this is how a task is posed "from pixels".
Actions, rewards, terminations and the time limit are the wrapped env's. Being a registered id, it
goes wherever an env id goes (``collect``, ``train-policy source_env=``, ``eval-policy``,
``diamond env=``, the dream's live starts), with its settings in ``env_kwargs``.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo envs render headless unless the user chose otherwise

import gymnasium as gym
import numpy as np
from PIL import Image


class PixelsEnv(gym.Env):
    """The rendered frames of ``env`` as observations (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env: str, size: int = 64, stack: int = 1, env_kwargs: dict[str, Any] | None = None, render_mode: str | None = None):
        if not isinstance(env, str) or not env:
            raise ValueError(f"dreamgym/Pixels-v0 needs env=<a registered Gymnasium id>, got {env!r}")
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 512:
            raise ValueError(f"dreamgym/Pixels-v0: size={size!r}, expected a whole number of pixels in [8, 512]")
        if isinstance(stack, bool) or not isinstance(stack, int) or not 1 <= stack <= 8:
            raise ValueError(f"dreamgym/Pixels-v0: stack={stack!r}, expected a whole number of frames in [1, 8]")
        self.inner = gym.make(env, render_mode="rgb_array", **dict(env_kwargs or {}))
        self.size, self.stack = int(size), int(stack)
        self._frames: list[np.ndarray] = []
        self.render_mode = render_mode
        self.action_space = self.inner.action_space
        self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size, 3 * self.stack), np.uint8)
        self._frame: np.ndarray | None = None

    def _observe(self, reset: bool = False) -> np.ndarray:
        frame = self.inner.render()
        if frame is None:
            raise ValueError(f"{self.inner.spec.id if self.inner.spec else 'the env'} rendered nothing; it needs render_mode='rgb_array'")
        img = Image.fromarray(np.asarray(frame, np.uint8)[..., :3])
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BOX)
        self._frame = np.asarray(img, np.uint8)
        self._frames = [self._frame] * self.stack if reset else [*self._frames[1:], self._frame]
        return np.concatenate(self._frames, -1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        _, info = self.inner.reset(seed=seed, options=options)
        return self._observe(reset=True), info

    def step(self, action):
        _, reward, terminated, truncated, info = self.inner.step(action)
        return self._observe(), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        return self._frame

    def close(self) -> None:
        self.inner.close()


def make_pixels_env(env: str, size: int = 64, stack: int = 1, env_kwargs: dict[str, Any] | None = None, **kw: Any) -> gym.Env:
    """The registry's entry point: ``PixelsEnv`` under the wrapped env's time limit (so a dataset
    records ``max_episode_steps``)."""
    pixels = PixelsEnv(env, size, stack, env_kwargs, **kw)
    limit = pixels.inner.spec.max_episode_steps if pixels.inner.spec is not None else None
    return gym.wrappers.TimeLimit(pixels, limit) if limit else pixels
