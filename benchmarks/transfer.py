"""``dreamgym bench transfer task=reach``: does a policy trained only in imagination work in the simulator?

With N real simulator steps behind the world model (its training data; ``wm_data_steps``, plus
``collect_steps`` more when the bench fine-tunes it first), the bench trains

  (a) ``dream``: PPO only in ``DreamVecEnv`` on that world model (``dream_steps`` dreamed steps);
  (b) ``real10x``: the same PPO in ``EgoRoomVecEnv`` with ``real_multiplier`` x N real steps;

and scores them beside (c) ``random`` and (d) the scripted ``expert`` in the real simulator, all
four in one batch on the same held-out rooms (``evaluate_policies``). The **value gap** is the
return the dream predicts for (a) (``evaluate_in_dream``, episodes starting from real contexts)
minus its real return. The goal: ``dream_success >= 0.8 * real10x_success``. As a diagnostic of the
world model, the scripted expert is also run in the dream (``expert_dream_success``): a world model
that does not follow the controls shows up there first.

The real steps (a) consumes beyond N -- the K-1 simulator steps that start each dreamed episode --
are reported as ``dream_start_steps``. Stages are cached in ``run_dir`` (a re-run skips a finished
stage; ``reuse=false`` retrains). Everything goes to the JSON ``out``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


def _train_cfg(cfg: DictConfig, env: str, out: Path, steps: int, checkpoint: Any) -> DictConfig:
    from dreamgym.configs import compose

    base = compose("train_policy", [])
    over = {
        "env": env,
        "task": cfg.task,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "algo": "ppo",
        "out": str(out),
        "steps": int(steps),
        "num_envs": int(cfg.num_envs[env]),
        "obs_keys": list(cfg.obs_keys),
        "seed": int(cfg.seed),
        "num_denoising_steps": int(cfg.num_denoising_steps),
        "progress": bool(cfg.progress),
        "num_threads": int(cfg.threads),
        "checkpoint_every": int(cfg.checkpoint_every),
    }
    merged = OmegaConf.merge(base, over, {"ppo": cfg.ppo})
    assert isinstance(merged, DictConfig)
    return merged


def _stage(path: Path, reuse: bool, make: Any) -> tuple[Path, dict[str, Any]]:
    """Run ``make()`` unless ``path`` (a policy.safetensors with its policy.json) exists and ``reuse``."""
    if not (reuse and path.exists() and (path.parent / "policy.json").exists()):
        path = make()
    return path, json.loads((path.parent / "policy.json").read_text())


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run the four arms as configured (``configs/bench/transfer.yaml``); returns the JSON-ready result."""
    from dreamgym.policies.base import load_policy
    from dreamgym.policies.collect import collect_with_policy
    from dreamgym.policies.evaluate import evaluate_in_dream, evaluate_policies
    from dreamgym.policies.train import train_policy
    from dreamgym.worldmodel.trainer import TrainerOptions, state_finetune_config, train_world_model
    from dreamgym.worldmodel.windows import EpisodeSource

    t0 = time.time()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    world_model: Any = cfg.checkpoint
    n_real = int(cfg.wm_data_steps)
    if int(cfg.collect_steps) > 0:  # fine-tune the world model on fresh real data first (counted in N)
        tic = time.time()
        wm_dir = run_dir / "world_model" / "final"
        if not (cfg.reuse and (wm_dir / "model.safetensors").exists()):
            eps, stats = collect_with_policy(
                load_policy(str(cfg.collect_policy), task=cfg.task, seed=int(cfg.seed)),
                cfg.task,
                int(cfg.collect_steps),
                int(cfg.collect_envs),
                int(cfg.seed) + 11,
                float(cfg.collect_noise),
            )
            train_world_model(
                world_model,
                EpisodeSource(eps, name="bench transfer: collected episodes"),
                state_finetune_config(int(cfg.wm_steps), int(cfg.wm_batch_size), seed=int(cfg.seed)),
                wm_dir.parent,
                options=TrainerOptions(name="bench transfer: world model", eval_every=0, progress=bool(cfg.progress), resume=False),
            )
        world_model = wm_dir
        n_real += int(cfg.collect_steps) // int(cfg.collect_envs) * int(cfg.collect_envs)
        walls["world_model"] = time.time() - tic

    tic = time.time()
    dream_zip, dream_meta = _stage(
        run_dir / "dream" / "policy.safetensors",
        bool(cfg.reuse),
        lambda: train_policy(_train_cfg(cfg, "dream", run_dir / "dream", int(cfg.dream_steps), world_model)),
    )
    walls["train_dream"] = time.time() - tic
    real_steps = int(cfg.real_multiplier) * n_real
    tic = time.time()
    real_zip, real_meta = _stage(
        run_dir / "real10x" / "policy.safetensors",
        bool(cfg.reuse),
        lambda: train_policy(_train_cfg(cfg, "real", run_dir / "real10x", real_steps, None)),
    )
    walls["train_real10x"] = time.time() - tic

    tic = time.time()
    scores = evaluate_policies(
        {"dream": dream_zip, "real10x": real_zip, "random": "random", "expert": "expert"},
        task=cfg.task,
        episodes=int(cfg.eval_episodes),
        seed=int(cfg.eval_seed),
        max_worlds=int(cfg.eval_max_worlds),
        progress=bool(cfg.progress),
    )
    walls["eval_real"] = time.time() - tic
    tic = time.time()
    in_dream = evaluate_in_dream(
        dream_zip,
        world_model=world_model,
        task=cfg.task,
        episodes=int(cfg.value_gap_episodes),
        seed=int(cfg.eval_seed),
        num_denoising_steps=int(cfg.num_denoising_steps),
        progress=bool(cfg.progress),
    )
    walls["eval_dream"] = time.time() - tic
    tic = time.time()
    # diagnostic: the scripted expert in the same dream (does the world model follow the controls?)
    expert_dream = evaluate_in_dream(
        "expert",
        world_model=world_model,
        task=cfg.task,
        episodes=int(cfg.value_gap_episodes),
        seed=int(cfg.eval_seed),
        num_denoising_steps=int(cfg.num_denoising_steps),
        progress=bool(cfg.progress),
    )
    walls["eval_expert_dream"] = time.time() - tic
    walls["total"] = time.time() - t0

    out: dict[str, Any] = {}
    for name in ("dream", "real10x", "random", "expert"):
        s = scores[name]
        out[f"{name}_success"] = s["success_rate"]
        out[f"{name}_success_ci95"] = s["success_ci95"]
        out[f"{name}_return"] = s["mean_return"]
        out[f"{name}_return_ci95"] = s["return_ci95"]
    out["value_gap"] = in_dream["mean_return"] - scores["dream"]["mean_return"]
    out["dream_predicted_return"] = in_dream["mean_return"]
    out["dream_predicted_return_ci95"] = in_dream["return_ci95"]
    out["dream_predicted_success"] = in_dream["success_rate"]
    out["expert_dream_success"] = expert_dream["success_rate"]
    out["expert_dream_return"] = expert_dream["mean_return"]
    r10 = scores["real10x"]["success_rate"]
    out["dream_over_real10x_success"] = scores["dream"]["success_rate"] / r10 if r10 > 0 else None
    out["goal_met"] = bool(scores["dream"]["success_rate"] >= 0.8 * r10)
    out["budgets"] = {
        "world_model_real_steps": n_real,
        "world_model_data": f"{cfg.wm_data_steps} steps behind {cfg.checkpoint or 'the shipped default'}"
        + (f" + {n_real - int(cfg.wm_data_steps)} collected by {cfg.collect_policy} for fine-tuning" if int(cfg.collect_steps) > 0 else ""),
        "dream_env_steps": int(dream_meta["steps"]),
        "dream_start_steps": int(dream_meta["real_env_steps"]),
        "real10x_real_steps": int(real_meta["steps"]),
        "real_multiplier": int(cfg.real_multiplier),
        "eval_episodes_per_policy": scores["dream"]["episodes"],
        "value_gap_episodes": in_dream["episodes"],
    }
    out["wall_s"] = walls
    out["details"] = {
        "real": scores,
        "dream_predicted": in_dream,
        "expert_in_dream": expert_dream,
        "dream_training": dream_meta,
        "real10x_training": real_meta,
    }
    out["config"] = OmegaConf.to_container(cfg, resolve=True)
    out["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    return out


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench transfer``."""
    torch.set_num_threads(int(cfg.threads))
    r = bench(cfg)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(r, indent=2) + "\n")
    gap = r["value_gap"]
    print(
        f"bench transfer ({cfg.task}): success dream {r['dream_success']:.2f}, real10x {r['real10x_success']:.2f}, "
        f"random {r['random_success']:.2f}, expert {r['expert_success']:.2f}; value gap {gap:+.2f}; goal met: {r['goal_met']}; {cfg.out}"
    )
    return 0
