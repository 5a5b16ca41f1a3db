"""The ``diamond`` arm of ``bench transfer``: the DIAMOND-style loop (``dreamgym diamond``) in a cell.

The loop starts from the cell's world model (the dream arm's, behind ``wm_data_steps`` real
steps) and is given ``diamond.budget`` more real steps of its own: it collects with its current
policy, fine-tunes the world model on everything it collected, and trains the policy in the
updated dream, until the budget is spent (its collection and the K-1 real steps that start each
dreamed episode both count). Its real experience is therefore ``wm_data_steps`` plus the steps
it used, reported as its own N (``diamond_n_real_steps``) beside the dream arm's N. The policy
reads the cell's inputs (``obs_keys``); the world-model update is on the state modalities (the
frames stay those of the cell's model), as in ``dreamgym diamond``.

Its dreamed policy steps are ``diamond.policy_steps`` per iteration, or, when that is null, the
dream arm's ``dream_steps`` shared over the iterations the budget allows at ``collect_steps`` each,
so the two arms dream about as much. The stage is cached by key like the others and resumes a
killed loop in its folder (``dreamgym diamond``'s own resume).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dreamgym.benchmarks.runner import BenchRun


def diamond_cfg(cfg: DictConfig, cell: Any, folder: Path | None) -> DictConfig:
    """The ``dreamgym diamond`` configuration of the cell's loop (``out`` = ``folder/loop``)."""
    from dreamgym.configs import compose

    d = cfg.diamond
    budget = max(1, math.ceil(float(cfg.scale) * int(d.budget)))
    collect = max(1, math.ceil(float(cfg.scale) * int(d.collect_steps)))
    if d.get("policy_steps") is not None:
        per_iter = max(1, math.ceil(float(cfg.scale) * int(d.policy_steps)))
    else:
        per_iter = max(1, math.ceil(float(cfg.scale) * cell.dream_steps / max(1, budget // collect)))
    over = {
        "task": cell.task,
        "budget": budget,
        "out": str(folder / "loop") if folder is not None else None,
        "checkpoint": cell.checkpoint,
        "seed": int(cfg.seed),
        "collect_steps": collect,
        "collect_envs": int(d.collect_envs),
        "exploration_noise": float(d.exploration_noise),
        "wm": OmegaConf.to_container(d.wm, resolve=True),
        "policy_steps": per_iter,
        "algo": "ppo",
        "num_envs": int(cfg.num_envs.dream),
        "obs_keys": list(cell.obs_keys),
        "num_denoising_steps": cfg.get("num_denoising_steps"),
        "init_noise": cfg.get("init_noise"),
        "checkpoint_every": int(cfg.checkpoint_every),
        "eval_episodes": 0,  # the bench scores every arm itself, on the same rooms
        "num_threads": int(cfg.threads),
        "progress": bool(cfg.progress),
    }
    merged = OmegaConf.merge(compose("diamond", []), over, {"ppo": cfg.ppo})
    assert isinstance(merged, DictConfig)
    return merged


def diamond_stage(run: BenchRun, cfg: DictConfig, cell: Any) -> dict[str, Any]:
    """The loop for the cell, cached by key (its configuration and the world model's files).
    Returns the stage's figures with ``policy``, the final policy's folder."""
    from dreamgym.policies.diamond import diamond

    stage_cfg = {
        k: v
        for k, v in OmegaConf.to_container(diamond_cfg(cfg, cell, None), resolve=True).items()
        if k not in ("out", "progress", "num_threads")
    }

    def measure(folder: Path) -> dict[str, Any]:
        if not run.reuse:  # measure afresh: the loop would continue a killed run in its folder
            for p in folder.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        summary = diamond(diamond_cfg(cfg, cell, folder))
        log = [json.loads(line) for line in (folder / "loop" / "log.jsonl").read_text().splitlines() if line.strip()]
        policy = Path(summary["policy"]).parent
        meta = json.loads((policy / "policy.json").read_text())
        return {
            "env": "dream",
            "budget": int(stage_cfg["budget"]),
            "steps": sum(int(json.loads((Path(r["policy"]).parent / "policy.json").read_text())["steps"]) for r in log),
            "real_env_steps": int(summary["real_steps_used"]),
            "collected_steps": sum(int(r["collected"]["real_steps"]) for r in log),
            "dream_start_steps": sum(int(r["dream_start_steps"]) for r in log),
            "iterations": int(summary["iterations"]),
            "policy_steps_per_iteration": int(stage_cfg["policy_steps"]),
            "collected_success": [r["collected"]["success_rate"] for r in log],
            "train_success_recent": meta.get("train_success_recent"),
            "sampler": summary.get("sampler"),
            "world_model_final": summary["world_model"],
            "policy_folder": str(policy),
            "wall_s": summary["wall_s"],
        }

    r = run.cached("diamond", measure, config=stage_cfg, inputs={"world_model": cell.world_model_path()})
    return r | {"policy": r["policy_folder"]}
