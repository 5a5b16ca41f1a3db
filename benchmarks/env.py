"""``dreamgym bench env``: environment steps per second with ego rendering.

Measures, in one run and at the same ego resolution: the reference -- Gymnasium's ``Humanoid-v5``
(one world, C MuJoCo) rendering a frame with its MuJoCo renderer every step -- and
``EgoRoomVecEnv`` (MuJoCo Warp, ego RGB + depth rendered for every world every step, all
observations computed, random actions, auto-resets included) at each batch size. A step of B
worlds counts as B steps. Writes a JSON of the figures.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from omegaconf import DictConfig


def _timed(step, min_seconds: float, min_steps: int = 3) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < min_seconds:
        step()
        n += 1
    return n, time.perf_counter() - t0


def reference_steps_per_s(env_id: str, resolution: int, seconds: float, warmup: int, seed: int) -> float:
    """Steps/s of ``env_id`` rendering an ``resolution``-pixel frame every step."""
    import gymnasium as gym

    env = gym.make(env_id, render_mode="rgb_array", width=resolution, height=resolution)
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step():
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        env.render()
        if term or trunc:
            env.reset()

    for _ in range(warmup):
        step()
    n, dt = _timed(step, seconds)
    env.close()
    return n / dt


def batched_steps_per_s(B: int, task: str, resolution: int, seconds: float, warmup: int, seed: int) -> float:
    import torch

    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, seed=seed, return_tensors=True)
    env.reset_tensors(seed=seed)
    gen = torch.Generator().manual_seed(seed)

    def step():
        env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1)

    for _ in range(warmup):
        step()
    n, dt = _timed(step, seconds)
    env.close()
    return n * B / dt


def run(cfg: DictConfig) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    res = int(cfg.resolution)
    print(f"reference {cfg.reference_env} at {res}x{res} ...", flush=True)
    ref = reference_steps_per_s(cfg.reference_env, res, float(cfg.measure_seconds), int(cfg.warmup_steps), int(cfg.seed))
    print(f"  {ref:.1f} steps/s", flush=True)
    batched = {}
    for B in cfg.batch_sizes:
        print(f"EgoRoomVecEnv B={B} ...", flush=True)
        batched[int(B)] = batched_steps_per_s(int(B), cfg.task, res, float(cfg.measure_seconds), int(cfg.warmup_steps), int(cfg.seed))
        print(f"  {batched[int(B)]:.1f} steps/s ({batched[int(B)] / ref:.1f}x reference)", flush=True)
    top = max(batched)
    result = {
        "reference_env": cfg.reference_env,
        "resolution": res,
        "reference_steps_per_s": ref,
        "batched_steps_per_s": {str(b): v for b, v in batched.items()},
        "speedup": batched[64] / ref if 64 in batched else batched[top] / ref,
        "speedup_batch_size": 64 if 64 in batched else top,
        "task": cfg.task,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    return 0
