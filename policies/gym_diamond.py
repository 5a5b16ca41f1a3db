"""``dreamgym diamond env=<Gymnasium id> budget=<real steps> out=<run>``: the loop on any Gymnasium env.

Each iteration (read top to bottom in ``gym_diamond``):
  1. **collect** ``collect_steps`` real steps of ``gym.make(env, **env_kwargs)`` (``collect_envs``
     at a time) into ``<out>/iter_XX/data``, a ``collect env=<id>`` dataset: uniform random
     actions in the first iteration, then the current policy, sampled (not its mean), with
     exploration noise (Box: Gaussian, ``exploration_noise`` x half the action range; Discrete: a
     uniform action with probability ``exploration_noise``);
  2. **update the world model**: ``train-wm`` on every iteration's data so far, the vector world
     model (``worldmodel.vector``; ``vector.*`` of ``configs/train_wm.yaml``), ``gym_wm_steps``
     gradient steps, from scratch in the first iteration and from the previous one's weights after;
  3. **train the policy in imagination**: ``train-policy source_env=<id> env=dream`` (SB3
     ``algo``, hyperparameters ``ppo.*`` / ``sac.*``) for ``policy_steps`` dreamed steps, its
     episodes starting from this iteration's recorded episodes (``starts=dataset:``: no real step
     spent), continuing the previous iteration's policy (its weights).

The budget counts every real step: iterations go on while a collection still fits. At the end the
policy is scored on ``eval_episodes`` held-out episodes of the env (``policies.gym_eval``; not
counted). Every stage resumes by itself when the same command is re-run: a finished collection,
world model or policy is taken as it is, a world model or policy part-trained continues from its
checkpoint, and a collection cut short is collected again (its stochastic policy would not replay
the same episodes). ``<out>/log.jsonl`` holds one line per iteration, ``<out>/summary.json`` the
result. Another configuration into the same ``out`` is refused, listing the differences.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .weights import atomic_write_json, plain_kwargs


def _actor(policy: Path, env_id: str, action_space: Any, noise: float, seed: int):
    """``act(obs) -> actions`` of the saved policy, sampled, plus exploration noise (see step 1)."""
    from gymnasium import spaces

    from .sb3_format import load_sb3_network

    network, _ = load_sb3_network(policy)
    rng = np.random.default_rng(int(seed))
    discrete = isinstance(action_space, spaces.Discrete)

    def act(obs: Any) -> np.ndarray:
        a, _ = network.predict(obs, deterministic=False)
        if discrete:
            flip = rng.random(len(a)) < noise
            a = np.where(flip, rng.integers(action_space.start, action_space.start + action_space.n, len(a)), a)
            return np.asarray(a, np.int64)
        half = (action_space.high - action_space.low) / 2
        a = a + noise * half * rng.standard_normal(a.shape)
        return np.clip(a, action_space.low, action_space.high).astype(np.float32)

    return act


def _collect(cfg: DictConfig, it: int, n: int, policy: Path | None, data: Path) -> dict[str, Any]:
    from dreamgym.rollouts.dataset import Manifest
    from dreamgym.rollouts.gym_collect import collect_gym, make_env

    B = int(cfg.collect_envs)
    if (data / "manifest.json").exists():
        m = Manifest.load(data)
        if m.num_steps < n:  # cut short: a stochastic actor would not replay it, so collect it again
            shutil.rmtree(data)
    probe = make_env(str(cfg.env), plain_kwargs(cfg.env_kwargs))
    space = probe.action_space
    probe.close()
    kw: dict[str, Any] = {}
    if policy is not None:
        kw = {
            "actor": _actor(policy, str(cfg.env), space, float(cfg.exploration_noise), int(cfg.seed) * 1000 + it),
            "actor_name": str(policy),
        }
    res = collect_gym(
        data,
        env=str(cfg.env),
        env_kwargs=plain_kwargs(cfg.env_kwargs),
        steps=n,
        num_envs=B,
        seed=int(cfg.seed) * 1000 + it,
        round_steps=n // B,
        heldout_fraction=0.0,
        progress=False,
        **kw,
    )
    return {"real_steps": int(res.steps), "episodes": int(res.episodes)}


def _train_world_model(cfg: DictConfig, dirs: list[Path], out: Path, init: Path | None, seed: int) -> Path:
    from dreamgym.configs import compose
    from dreamgym.worldmodel.train import train

    wm = compose("train_wm", [])
    over = {
        "data": [str(d) for d in dirs],
        "out": str(out),
        "init": None if init is None else str(init),
        "steps": int(cfg.gym_wm_steps),
        "warmup_steps": min(200, int(cfg.gym_wm_steps) // 4),
        "eval_every": 0,
        "ckpt_every": max(1, min(500, int(cfg.gym_wm_steps))),
        "keep_checkpoints": 1,
        "seed": seed,
        "device": str(cfg.device),
        "num_threads": int(cfg.num_threads),
        "progress": False,
    }
    for k, v in over.items():
        OmegaConf.update(wm, k, v, merge=False)
    return train(wm)


def _policy_cfg(cfg: DictConfig, out: Path, world_model: Path, starts: Path, init: Path | None, seed: int) -> dict[str, Any]:
    algo = str(cfg.algo)
    return {
        "source_env": str(cfg.env),
        "env_kwargs": plain_kwargs(cfg.env_kwargs) or None,
        "env": "dream",
        "checkpoint": str(world_model),
        "starts": f"dataset:{starts}:all",
        "algo": algo,
        "out": str(out),
        "steps": int(cfg.policy_steps),
        "num_envs": int(cfg.num_envs),
        "seed": seed,
        "num_denoising_steps": cfg.get("num_denoising_steps"),
        "init_noise": cfg.get("init_noise"),
        "horizon": cfg.get("horizon"),
        "init": None if init is None else str(init),
        "checkpoint_every": int(cfg.checkpoint_every),
        "device": str(cfg.device),
        "num_threads": int(cfg.num_threads),
        "progress": bool(cfg.progress),
        algo: OmegaConf.to_container(cfg[algo], resolve=True),
    }


def gym_diamond(cfg: DictConfig) -> dict[str, Any]:
    """Run (or continue) the loop on ``cfg.env`` (see the module docstring); returns the summary."""
    from .diamond import _check_config, _resumed
    from .gym_eval import evaluate_gym_policy
    from .train import train_policy

    out = Path(str(cfg.out))
    _check_config(out, cfg)
    budget, B, seed = int(cfg.budget), int(cfg.collect_envs), int(cfg.seed)
    n = int(cfg.collect_steps) // B * B
    if n < B * 2:
        raise ValueError(f"diamond: collect_steps={cfg.collect_steps} gives under 2 steps per world of collect_envs={B}")
    if budget < n:
        raise ValueError(f"diamond: budget={budget} real steps is less than one collection (collect_steps={n})")
    t0 = time.time()
    log = _resumed(out)
    used = log[-1]["real_steps_used"] if log else 0
    policy = Path(log[-1]["policy"]) if log else None
    world_model = Path(log[-1]["world_model"]) if log else None
    it = len(log)
    while used + n <= budget:
        itdir = out / f"iter_{it:02d}"
        tic = time.time()
        collected = _collect(cfg, it, n, policy, itdir / "data")
        used += collected["real_steps"]
        t_collect, tic = time.time() - tic, time.time()
        dirs = [out / f"iter_{i:02d}" / "data" for i in range(it + 1)]
        world_model = _train_world_model(cfg, dirs, itdir / "world_model", world_model, seed * 1000 + it)
        t_wm, tic = time.time() - tic, time.time()
        policy = train_policy(_policy_cfg(cfg, itdir / "policy", world_model, itdir / "data", policy, seed * 1000 + it))
        meta = json.loads((policy.parent / "policy.json").read_text())
        used += int(meta["real_env_steps"])
        rec = {
            "iteration": it,
            "real_steps_used": used,
            "budget": budget,
            "collected": collected,
            "dream_steps": int(meta["steps"]),
            "dream_train_return": meta["train_return_recent"],
            "wall_s": {"collect": t_collect, "world_model": t_wm, "policy": time.time() - tic},
            "world_model": str(world_model),
            "policy": str(policy),
        }
        log.append(rec)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"diamond: iteration {it}: {used}/{budget} real steps; dreamed return {meta['train_return_recent']}")
        it += 1
    assert policy is not None and world_model is not None
    summary: dict[str, Any] = {
        "env": str(cfg.env),
        "budget": budget,
        "real_steps_used": used,
        "iterations": it,
        "dream_steps": sum(r["dream_steps"] for r in log),
        "policy": str(policy),
        "world_model": str(world_model),
        "wall_s": time.time() - t0,
    }
    if int(cfg.eval_episodes) > 0:
        summary["eval"] = evaluate_gym_policy(
            policy, str(cfg.env), plain_kwargs(cfg.env_kwargs), episodes=int(cfg.eval_episodes), seed=seed, device=str(cfg.device)
        )
    atomic_write_json(out / "summary.json", summary)
    return summary
