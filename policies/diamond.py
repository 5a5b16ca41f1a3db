"""``dreamgym diamond task=<name> budget=<real steps> out=<run>``: a DIAMOND-style loop.

Each iteration (read top to bottom in ``diamond``):
  1. **collect** real transitions in ``EgoRoomVecEnv`` with the current policy plus Gaussian
     exploration noise (the first iteration uses ``first_policy``, random by default);
  2. **update the world model**: fine-tune the current checkpoint for ``wm.steps`` gradient steps on
     all real data collected so far, with the one world-model trainer (``worldmodel.trainer``,
     ``state_finetune_config``; ``wm.*`` sets any ``TrainingConfig`` field). State modalities only
     (motion, partner motion and its commands, props, reward head): the policies here read state,
     and it keeps an update to a few minutes;
  3. **train the policy in imagination**: ``train_policy(env=dream)`` on the updated world model,
     continuing the previous iteration's policy.

The only limit is the budget of real simulator steps. It counts the collection and the real
steps that start dreamed episodes (``DreamVecEnv`` starts each episode from K-1 simulator steps);
the collection of each iteration is shrunk so that the expected start steps still fit.
Evaluation on held-out rooms at the end (``eval_episodes``) is reported, not counted.

Every iteration writes ``<out>/iter_XX/`` (``collected.safetensors`` + ``collected.json``: its real
episodes; ``world_model/`` a trainer run, its EMA weights in ``world_model/final``; ``policy/``) and
a line of ``<out>/log.jsonl``; ``<out>/summary.json`` holds the final result. Re-running the same
command continues the run: finished iterations are taken from the log, an unfinished one reuses
its stored episodes, the world-model trainer's checkpoint and the policy run's checkpoint (a stage
killed before its first checkpoint starts again from its beginning). Each log line's ``stages``
says what each stage of its iteration did: ``new``, ``stored`` (the episodes an interrupted run
collected), ``restarted``, ``resumed from step N`` or ``done earlier``. A re-run with another
configuration into the same ``out`` is refused, listing the differences. Call ``diamond(cfg)``
from Python.
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
from dreamgym.policies.train_state import list_checkpoints
from dreamgym.policies.weights import atomic_write_json, read_json
from dreamgym.worldmodel.train_state import latest_checkpoint, record_differences
from dreamgym.worldmodel.trainer import TrainerOptions, state_finetune_config, train_world_model
from dreamgym.worldmodel.windows import EpisodeSource, load_episodes, save_episodes

# Settings a continued run may change (they change no result).
RESUMABLE_CHANGES = ("progress", "num_threads", "path")


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
            "num_denoising_steps": cfg.get("num_denoising_steps"),  # None: the world model's own sampler
            "init_noise": cfg.get("init_noise"),
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


def _check_config(out: Path, cfg: DictConfig) -> None:
    """Record the configuration in ``out``; refuse to continue a run that had another one."""
    now = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in RESUMABLE_CHANGES}
    path = out / "config.yaml"
    if path.exists():
        had = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path), resolve=True).items() if k not in RESUMABLE_CHANGES}
        diff = record_differences(had, now)
        if diff:
            raise ValueError(
                f"diamond: {out} holds a run with another configuration ({'; '.join(diff)}); "
                "re-run with that run's settings to continue it, or choose another out="
            )
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg))
    tmp.replace(path)


def _collect(cfg: DictConfig, it: int, n: int, policy_path: Path | None, itdir: Path) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """This iteration's real episodes: collected, or those an interrupted run stored."""
    seed = int(cfg.seed)
    done = itdir / "collected.json"
    if done.exists():
        return load_episodes(itdir / "collected.safetensors", None), json.loads(done.read_text())
    pol = (
        load_policy(str(cfg.first_policy), task=cfg.task, seed=seed + it)
        if policy_path is None
        else load_policy(policy_path, task=cfg.task)
    )
    room = _train_room_seed(seed, it, int(cfg.collect_envs))
    eps, stats = collect_with_policy(pol, cfg.task, n, int(cfg.collect_envs), room, float(cfg.exploration_noise), cfg.device)
    itdir.mkdir(parents=True, exist_ok=True)
    tmp = itdir / ".collected.safetensors.tmp"
    save_episodes(eps, tmp)
    tmp.replace(itdir / "collected.safetensors")
    atomic_write_json(done, stats)
    return eps, stats


def _update_world_model(cfg: DictConfig, world_model: Any, data: list[dict[str, torch.Tensor]], itdir: Path, seed: int) -> Path:
    """Fine-tune the current world model on all real data so far; returns its EMA weights' folder."""
    wm = OmegaConf.to_container(cfg.wm, resolve=True)
    assert isinstance(wm, dict)
    training = state_finetune_config(seed=seed, **wm)
    options = TrainerOptions(
        name="diamond: world model",
        device=str(cfg.device),
        eval_every=0,
        ckpt_every=max(1, min(100, training.steps)),
        keep_checkpoints=1,
        progress=bool(cfg.progress),
        save_raw=False,
        tensorboard=False,
    )
    source = EpisodeSource(data, name=f"diamond: the real data of iterations 0..{itdir.name[-2:]}")
    init = str(world_model) if world_model is not None else "default"
    return train_world_model(world_model, source, training, itdir / "world_model", options=options, record={"init": init})


def _resumed(out: Path) -> list[dict[str, Any]]:
    """The finished iterations of an earlier run into ``out`` (its log, less a last line that a kill cut short)."""
    path = out / "log.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    log = []
    for i, ln in enumerate(lines):
        try:
            log.append(json.loads(ln))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"diamond: {path} line {i + 1} is not JSON; the run's log is damaged, choose another out=") from None
            path.write_text("".join(x + "\n" for x in lines[:-1]))
    return log


def _wm_stage(folder: Path, steps: int) -> str:
    """What the world-model stage in ``folder`` is about to do (see the module docstring)."""
    ckpt = latest_checkpoint(folder)
    if ckpt is None:
        return "restarted" if folder.exists() else "new"
    step = int(ckpt.name.split("_")[1])
    return "done earlier" if step >= steps and (folder / "final").is_dir() else f"resumed from step {step}"


def _policy_stage(folder: Path) -> str:
    """What the policy stage in ``folder`` (a train-policy run) is about to do."""
    if not (folder / "run.json").exists():
        return "restarted" if folder.exists() else "new"
    if read_json(folder / "run.json", "run record").get("status") == "finished":
        return "done earlier"
    found = list_checkpoints(folder)
    return f"resumed from step {int(found[-1].name.split('-')[1])}" if found else "restarted"


def diamond(cfg: DictConfig | dict) -> dict[str, Any]:
    """Run the loop as configured (``configs/diamond.yaml``); returns the summary (also in ``<out>/summary.json``)."""
    from dreamgym.policies.train import train_policy

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.out is None:
        raise SystemExit("dreamgym diamond: give out=<run dir>")
    if cfg.get("env") is not None:  # a Gymnasium env of the user's: policies.gym_diamond
        from .gym_diamond import gym_diamond

        torch.set_num_threads(int(cfg.num_threads))
        return gym_diamond(cfg)
    torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.out)
    _check_config(out, cfg)
    budget, seed = int(cfg.budget), int(cfg.seed)
    t0 = time.time()
    log = _resumed(out)
    world_model: Any = log[-1]["world_model"] if log else cfg.checkpoint  # None: the shipped default
    policy_path: Path | None = Path(log[-1]["policy"]) if log else None
    data = [ep for rec in log for ep in load_episodes(out / f"iter_{rec['iteration']:02d}" / "collected.safetensors", None)]
    used = log[-1]["real_steps_used"] if log else 0
    # real steps the next policy stage will spend on dream starts (estimated)
    start_reserve = log[-1]["start_reserve"] if log else None
    it = len(log)
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
        stages = {"collect": "stored" if (itdir / "collected.json").exists() else "new"}
        stages["world_model"] = _wm_stage(itdir / "world_model", int(cfg.wm.steps))
        eps, cstats = _collect(cfg, it, n, policy_path, itdir)
        used += cstats["real_steps"]
        data += eps
        t_collect, tic = time.time() - tic, time.time()
        world_model = _update_world_model(cfg, world_model, data, itdir, seed + it)
        t_wm, tic = time.time() - tic, time.time()
        stages["policy"] = _policy_stage(itdir / "policy")
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
            "sampler": meta.get("sampler"),  # what the policy's dream was sampled with
            "wall_s": {"collect": t_collect, "world_model": t_wm, "policy": time.time() - tic},
            "world_model": str(world_model),
            "policy": str(policy_zip),
            "start_reserve": start_reserve,
            "stages": stages,
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
    return _summary(cfg, out, it, used, policy_path, world_model, time.time() - t0, log[-1].get("sampler"))


def _summary(
    cfg: DictConfig, out: Path, iterations: int, used: int, policy_path: Path, world_model: Any, wall_s: float, sampler: Any = None
) -> dict[str, Any]:
    """The run's result, with the policy's held-out evaluation in the real simulator; written to ``summary.json``."""
    summary: dict[str, Any] = {
        "task": cfg.task,
        "budget": int(cfg.budget),
        "real_steps_used": used,
        "iterations": iterations,
        "policy": str(policy_path),
        "world_model": str(world_model),
        "sampler": sampler,  # what the last policy's dream was sampled with
        "wall_s": wall_s,
    }
    if int(cfg.eval_episodes) > 0:
        from dreamgym.policies.evaluate import evaluate_policy

        summary["eval"] = evaluate_policy(
            policy_path, task=cfg.task, episodes=int(cfg.eval_episodes), seed=int(cfg.seed), progress=bool(cfg.progress)
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
    """Entry point of ``dreamgym diamond``: a user error is one line, not a traceback."""
    from dreamgym.rollouts.dataset import CorruptShardError

    try:
        summary = diamond(cfg)
    except (ValueError, FileNotFoundError, CorruptShardError) as e:
        raise SystemExit(f"dreamgym {e}" if str(e).startswith("diamond") else f"dreamgym diamond: {e}") from None
    print(json.dumps(summary, indent=2))
    return 0
