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
are reported as ``dream_start_steps``. The trained stages (the fine-tuned world model, the two
policies) are kept in ``run_dir/<arm>/<key>/``; with ``reuse`` a re-run skips a stage only when the
code version, the stage's config and its inputs (the world model's files) give the same key, and
the JSON's ``reused`` names the file and the key each skipped stage came from. The evaluations
always run. Everything goes to the JSON ``out`` (default ``benchmarks/results/transfer.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dreamgym.benchmarks.runner import BenchRun


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
        "num_denoising_steps": cfg.get("num_denoising_steps"),  # None: the world model's own sampler
        "init_noise": cfg.get("init_noise"),
        "progress": bool(cfg.progress),
        "num_threads": int(cfg.threads),
        "checkpoint_every": int(cfg.checkpoint_every),
    }
    merged = OmegaConf.merge(base, over, {"ppo": cfg.ppo})
    assert isinstance(merged, DictConfig)
    return merged


def _world_model_path(world_model: Any) -> Path:
    """The folder of a world model given as a path, or the shipped default for None."""
    from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT

    return Path(world_model) if world_model is not None else DEFAULT_CHECKPOINT


# ------------------------------------------------------------------------------ stages
def world_model_stage(run: BenchRun, cfg: DictConfig) -> tuple[Any, int]:
    """With ``collect_steps > 0``: collect fresh real steps and fine-tune the world model on them
    (arm ``world_model``, cached by key). Returns the world model of arm (a) and N, its real steps."""
    from dreamgym.policies.base import load_policy
    from dreamgym.policies.collect import collect_with_policy
    from dreamgym.worldmodel.trainer import TrainerOptions, state_finetune_config, train_world_model
    from dreamgym.worldmodel.windows import EpisodeSource

    n_real = int(cfg.wm_data_steps)
    if int(cfg.collect_steps) <= 0:
        return cfg.checkpoint, n_real
    keys = ("task", "collect_policy", "collect_steps", "collect_envs", "collect_noise", "wm_steps", "wm_batch_size", "seed")
    whole = OmegaConf.to_container(cfg, resolve=True)
    stage_cfg = {k: whole[k] for k in keys}
    inputs = {"init": _world_model_path(cfg.checkpoint)}
    if Path(str(cfg.collect_policy)).exists():
        inputs["collect_policy"] = Path(str(cfg.collect_policy))

    def measure(wm_dir: Path) -> dict[str, Any]:
        tic = time.time()
        eps, stats = collect_with_policy(
            load_policy(str(cfg.collect_policy), task=cfg.task, seed=int(cfg.seed)),
            cfg.task,
            int(cfg.collect_steps),
            int(cfg.collect_envs),
            int(cfg.seed) + 11,
            float(cfg.collect_noise),
        )
        train_world_model(
            cfg.checkpoint,
            EpisodeSource(eps, name="bench transfer: collected episodes"),
            state_finetune_config(int(cfg.wm_steps), int(cfg.wm_batch_size), seed=int(cfg.seed)),
            wm_dir,
            options=TrainerOptions(name="bench transfer: world model", eval_every=0, progress=bool(cfg.progress), resume=False),
        )
        return {"checkpoint": str(wm_dir / "final"), "collected": stats, "wall_s": time.time() - tic}

    arm = run.cached("world_model", measure, config=stage_cfg, inputs=inputs)
    return arm["checkpoint"], n_real + int(cfg.collect_steps) // int(cfg.collect_envs) * int(cfg.collect_envs)


def policy_stage(run: BenchRun, cfg: DictConfig, arm: str, env: str, steps: int, world_model: Any) -> tuple[Path, dict[str, Any]]:
    """Train PPO for arm ``arm`` (``dream`` or ``real10x``) in ``env`` for ``steps`` steps, cached
    by key (the training config, and the world model's files for the dream)."""
    from dreamgym.policies.train import train_policy

    train_cfg = _train_cfg(cfg, env, Path("."), steps, world_model)
    stage_cfg = {k: v for k, v in OmegaConf.to_container(train_cfg, resolve=True).items() if k not in ("out", "progress")}
    inputs = {"world_model": _world_model_path(world_model)} if env == "dream" else {}

    def measure(out: Path) -> dict[str, Any]:
        tic = time.time()
        train_cfg.out = str(out)
        policy = train_policy(train_cfg)
        return {"policy": str(policy), "training": json.loads((policy.parent / "policy.json").read_text()), "wall_s": time.time() - tic}

    r = run.cached(arm, measure, config=stage_cfg, inputs=inputs)
    return Path(r["policy"]), r["training"]


def evaluation_stage(run: BenchRun, cfg: DictConfig, policies: dict[str, Any], world_model: Any) -> None:
    """Arms ``eval_real`` (all four policies in one batch on the same held-out rooms),
    ``dream_predicted`` (policy (a) in its dream) and ``expert_in_dream`` (the diagnostic)."""
    from dreamgym.policies.evaluate import evaluate_in_dream, evaluate_policies

    tic = time.time()
    scores = evaluate_policies(
        policies,
        task=cfg.task,
        episodes=int(cfg.eval_episodes),
        seed=int(cfg.eval_seed),
        max_worlds=int(cfg.eval_max_worlds),
        progress=bool(cfg.progress),
    )
    run.add("eval_real", {"scores": scores, "wall_s": time.time() - tic})
    for arm, policy in (("dream_predicted", policies["dream"]), ("expert_in_dream", "expert")):
        tic = time.time()
        r = evaluate_in_dream(
            policy,
            world_model=world_model,
            task=cfg.task,
            episodes=int(cfg.value_gap_episodes),
            seed=int(cfg.eval_seed),
            num_denoising_steps=cfg.get("num_denoising_steps"),
            init_noise=cfg.get("init_noise"),
            progress=bool(cfg.progress),
        )
        run.add(arm, {"scores": r, "wall_s": time.time() - tic})


def transfer_summary(cfg: DictConfig, arms: dict[str, Any], n_real: int) -> dict[str, Any]:
    """Success and return of each policy in the simulator, the value gap, the goal and the budgets."""
    scores, in_dream = arms["eval_real"]["scores"], arms["dream_predicted"]["scores"]
    expert_dream = arms["expert_in_dream"]["scores"]
    dream_meta, real_meta = arms["dream"]["training"], arms["real10x"]["training"]
    out: dict[str, Any] = {}
    for name in ("dream", "real10x", "random", "expert"):
        s = scores[name]
        out |= {f"{name}_success": s["success_rate"], f"{name}_success_ci95": s["success_ci95"]}
        out |= {f"{name}_return": s["mean_return"], f"{name}_return_ci95": s["return_ci95"]}
    out["value_gap"] = in_dream["mean_return"] - scores["dream"]["mean_return"]
    out["dream_predicted_return"] = in_dream["mean_return"]
    out["dream_predicted_return_ci95"] = in_dream["return_ci95"]
    out["dream_predicted_success"] = in_dream["success_rate"]
    out["expert_dream_success"] = expert_dream["success_rate"]
    out["expert_dream_return"] = expert_dream["mean_return"]
    out["sampler"] = in_dream.get("sampler")  # what the value gap's dream was sampled with
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
    return out


def bench(cfg: DictConfig, run: BenchRun | None = None) -> dict[str, Any]:
    """Run the four arms as configured (``configs/bench/transfer.yaml``); returns the JSON-ready result."""
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    run = run or BenchRun("transfer", cfg, cache_dir=cfg.run_dir, reuse=bool(cfg.reuse))
    world_model, n_real = world_model_stage(run, cfg)
    dream_policy, _ = policy_stage(run, cfg, "dream", "dream", int(cfg.dream_steps), world_model)
    real_policy, _ = policy_stage(run, cfg, "real10x", "real", int(cfg.real_multiplier) * n_real, None)
    evaluation_stage(run, cfg, {"dream": dream_policy, "real10x": real_policy, "random": "random", "expert": "expert"}, world_model)
    run.summary = transfer_summary(cfg, run.arms, n_real)
    return run.result()


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench transfer``."""
    torch.set_num_threads(int(cfg.threads))
    bench_run = BenchRun("transfer", cfg, cache_dir=cfg.run_dir, reuse=bool(cfg.reuse))
    s = bench(cfg, bench_run)["summary"]
    path = bench_run.write(cfg.out)
    print(
        f"bench transfer ({cfg.task}): success dream {s['dream_success']:.2f}, real10x {s['real10x_success']:.2f}, "
        f"random {s['random_success']:.2f}, expert {s['expert_success']:.2f}; value gap {s['value_gap']:+.2f}; "
        f"goal met: {s['goal_met']}; reused: {sorted(bench_run.reused) or 'nothing'}; {path}"
    )
    return 0
