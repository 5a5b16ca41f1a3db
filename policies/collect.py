"""Real transitions collected with a policy, in the world model's row layout (the DIAMOND-style loop's
first stage, also used by ``bench transfer``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Policy, required_obs_keys

WM_KEYS = ("motion", "partner_motion", "instruction")


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

    Rows hold ``motion``, ``partner_motion``, ``props``, ``actions``, ``partner_actions`` (the
    partner's commands, as the simulator ran them), ``rewards``, ``terminations`` and
    ``instruction``; an episode's last row is its final observation with zero actions (as
    ``worldmodel.data.collect_episodes``). Unfinished episodes are kept (they are valid windows).
    Returns the episodes and ``{"real_steps", "episodes_finished", "mean_return", "success_rate"}``.
    """
    from dreamgym.envs.vec_env import EgoRoomVecEnv
    from dreamgym.policies.evaluate import RowView
    from dreamgym.rollouts.episodes import props_from_qpos

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
        pact = env.core.partner_action.cpu()  # the partner's command of this step
        for i in range(num_envs):
            current[i].append(
                {
                    "motion": obs["motion"][i].cpu(),
                    "partner_motion": obs["partner_motion"][i].cpu(),
                    "props": props[i],
                    "actions": a[i],
                    "partner_actions": pact[i].float(),
                    "rewards": rew[i].float(),
                    "terminations": term[i],
                    "instruction": obs["instruction"][i].cpu(),
                }
            )
        ret += rew.double()
        new_props = props_from_qpos(env.sim_state()["qpos"].cpu())
        done = term | trunc.cpu()
        if bool(done.any()):
            fin = info["final_obs"]
            fin_props = props_from_qpos(info["final_state"]["qpos"].cpu())
            fs = info["final_success"].cpu()
            for i in done.nonzero()[:, 0].tolist():
                last = {
                    "motion": fin["motion"][i].cpu(),
                    "partner_motion": fin["partner_motion"][i].cpu(),
                    "props": fin_props[i],
                    "actions": torch.zeros(6),
                    "partner_actions": torch.zeros(6),
                    "rewards": torch.zeros(()),
                    "terminations": torch.zeros((), dtype=torch.bool),
                    "instruction": obs["instruction"][i].cpu(),
                }
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
        "real_steps": n_vec * num_envs,
        "episodes_finished": len(returns),
        "mean_return": float(np.mean(returns)) if returns else None,
        "success_rate": float(np.mean(successes)) if successes else None,
    }
    return episodes, stats
