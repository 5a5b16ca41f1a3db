"""``dreamgym diamond task=<name> budget=<real steps> out=<run>``: a DIAMOND-style loop.

Each iteration (read top to bottom in ``diamond``):
  1. **collect** real transitions in ``EgoRoomVecEnv`` with the current policy plus Gaussian
     exploration noise (the first iteration uses ``first_policy``, random by default);
  2. **update the world model**: fine-tune the current checkpoint for ``wm.steps`` gradient steps on
     all real data collected so far, with ``train-wm``'s own pieces (``draw_noise``, ``EMA``,
     ``batch_indices``, ``WorldModel.loss``). State modalities only (motion, partner motion, props,
     reward head): the policies here read state, and it keeps an update to a few minutes;
  3. **train the policy in imagination**: ``train_policy(env=dream)`` on the updated world model,
     continuing the previous iteration's policy.

The only limit is the budget of real simulator steps. It counts the collection and the real
steps that start dreamed episodes (``DreamVecEnv`` starts each episode from K-1 simulator steps);
the collection of each iteration is shrunk so that the expected start steps still fit.
Evaluation on held-out rooms at the end (``eval_episodes``) is reported, not counted.

Every iteration writes ``<out>/iter_XX/`` (``world_model/``, ``policy/``) and a line of
``<out>/log.jsonl``; ``<out>/summary.json`` holds the final result. Call ``diamond(cfg)`` from Python.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dreamgym.policies.base import load_policy
from dreamgym.policies.collect import collect_with_policy
from dreamgym.worldmodel.finetune import finetune_world_model


def _train_room_seed(seed: int, index: int, num_envs: int) -> int:
    """First room of collection round ``index``: below 2**31 - 1 - B, like every training room."""
    s = np.random.SeedSequence([int(seed), int(index), 7]).generate_state(1, np.uint64)[0]
    return int(s % np.uint64(2**31 - 1 - num_envs))


# ----------------------------------------------------------------------------- the loop
def _policy_cfg(cfg: DictConfig, out: Path, world_model: Path, steps: int, init: Path | None, seed: int) -> DictConfig:
    return OmegaConf.create(
        {
            "env": "dream",
            "task": cfg.task,
            "checkpoint": str(world_model),
            "algo": cfg.algo,
            "out": str(out),
            "steps": int(steps),
            "num_envs": int(cfg.num_envs),
            "obs_keys": list(cfg.obs_keys),
            "seed": seed,
            "num_denoising_steps": int(cfg.num_denoising_steps),
            "horizon": cfg.horizon,
            "reward_source": cfg.reward_source,
            "init": str(init) if init else None,
            "stats_steps": int(cfg.stats_steps),
            "checkpoint_every": int(cfg.checkpoint_every),
            "tb_name": None,
            "device": cfg.device,
            "num_threads": int(cfg.num_threads),
            "progress": bool(cfg.progress),
            cfg.algo: OmegaConf.to_container(cfg[cfg.algo], resolve=True),
        }
    )


def diamond(cfg: DictConfig | dict) -> dict[str, Any]:
    """Run the loop as configured (``configs/diamond.yaml``); returns the summary (also in ``<out>/summary.json``)."""
    from dreamgym.policies.train import train_policy

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.out is None:
        raise SystemExit("dreamgym diamond: give out=<run dir>")
    torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    budget, seed = int(cfg.budget), int(cfg.seed)
    t0 = time.time()
    world_model: Any = cfg.checkpoint  # None: the shipped default
    policy_path: Path | None = None
    data: list[dict[str, torch.Tensor]] = []
    used = 0
    start_reserve = None  # real steps the next policy stage will spend on dream starts (estimated)
    it = 0
    log = []
    while True:
        K = _context_of(world_model)
        if start_reserve is None:
            start_reserve = (int(cfg.num_envs) + math.ceil(int(cfg.policy_steps) / 50)) * (K - 1)
        room = budget - used - start_reserve
        n = min(int(cfg.collect_steps), room) // int(cfg.collect_envs) * int(cfg.collect_envs)
        if n < int(cfg.collect_envs) * (K + 1):
            break
        itdir = out / f"iter_{it:02d}"
        tic = time.time()
        if policy_path is None:
            pol = load_policy(str(cfg.first_policy), task=cfg.task, seed=seed + it)
        else:
            pol = load_policy(policy_path, task=cfg.task)
        eps, cstats = collect_with_policy(
            pol,
            cfg.task,
            n,
            int(cfg.collect_envs),
            _train_room_seed(seed, it, int(cfg.collect_envs)),
            float(cfg.exploration_noise),
            cfg.device,
        )
        used += cstats["real_steps"]
        data += eps
        t_collect = time.time() - tic
        tic = time.time()
        world_model = finetune_world_model(
            world_model,
            data,
            itdir / "world_model",
            steps=int(cfg.wm.steps),
            batch_size=int(cfg.wm.batch_size),
            lr=float(cfg.wm.lr),
            ema_decay=float(cfg.wm.ema_decay),
            seed=seed + it,
            progress=bool(cfg.progress),
        )
        t_wm = time.time() - tic
        tic = time.time()
        policy_zip = train_policy(_policy_cfg(cfg, itdir / "policy", world_model, int(cfg.policy_steps), policy_path, seed + it))
        meta = json.loads((policy_zip.parent / "policy.json").read_text())
        used += int(meta["real_env_steps"])
        start_reserve = max(start_reserve, int(1.5 * int(meta["real_env_steps"])))
        policy_path = policy_zip
        rec = {
            "iteration": it,
            "real_steps_used": used,
            "budget": budget,
            "collected": cstats,
            "data_episodes": len(data),
            "dream_start_steps": int(meta["real_env_steps"]),
            "dream_train_return": meta["train_return_recent"],
            "dream_train_success": meta["train_success_recent"],
            "wall_s": {"collect": t_collect, "world_model": t_wm, "policy": time.time() - tic},
            "world_model": str(world_model),
            "policy": str(policy_zip),
        }
        log.append(rec)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"diamond: iteration {it}: {used}/{budget} real steps; collected success {cstats['success_rate']}, "
            f"dream success {meta['train_success_recent']}"
        )
        it += 1
    if policy_path is None:
        raise ValueError(f"budget={budget} real steps is too small for one iteration (collect_envs={cfg.collect_envs}, context {K})")
    summary: dict[str, Any] = {
        "task": cfg.task,
        "budget": budget,
        "real_steps_used": used,
        "iterations": it,
        "policy": str(policy_path),
        "world_model": str(world_model),
        "wall_s": time.time() - t0,
    }
    if int(cfg.eval_episodes) > 0:
        from dreamgym.policies.evaluate import evaluate_policy

        summary["eval"] = evaluate_policy(
            policy_path, task=cfg.task, episodes=int(cfg.eval_episodes), seed=seed, progress=bool(cfg.progress)
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _context_of(world_model: Any) -> int:
    from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT
    from dreamgym.worldmodel.model import WorldModel

    if isinstance(world_model, WorldModel):
        return int(world_model.config.context)
    path = Path(world_model) if world_model is not None else DEFAULT_CHECKPOINT
    cfg_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"world-model checkpoint {path} has no config.json")
    return int(json.loads(cfg_file.read_text())["context"])


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym diamond``."""
    summary = diamond(cfg)
    print(json.dumps(summary, indent=2))
    return 0
