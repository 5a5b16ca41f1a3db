"""``dreamgym train-policy env=dream|real task=<name> checkpoint=<ckpt> algo=ppo|sac out=<run> steps=N``.

Trains a Stable-Baselines3 ``MultiInputPolicy`` (PPO or SAC) in a batched env behind
``envs.sb3.SB3VecEnv``: ``env=dream`` is a ``DreamVecEnv`` on the world model ``checkpoint`` (the
shipped default when null), ``env=real`` is ``EgoRoomVecEnv`` asking only for the policy's
observation keys (state keys: no rendering). The training code is the same for both.

Read top to bottom, one run:
  1. build the env; measure per-key observation statistics over a few random steps (they become
     part of the policy: ``networks.ObsExtractor``);
  2. build the SB3 model (hyperparameters from ``configs/sb3/<algo>.yaml``), or load ``init``
     (a previous policy .zip) to continue training it in this env -- the DIAMOND loop does that;
  3. ``learn`` with a progress bar, tensorboard logs in ``<out>/tb`` and SB3 checkpoints in
     ``<out>/checkpoints`` every ``checkpoint_every`` env steps;
  4. save ``<out>/policy.zip`` and ``<out>/policy.json`` (family ``sb3``, algo, task, env, obs keys,
     world model, steps, real simulator steps used, wall time), which ``load_policy(<out>)`` reads.

Real simulator steps are counted: ``env=real`` uses ``steps``; ``env=dream`` uses the real steps
of its episode starts (``DreamVecEnv.real_steps``: the simulator steps its start source ran, K-1
per start; none for starts from a dataset).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .base import POLICY_CONFIG, sb3_algo_class

STATE_OBS = ("motion", "partner_motion", "occupancy", "ego_rgb", "ego_depth")


def dream_modalities(obs_keys: Sequence[str]) -> tuple[str, ...]:
    """What a ``DreamVecEnv`` must generate to give ``obs_keys`` (motion is always generated)."""
    gen = ["motion", "partner_motion"]
    gen += [k for k in obs_keys if k in STATE_OBS and k not in gen]
    return tuple(gen)


def make_env(
    env: str,
    task: str = "reach",
    num_envs: int = 16,
    obs_keys: Sequence[str] = ("task_obs", "motion"),
    seed: int = 0,
    checkpoint: Any = None,
    num_denoising_steps: int = 1,
    horizon: int | None = None,
    reward_source: str = "task",
    device: str | torch.device = "cpu",
):
    """A batched env of the shared step API: ``real`` (``EgoRoomVecEnv``) or ``dream`` (``DreamVecEnv``)."""
    keys = tuple(obs_keys)
    if env == "real":
        from dreamgym.envs.vec_env import EgoRoomVecEnv

        return EgoRoomVecEnv(num_envs=num_envs, task=task, obs_keys=keys, seed=seed, device=device, return_tensors=True)
    if env == "dream":
        from dreamgym.worldmodel.dream_env import DreamVecEnv

        return DreamVecEnv(
            checkpoint,
            num_envs=num_envs,
            task=task,
            modalities=dream_modalities(keys),
            obs_keys=keys,
            horizon=horizon,
            num_denoising_steps=num_denoising_steps,
            reward_source=reward_source,
            device=device,
            seed=seed,
            return_tensors=True,
        )
    raise ValueError(f"env must be 'real' or 'dream', got {env!r}")


class _Progress:
    """Counts finished episodes."""

    def __init__(self):
        from stable_baselines3.common.callbacks import BaseCallback

        outer = self

        class CB(BaseCallback):
            def _on_step(self) -> bool:
                dones = self.locals.get("dones")
                if dones is not None:
                    outer.episodes += int(np.sum(dones))
                return True

        self.episodes = 0
        self.callback = CB()


def train_policy(cfg: DictConfig | dict) -> Path:
    """Train a policy as configured (see ``configs/train_policy.yaml``); returns ``<out>/policy.zip``."""
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
    from stable_baselines3.common.vec_env import VecMonitor

    from dreamgym.envs.sb3 import SB3VecEnv

    from .networks import ObsExtractor, measure_obs_stats

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.out is None:
        raise SystemExit("dreamgym train-policy: give out=<run dir>")
    torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    algo = str(cfg.algo)
    cls = sb3_algo_class(algo)
    obs_keys = tuple(cfg.obs_keys)
    t0 = time.time()
    env = make_env(
        cfg.env,
        cfg.task,
        int(cfg.num_envs),
        obs_keys,
        int(cfg.seed),
        cfg.checkpoint,
        int(cfg.num_denoising_steps),
        cfg.horizon,
        str(cfg.reward_source),
        cfg.device,
    )
    venv = VecMonitor(SB3VecEnv(env))
    hp = OmegaConf.to_container(cfg[algo], resolve=True)
    assert isinstance(hp, dict)
    hp.pop("algo", None)
    net_arch = hp.pop("net_arch", [128, 128])
    if cfg.init:
        model = cls.load(str(cfg.init), env=venv, device=cfg.device, tensorboard_log=str(out / "tb"))
        if set(model.observation_space.spaces) != set(obs_keys):
            raise ValueError(f"init policy {cfg.init} reads {list(model.observation_space.spaces)}, but obs_keys={list(obs_keys)}")
    else:
        stats = measure_obs_stats(env, int(cfg.stats_steps), int(cfg.seed))
        policy_kwargs = dict(
            net_arch=list(net_arch),
            features_extractor_class=ObsExtractor,
            features_extractor_kwargs={"stats": stats},
            normalize_images=False,
        )
        if "log_std_init" in hp:
            policy_kwargs["log_std_init"] = float(hp.pop("log_std_init"))
        model = cls(
            "MultiInputPolicy",
            venv,
            seed=int(cfg.seed),
            device=cfg.device,
            tensorboard_log=str(out / "tb"),
            policy_kwargs=policy_kwargs,
            verbose=0,
            **hp,
        )
    start_steps = int(model.num_timesteps)
    counter = _Progress()
    every = max(1, int(cfg.checkpoint_every) // int(cfg.num_envs))
    callbacks = CallbackList([counter.callback, CheckpointCallback(every, str(out / "checkpoints"), name_prefix=algo)])
    model.learn(
        total_timesteps=int(cfg.steps),
        callback=callbacks,
        progress_bar=bool(cfg.progress),
        tb_log_name=str(cfg.get("tb_name") or algo),
        reset_num_timesteps=not cfg.init,
    )
    path = out / "policy.zip"
    model.save(str(path))
    total_steps = int(model.num_timesteps)  # includes the steps of ``init``
    steps = total_steps - start_steps
    real_steps = steps if cfg.env == "real" else int(env.real_steps)  # the dream's: simulator steps spent on its starts
    ep_returns = [float(e["r"]) for e in model.ep_info_buffer] if model.ep_info_buffer else []
    meta = {
        "family": "sb3",
        "algo": algo,
        "task": cfg.task,
        "env": cfg.env,
        "obs_keys": list(obs_keys),
        "world_model": None if cfg.env == "real" else str(cfg.checkpoint or "default"),
        "steps": steps,
        "total_steps": total_steps,
        "real_env_steps": real_steps,
        "starts": None if cfg.env == "real" else env.starts_info,
        "episodes": counter.episodes,
        "train_return_recent": float(np.mean(ep_returns)) if ep_returns else None,
        "train_success_recent": float(np.mean(model.ep_success_buffer)) if model.ep_success_buffer else None,
        "wall_s": time.time() - t0,
        "init": str(cfg.init) if cfg.init else None,
    }
    (out / POLICY_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "train_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    venv.close()
    return path


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym train-policy``."""
    path = train_policy(cfg)
    print(json.dumps(json.loads((path.parent / POLICY_CONFIG).read_text()), indent=2))
    print(f"train-policy: policy in {path}")
    return 0
