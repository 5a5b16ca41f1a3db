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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .base import Policy, load_policy, required_obs_keys

WM_KEYS = ("motion", "partner_motion", "instruction")


def _train_room_seed(seed: int, index: int, num_envs: int) -> int:
    """First room of collection round ``index``: below 2**31 - 1 - B, like every training room."""
    s = np.random.SeedSequence([int(seed), int(index), 7]).generate_state(1, np.uint64)[0]
    return int(s % np.uint64(2**31 - 1 - num_envs))


# ----------------------------------------------------------------------------- 1. collection
@torch.no_grad()
def collect_with_policy(
    policy: Policy,
    task: str,
    steps: int,
    num_envs: int,
    seed: int,
    exploration_noise: float = 0.3,
    device: str | torch.device = "cpu",
) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Run ``policy`` (+ noise) for about ``steps`` real steps; episodes in the world model's row layout.

    Rows hold ``motion``, ``partner_motion``, ``props``, ``actions``, ``rewards``, ``terminations``
    and ``instruction``; an episode's last row is its final observation with a zero action (as
    ``worldmodel.data.collect_episodes``). Unfinished episodes are kept (they are valid windows).
    Returns the episodes and ``{"real_steps", "episodes_finished", "mean_return", "success_rate"}``.
    """
    from dreamgym.envs.vec_env import EgoRoomVecEnv
    from dreamgym.worldmodel.data import props_from_qpos

    from .evaluate import RowView

    n_vec = steps // num_envs
    if n_vec < 1:
        raise ValueError(f"collect {steps} steps with {num_envs} worlds: fewer than one step per world")
    keys = required_obs_keys([policy]) + tuple(k for k in WM_KEYS if k not in policy.obs_keys)
    env = EgoRoomVecEnv(num_envs=num_envs, task=task, obs_keys=keys, seed=seed, device=device, return_tensors=True)
    obs, _ = env.reset_tensors(seed=seed)
    if hasattr(policy, "bind"):
        policy.bind(RowView(env, torch.arange(num_envs)))
    gen = torch.Generator().manual_seed(int(seed))
    props = props_from_qpos(env.sim_state()["qpos"].cpu())
    current: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(num_envs)]
    episodes: list[dict[str, torch.Tensor]] = []
    ret = torch.zeros(num_envs, dtype=torch.float64)
    returns, successes = [], []
    pkeys = policy.obs_keys
    for _ in range(n_vec):
        a = policy.act({k: obs[k] for k in pkeys}, deterministic=False).cpu()
        if exploration_noise > 0:
            a = a + exploration_noise * torch.randn(a.shape, generator=gen)
        a = a.clamp(-1, 1)
        nobs, rew, term, trunc, info = env.step_tensors(a.to(env.device))
        rew, term = rew.cpu(), term.cpu()
        for i in range(num_envs):
            current[i].append({"motion": obs["motion"][i].cpu(), "partner_motion": obs["partner_motion"][i].cpu(), "props": props[i],
                               "actions": a[i], "rewards": rew[i].float(), "terminations": term[i],
                               "instruction": obs["instruction"][i].cpu()})
        ret += rew.double()
        new_props = props_from_qpos(env.sim_state()["qpos"].cpu())
        done = (term | trunc.cpu())
        if bool(done.any()):
            fin = info["final_obs"]
            fin_props = props_from_qpos(info["final_state"]["qpos"].cpu())
            fs = info["final_success"].cpu()
            for i in done.nonzero()[:, 0].tolist():
                last = {"motion": fin["motion"][i].cpu(), "partner_motion": fin["partner_motion"][i].cpu(), "props": fin_props[i],
                        "actions": torch.zeros(6), "rewards": torch.zeros(()), "terminations": torch.zeros((), dtype=torch.bool),
                        "instruction": obs["instruction"][i].cpu()}
                episodes.append({k: torch.stack([r[k] for r in current[i] + [last]]) for k in last})
                current[i] = []
                returns.append(float(ret[i]))
                successes.append(bool(fs[i]))
                ret[i] = 0.0
            if hasattr(policy, "reset"):
                policy.reset(done)
        obs, props = nobs, new_props
    for rows in current:
        if rows:
            episodes.append({k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    env.close()
    stats = {
        "real_steps": n_vec * num_envs, "episodes_finished": len(returns),
        "mean_return": float(np.mean(returns)) if returns else None,
        "success_rate": float(np.mean(successes)) if successes else None,
    }
    return episodes, stats


# ----------------------------------------------------------------------------- 2. world-model update
def finetune_world_model(
    init: Any,
    episodes: Sequence[Mapping[str, torch.Tensor]],
    out: str | Path,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    ema_decay: float = 0.99,
    noise: Mapping[str, float] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Fine-tune a world model (instance, checkpoint path, or None for the default) on in-memory episodes.

    One step is ``train-wm``'s step restricted to the state modalities (both U-Net branches absent):
    windows of K+1 rows drawn by ``batch_indices``, noise by ``draw_noise``, ``WorldModel.loss``,
    gradient clipping, AdamW, EMA. The normalisation statistics of ``init`` are kept. Saves the
    EMA weights to ``out`` (``save_pretrained``) and returns ``out``.
    """
    from tqdm.auto import tqdm

    from dreamgym.envs.dream_env import load_world_model
    from dreamgym.worldmodel import data as D
    from dreamgym.worldmodel.train import EMA, NonFiniteLossError, batch_indices, draw_noise

    model = load_world_model(init, "cpu")
    model.train()
    K = model.config.context
    ds = D.EpisodeWindows(list(episodes), K + 1)
    if len(ds) == 0:
        raise ValueError(f"no window of {K + 1} steps in {len(episodes)} episodes; collect more steps")
    tcfg = {"p_clean": 0.1, "p_sigma_max": 0.15, **(noise or {}), "p_skip_frames": 1.0, "p_skip_occupancy": 1.0}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    ema = EMA(model, ema_decay)
    B = int(batch_size)
    for step in tqdm(range(int(steps)), desc="world model", disable=not progress, dynamic_ncols=True):
        batch = D.collate([ds[i] for i in batch_indices(step, len(ds), B, seed)])
        nz, sigma, branches = draw_noise(model.config, tcfg, step, list(range(B)), seed)
        losses = model.loss(batch, nz, sigma, branches)
        total = losses["total"]
        if not bool(torch.isfinite(total)):
            raise NonFiniteLossError(f"world-model fine-tuning: non-finite loss at step {step}: { {k: float(v) for k, v in losses.items()} }")
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        ema.update(model, step)
    model.load_state_dict(ema.shadow)
    return model.eval().save_pretrained(out)


# ----------------------------------------------------------------------------- the loop
def _policy_cfg(cfg: DictConfig, out: Path, world_model: Path, steps: int, init: Path | None, seed: int) -> DictConfig:
    return OmegaConf.create({
        "env": "dream", "task": cfg.task, "checkpoint": str(world_model), "algo": cfg.algo, "out": str(out), "steps": int(steps),
        "num_envs": int(cfg.num_envs), "obs_keys": list(cfg.obs_keys), "seed": seed, "num_denoising_steps": int(cfg.num_denoising_steps),
        "horizon": cfg.horizon, "reward_source": cfg.reward_source, "init": str(init) if init else None, "stats_steps": int(cfg.stats_steps),
        "checkpoint_every": int(cfg.checkpoint_every), "tb_name": None, "device": cfg.device, "num_threads": int(cfg.num_threads),
        "progress": bool(cfg.progress), cfg.algo: OmegaConf.to_container(cfg[cfg.algo], resolve=True),
    })


def diamond(cfg: DictConfig | dict) -> dict[str, Any]:
    """Run the loop as configured (``configs/diamond.yaml``); returns the summary (also in ``<out>/summary.json``)."""
    from .train import train_policy

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
        eps, cstats = collect_with_policy(pol, cfg.task, n, int(cfg.collect_envs), _train_room_seed(seed, it, int(cfg.collect_envs)),
                                          float(cfg.exploration_noise), cfg.device)
        used += cstats["real_steps"]
        data += eps
        t_collect = time.time() - tic
        tic = time.time()
        world_model = finetune_world_model(world_model, data, itdir / "world_model", steps=int(cfg.wm.steps), batch_size=int(cfg.wm.batch_size),
                                           lr=float(cfg.wm.lr), ema_decay=float(cfg.wm.ema_decay), seed=seed + it, progress=bool(cfg.progress))
        t_wm = time.time() - tic
        tic = time.time()
        policy_zip = train_policy(_policy_cfg(cfg, itdir / "policy", world_model, int(cfg.policy_steps), policy_path, seed + it))
        meta = json.loads((policy_zip.parent / "policy.json").read_text())
        used += int(meta["real_env_steps"])
        start_reserve = max(start_reserve, int(1.5 * int(meta["real_env_steps"])))
        policy_path = policy_zip
        rec = {
            "iteration": it, "real_steps_used": used, "budget": budget, "collected": cstats, "data_episodes": len(data),
            "dream_start_steps": int(meta["real_env_steps"]), "dream_train_return": meta["train_return_recent"],
            "dream_train_success": meta["train_success_recent"], "wall_s": {"collect": t_collect, "world_model": t_wm, "policy": time.time() - tic},
            "world_model": str(world_model), "policy": str(policy_zip),
        }
        log.append(rec)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"diamond: iteration {it}: {used}/{budget} real steps; collected success {cstats['success_rate']}, "
              f"dream success {meta['train_success_recent']}")
        it += 1
    if policy_path is None:
        raise ValueError(f"budget={budget} real steps is too small for one iteration (collect_envs={cfg.collect_envs}, context {K})")
    summary: dict[str, Any] = {"task": cfg.task, "budget": budget, "real_steps_used": used, "iterations": it,
                               "policy": str(policy_path), "world_model": str(world_model), "wall_s": time.time() - t0}
    if int(cfg.eval_episodes) > 0:
        from .evaluate import evaluate_policy

        summary["eval"] = evaluate_policy(policy_path, task=cfg.task, episodes=int(cfg.eval_episodes), seed=seed, progress=bool(cfg.progress))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _context_of(world_model: Any) -> int:
    from dreamgym.envs.dream_env import DEFAULT_CHECKPOINT
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
