"""``dreamgym bench env``: environment steps per second with ego rendering, beside what a user
would pick instead.

Arms, measured in one run at the same ego resolution and with the same observation keys
(``obs_keys``; default every observation: ego RGB + depth, occupancy, both bodies' motion, the
task vector), random actions, episode resets included:

- ``single``: the project's own single-world ``EgoRoomEnv`` (C MuJoCo, its renderer): the reference,
  with torch on ``single_threads`` threads (default 1: its per-step tensors are tiny, and on two
  threads it ran 3.6x slower on a 2-core machine);
- ``async``: Gymnasium's ``AsyncVectorEnv`` over ``async_workers`` ``EgoRoomEnv`` worker processes
  (default 2, one per core of a 2-core machine), torch on one thread in each;
- ``vec_B<B>``: ``EgoRoomVecEnv`` (MuJoCo Warp, every world rendered every step) at each batch size,
  torch on ``threads`` threads;
- ``humanoid_v5`` (``humanoid: true``; context only): Gymnasium's ``Humanoid-v5`` rendering a
  frame every step with its MuJoCo renderer.

A step of B worlds counts as B steps. ``summary`` has each batched rate over ``single`` and over
``async``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from dreamgym.benchmarks.runner import Timing, start, timed


def make_single_env(task: str, resolution: int, obs_keys: Sequence[str] | None, seed: int, threads: int | None = None):
    """An ``EgoRoomEnv`` (in a worker process, torch limited to ``threads``)."""
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    from dreamgym.envs.ego_room_env import EgoRoomEnv

    return EgoRoomEnv(task=task, resolution=resolution, obs_keys=obs_keys, seed=seed)


def single_rate(task: str, resolution: int, obs_keys: Sequence[str] | None, timing: Timing, seed: int) -> dict[str, Any]:
    """Steps/s of one ``EgoRoomEnv``, reset when an episode ends."""
    env = make_single_env(task, resolution, obs_keys, seed)
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step():
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()

    try:
        return timed(step, timing, per_call=1, unit="steps_per_s")
    finally:
        env.close()


def async_rate(task: str, resolution: int, obs_keys: Sequence[str] | None, workers: int, timing: Timing, seed: int) -> dict[str, Any]:
    """Steps/s of Gymnasium's ``AsyncVectorEnv`` over ``workers`` ``EgoRoomEnv`` processes (auto-reset)."""
    from gymnasium.vector import AsyncVectorEnv

    fns = [functools.partial(make_single_env, task, resolution, obs_keys, seed + i, 1) for i in range(workers)]
    env = AsyncVectorEnv(fns, context="spawn")
    try:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        return timed(lambda: env.step(env.action_space.sample()), timing, per_call=workers, unit="steps_per_s") | {"workers": workers}
    finally:
        env.close()


def vec_rate(B: int, task: str, resolution: int, obs_keys: Sequence[str] | None, timing: Timing, seed: int) -> dict[str, Any]:
    """Steps/s of ``EgoRoomVecEnv`` at B worlds (a step of B worlds counts B)."""
    import torch

    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, obs_keys=obs_keys, seed=seed, return_tensors=True)
    env.reset_tensors(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    try:
        return timed(lambda: env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1), timing, per_call=B, unit="steps_per_s") | {
            "batch_size": B
        }
    finally:
        env.close()


def humanoid_rate(env_id: str, resolution: int, timing: Timing, seed: int) -> dict[str, Any]:
    """Steps/s of ``env_id`` (Gymnasium MuJoCo) rendering a ``resolution``-pixel frame every step."""
    import gymnasium as gym

    env = gym.make(env_id, render_mode="rgb_array", width=resolution, height=resolution)
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step():
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        env.render()
        if term or trunc:
            env.reset()

    try:
        return timed(step, timing, per_call=1, unit="steps_per_s") | {"env": env_id}
    finally:
        env.close()


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench env`` (``configs/bench/env.yaml``)."""
    import torch

    os.environ.setdefault("MUJOCO_GL", "egl")
    run_ = start("env", cfg)
    timing = Timing.from_cfg(cfg)
    res, seed, task = int(cfg.resolution), int(cfg.seed), str(cfg.task)
    keys = list(cfg.obs_keys) if cfg.obs_keys is not None else None
    print(f"EgoRoomEnv (one world) at {res}x{res}, torch on {cfg.single_threads} thread(s) ...", flush=True)
    torch.set_num_threads(int(cfg.single_threads))
    single = run_.add("single", single_rate(task, res, keys, timing, seed) | {"torch_threads": int(cfg.single_threads)})
    torch.set_num_threads(int(cfg.threads))
    print(f"  {single['median']:.1f} steps/s", flush=True)
    workers = int(cfg.async_workers)
    if workers > 0:
        print(f"AsyncVectorEnv over {workers} EgoRoomEnv workers ...", flush=True)
        a = run_.add("async", async_rate(task, res, keys, workers, timing, seed))
        print(f"  {a['median']:.1f} steps/s", flush=True)
    for B in (int(b) for b in cfg.batch_sizes):
        print(f"EgoRoomVecEnv B={B} ...", flush=True)
        v = run_.add(f"vec_B{B}", vec_rate(B, task, res, keys, timing, seed) | {"torch_threads": int(cfg.threads)})
        print(f"  {v['median']:.1f} steps/s ({v['median'] / single['median']:.2f}x EgoRoomEnv)", flush=True)
    if cfg.humanoid:
        print(f"context: {cfg.humanoid_env} with its renderer ...", flush=True)
        h = run_.add("humanoid_v5", humanoid_rate(str(cfg.humanoid_env), res, timing, seed))
        print(f"  {h['median']:.1f} steps/s", flush=True)
    run_.summary = summary(run_.arms, [int(b) for b in cfg.batch_sizes])
    run_.write(cfg.out)
    return 0


def summary(arms: dict[str, Any], batch_sizes: Sequence[int]) -> dict[str, Any]:
    """Each batched rate over the single-world env and over the async vector env (medians)."""
    single = arms["single"]["median"]
    out: dict[str, Any] = {"reference": "single", "vec_over_single": {}, "vec_over_async": {}}
    for B in batch_sizes:
        v = arms[f"vec_B{B}"]["median"]
        out["vec_over_single"][str(B)] = v / single
        if "async" in arms:
            out["vec_over_async"][str(B)] = v / arms["async"]["median"]
    if "async" in arms:
        out["async_over_single"] = arms["async"]["median"] / single
    if "humanoid_v5" in arms:
        out["vec_over_humanoid_v5"] = {str(B): arms[f"vec_B{B}"]["median"] / arms["humanoid_v5"]["median"] for B in batch_sizes}
    return out
