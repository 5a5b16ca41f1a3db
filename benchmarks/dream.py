"""``dreamgym bench dream``: how fast a policy can step the dream env, beside the simulator.

    dreamgym bench dream out=bench_dream.json [checkpoint=<world model>]

In one run, at each batch size B (default 1, 16, 64), transitions/s of ``DreamVecEnv.step_tensors``
(the whole env step a policy sees: world model, task reward/termination/``task_obs`` on the
predicted state, bookkeeping) and of ``EgoRoomVecEnv.step_tensors`` with the same observations:

- ``state_only``: the observations of a state-based policy (``task_obs``, ``motion``,
  ``partner_motion``, ``instruction``); the dream generates body motion and props only, the
  simulator does not render;
- ``frames``: the same plus ``ego_rgb`` and ``ego_depth``; the dream generates frames, the
  simulator renders them.

Actions are uniform random. A step of B worlds counts as B transitions. Episode starts (which the
dream env draws from the simulator, K-1 real steps each) fall outside the timed window. The world
model is ``checkpoint``'s, the shipped default, or -- when neither exists -- the default
architecture (``configs/worldmodel/default.yaml``) with random weights: speed does not depend on
the weights. ``dream_over_sim`` is the state-only ratio at the largest B (64 by default).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

STATE_OBS = ("task_obs", "motion", "partner_motion", "instruction")
FRAME_OBS = ("ego_rgb", "ego_depth")


def bench_model(checkpoint: Any, resolution: int) -> tuple[Any, str]:
    """The world model to time and where it came from."""
    from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT, load_world_model
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    if checkpoint is not None or DEFAULT_CHECKPOINT.exists():
        return load_world_model(checkpoint), str(checkpoint or DEFAULT_CHECKPOINT)
    from dreamgym.configs import __file__ as configs_init

    d = OmegaConf.to_container(OmegaConf.load(Path(configs_init).parent / "worldmodel" / "default.yaml"), resolve=True)
    assert isinstance(d, dict)
    torch.manual_seed(0)
    return WorldModel(
        WorldModelConfig.from_dict({**d, "data_resolution": int(resolution)})
    ).eval(), "configs/worldmodel/default.yaml (random weights)"


def _rate(step: Callable[[], Any], B: int, seconds: float, min_calls: int, warmup: int) -> float:
    from dreamgym.benchmarks.wm import _timed

    n, dt = _timed(step, seconds, min_calls, warmup)
    return n * B / dt


def dream_rate(
    model: Any, B: int, task: str, obs_keys: Sequence[str], num_steps: int, seconds: float, min_calls: int, warmup: int, seed: int
) -> float:
    """``DreamVecEnv`` transitions/s at B worlds generating what ``obs_keys`` need."""
    from dreamgym.policies.train import dream_modalities
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    env = DreamVecEnv(
        model,
        num_envs=B,
        task=task,
        modalities=dream_modalities(obs_keys),
        obs_keys=obs_keys,
        num_denoising_steps=num_steps,
        seed=seed,
        return_tensors=True,
    )
    env.reset_tensors(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    rate = _rate(lambda: env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1), B, seconds, min_calls, warmup)
    env.close()
    return rate


def sim_rate(B: int, task: str, resolution: int, obs_keys: Sequence[str], seconds: float, min_calls: int, warmup: int, seed: int) -> float:
    """``EgoRoomVecEnv`` transitions/s at B worlds with ``obs_keys``."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, obs_keys=obs_keys, seed=seed, return_tensors=True)
    env.reset_tensors(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    rate = _rate(lambda: env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1), B, seconds, min_calls, warmup)
    env.close()
    return rate


def bench(
    checkpoint: Any = None,
    batch_sizes: Sequence[int] = (1, 16, 64),
    task: str = "reach",
    num_denoising_steps: int = 1,
    frames: bool = True,
    seconds: float = 3.0,
    min_calls: int = 2,
    warmup: int = 1,
    seed: int = 0,
    resolution: int = 32,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every measurement; returns the JSON-ready result (see the module docstring)."""
    model, source = bench_model(checkpoint, resolution)
    res = int(model.config.data_resolution)
    has_frames = "ego" in model.config.modalities
    sets = {"state_only": STATE_OBS} | ({"frames": STATE_OBS + FRAME_OBS} if frames and has_frames else {})
    dream: dict[str, dict[str, float]] = {k: {} for k in sets}
    sim: dict[str, dict[str, float]] = {k: {} for k in sets}
    ratio: dict[str, dict[str, float]] = {k: {} for k in sets}
    for B in batch_sizes:
        for name, keys in sets.items():
            progress(f"B={B} {name}: simulator ...")
            s = sim_rate(B, task, res, keys, seconds, min_calls, warmup, seed)
            progress(f"B={B} {name}: dream ...")
            d = dream_rate(model, B, task, keys, num_denoising_steps, seconds, min_calls, warmup, seed)
            sim[name][str(B)], dream[name][str(B)], ratio[name][str(B)] = s, d, d / s
            progress(f"  dream {d:.1f} vs simulator {s:.1f} transitions/s ({d / s:.2f}x)")
    top = str(max(batch_sizes))
    return {
        "dream_over_sim": ratio["state_only"][top],
        "dream_over_sim_frames": ratio["frames"][top] if "frames" in ratio else None,
        "ratio_batch_size": int(top),
        "dream_transitions_per_s": dream,
        "sim_transitions_per_s": sim,
        "dream_over_sim_by_batch": ratio,
        "task": task,
        "num_denoising_steps": int(num_denoising_steps),
        "observations": {k: list(v) for k, v in sets.items()},
        "world_model": {
            "source": source,
            "parameters": sum(p.numel() for p in model.parameters()),
            "modalities": list(model.config.modalities),
            "resolution": res,
            "context": int(model.config.context),
        },
        "timed": "DreamVecEnv.step_tensors vs EgoRoomVecEnv.step_tensors, random actions, episode starts excluded",
        "threads": torch.get_num_threads(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench dream``."""
    torch.set_num_threads(int(cfg.threads))
    t0 = time.time()
    r = bench(
        cfg.checkpoint,
        list(cfg.batch_sizes),
        cfg.task,
        int(cfg.num_denoising_steps),
        bool(cfg.frames),
        float(cfg.measure_seconds),
        int(cfg.min_calls),
        int(cfg.warmup_calls),
        int(cfg.seed),
        int(cfg.resolution),
    )
    r["wall_s"] = time.time() - t0
    text = json.dumps(r, indent=2)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(text + "\n")
    print(
        f"bench dream: dream/simulator at B={r['ratio_batch_size']}: {r['dream_over_sim']:.2f}x state-only"
        + (f", {r['dream_over_sim_frames']:.2f}x with frames" if r["dream_over_sim_frames"] is not None else "")
        + f"; {cfg.out}"
    )
    return 0
