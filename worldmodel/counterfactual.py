"""eval-wm's counterfactual controllability: the same context under other actions, in the simulator and in the dream."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dreamgym.envs.motion import ROOT_POS, yaw_of_quat

from .data import props_from_qpos
from .eval_replay import ENV_OBS_KEYS, imagine_rollout
from .eval_stats import finite

if TYPE_CHECKING:
    from .evaluate import Episode


def action_sequences(spec: dict[str, Any], horizon: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """Names and actions (S, horizon, 6) of the counterfactual sequences: a name maps to a constant
    6-float action, or to ``random`` (uniform in [-1, 1] every step, seeded)."""
    gen = torch.Generator().manual_seed(int(seed))
    names, seqs = [], []
    for name, a in spec.items():
        if isinstance(a, str):
            if a != "random":
                raise ValueError(f"counterfactual sequence {name!r} must be 6 numbers or 'random', got {a!r}")
            seqs.append(torch.rand(horizon, 6, generator=gen) * 2 - 1)
        else:
            a = torch.as_tensor(list(a), dtype=torch.float32)
            if a.shape != (6,):
                raise ValueError(f"counterfactual sequence {name!r} must be 6 numbers, got {list(a.tolist())}")
            seqs.append(a.expand(horizon, 6).clone())
        names.append(str(name))
    return names, torch.stack(seqs)


@dataclass
class SimBranches:
    """The simulator's counterfactual branches: N contexts x S action sequences, row = n * S + s."""

    context: dict[str, torch.Tensor]  # (N*S, K, ...) real observations up to t0 (props included), instruction (N*S,)
    context_actions: torch.Tensor  # (N*S, K-1, 6) recorded actions after rows t0-K+1 .. t0-1
    actions: torch.Tensor  # (N*S, Hc, 6) the branch's actions (applied after t0, t0+1, ...)
    root: torch.Tensor  # (N*S, Hc+1, 7) root position and quaternion at t0 .. t0+Hc (world)
    alive: torch.Tensor  # (N*S,) bool: no episode end within the Hc steps
    replay_dev_m: float  # largest root position difference between replay and recording at t0
    episodes: list[int]  # the N episode indices
    partner_actions: torch.Tensor | None = None  # (N*S, K-1+Hc, 6) the partner's commands, aligned with context_actions + actions


def simulate_branches(
    episodes: Sequence[Episode],
    chosen: Sequence[int],
    t0: int,
    context: int,
    sequences: torch.Tensor,
    resolution: tuple[int, int],
    modalities: Sequence[str],
) -> SimBranches:
    """Restart ``EgoRoomVecEnv`` in each chosen episode's room, replay its recorded actions up to
    row ``t0``, then apply each of the S ``sequences`` (S, Hc, 6) for Hc steps (one world each)."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    S, Hc = sequences.shape[:2]
    K = context
    tasks = {episodes[i].task for i in chosen}
    if len(tasks) != 1:
        raise ValueError(f"counterfactual contexts must share one task, got {sorted(tasks)}")
    obs_keys = sorted({m for m in modalities if m in ENV_OBS_KEYS} | {"motion", "instruction"})
    N = len(chosen)
    env = EgoRoomVecEnv(num_envs=N * S, task=tasks.pop(), resolution=resolution, seed=0, obs_keys=obs_keys, return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=[episodes[i].room_seed for i in chosen for _ in range(S)])
    rec = lambda t: torch.as_tensor(np.stack([episodes[i].actions[t] for i in chosen])).repeat_interleave(S, 0)  # noqa: E731
    ctx_rows: list[dict[str, torch.Tensor]] = []

    def grab(o):
        row = {k: o[k].clone() for k in modalities if k in o}
        if "props" in modalities:
            row["props"] = props_from_qpos(env.sim_state()["qpos"])
        return row

    if t0 - K + 1 <= 0:
        ctx_rows.append(grab(obs))
    pacts: list[torch.Tensor] = []
    for t in range(t0):
        obs, _, term, trunc, _ = env.step_tensors(rec(t))
        if t >= t0 - K + 1:
            pacts.append(env.core.partner_action.cpu().clone())
        if bool((term | trunc).any()):
            raise RuntimeError(f"an episode ended while replaying its recorded actions at step {t + 1} (t0={t0})")
        if t + 1 >= t0 - K + 1:
            ctx_rows.append(grab(obs))
    real = torch.as_tensor(np.stack([episodes[i].obs["motion"][t0, ROOT_POS] for i in chosen])).repeat_interleave(S, 0)
    dev = float((obs["motion"][:, ROOT_POS].cpu() - real).norm(dim=-1).max())
    instruction = obs["instruction"].clone()
    root = [obs["motion"][:, :7].clone()]
    alive = torch.ones(N * S, dtype=torch.bool)
    acts = sequences.repeat(N, 1, 1)
    for h in range(Hc):
        obs, _, term, trunc, info = env.step_tensors(acts[:, h])
        pacts.append(env.core.partner_action.cpu().clone())
        done = (term | trunc).cpu()
        m = obs["motion"]
        if bool(done.any()):
            m = torch.where(done[:, None], info["final_obs"]["motion"], m)
        root.append(m[:, :7].clone())
        alive = alive & ~(done & torch.as_tensor(h < Hc - 1))  # ending on the last step is fine
    env.close()
    ctxa = np.stack([episodes[i].actions[t0 - K + 1 : t0] for i in chosen]) if K > 1 else np.zeros((N, 0, 6), np.float32)
    context_obs = {k: torch.stack([r[k] for r in ctx_rows], 1) for k in ctx_rows[0]}
    context_obs["instruction"] = instruction
    return SimBranches(
        context=context_obs,
        context_actions=torch.as_tensor(ctxa).repeat_interleave(S, 0),
        actions=acts,
        root=torch.stack(root, 1).cpu(),
        alive=alive,
        replay_dev_m=dev,
        episodes=list(chosen),
        partner_actions=torch.stack(pacts, 1),
    )


def _displacement(root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root displacement (B, 2) in the heading frame at the first step, and heading change (B,),
    from a root trajectory (B, T, 7) (position, quaternion): last step vs first."""
    p0, p1 = root[:, 0, :3], root[:, -1, :3]
    y0, y1 = yaw_of_quat(root[:, 0, 3:7]), yaw_of_quat(root[:, -1, 3:7])
    d = p1[:, :2] - p0[:, :2]
    c, s = torch.cos(y0), torch.sin(y0)
    local = torch.stack((c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]), -1)
    dyaw = torch.remainder(y1 - y0 + math.pi, 2 * math.pi) - math.pi
    return local, dyaw


def _corr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Pearson correlation of two flat samples; None when either has no spread (undefined)."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    na, nb = a.norm(), b.norm()
    if a.numel() < 2 or na < 1e-9 or nb < 1e-9:
        return None
    return finite(float((a * b).sum() / (na * nb)))


def counterfactual_scores(
    sim: SimBranches, model: Any, names: Sequence[str], modalities: Sequence[str], num_steps: int | None, seed: int, device
) -> dict[str, Any]:
    """Dream the same branches with ``model`` (``num_steps`` None: its own sampler) and compare
    displacements with the simulator's."""
    S = len(names)
    N = len(sim.episodes)
    Hc = sim.actions.shape[1]
    ctx = {k: v.to(device) for k, v in sim.context.items() if k in modalities or k == "instruction"}
    acts = torch.cat((sim.context_actions, sim.actions), 1).to(device)
    if sim.partner_actions is not None:
        ctx["partner_actions"] = sim.partner_actions.to(device)
    roots = [ctx["motion"][:, -1, :7].cpu()]
    gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        imagine_rollout(model, ctx, acts, Hc, modalities, num_steps, gen, lambda h, p: roots.append(p["motion"][:, :7].float().cpu()))
    dream_root = torch.stack(roots, 1)
    ds, ys = _displacement(sim.root)
    dd, yd = _displacement(dream_root)
    alive = sim.alive
    grid = lambda x: x.view(N, S, *x.shape[1:])  # noqa: E731
    ok = grid(alive)
    per_seq = {}
    for s, name in enumerate(names):
        m = ok[:, s]
        n = int(m.sum())
        if n == 0:
            per_seq[name] = {"n": 0}
            continue
        sd, dd_, sy, dy = grid(ds)[m, s], grid(dd)[m, s], grid(ys)[m, s], grid(yd)[m, s]
        per_seq[name] = {
            "n": n,
            "sim_disp_m": [float(x) for x in sd.mean(0)],
            "dream_disp_m": [float(x) for x in dd_.mean(0)],
            "disp_err_m": float((dd_ - sd).norm(dim=-1).mean()),
            "sim_dyaw_rad": float(sy.mean()),
            "dream_dyaw_rad": float(dy.mean()),
            "dyaw_err_rad": float((dy - sy).abs().mean()),
        }
    # Within a context: deviations from that context's mean over its (alive) sequences.
    full = ok.all(1)  # contexts where every branch lasted

    def centred(x: torch.Tensor) -> torch.Tensor:
        g = grid(x)[full]
        return g - g.mean(1, keepdim=True)

    return {
        "per_sequence": per_seq,
        "disp_err_m": float((dd - ds).norm(dim=-1)[alive].mean()) if bool(alive.any()) else None,
        "dyaw_err_rad": float((yd - ys).abs()[alive].mean()) if bool(alive.any()) else None,
        "disp_corr": _corr(ds[alive], dd[alive]),
        "dyaw_corr": _corr(ys[alive], yd[alive]),
        "disp_corr_within_context": _corr(centred(ds), centred(dd)) if bool(full.any()) else None,
        "dyaw_corr_within_context": _corr(centred(ys), centred(yd)) if bool(full.any()) else None,
        "sim_spread_m": float(centred(ds).norm(dim=-1).mean()) if bool(full.any()) else None,
        "dream_spread_m": float(centred(dd).norm(dim=-1).mean()) if bool(full.any()) else None,
        "_points": {
            "sim_disp": ds.tolist(),
            "dream_disp": dd.tolist(),
            "sim_dyaw": ys.tolist(),
            "dream_dyaw": yd.tolist(),
            "alive": alive.tolist(),
        },
    }


def choose_counterfactual_episodes(episodes: Sequence[Episode], t0: int, num: int) -> list[int]:
    """Episodes recorded from their reset that last beyond ``t0``, all of the most common task."""
    ok = [i for i, e in enumerate(episodes) if e.first_step == 0 and e.length > t0 + 1 and e.room_seed >= 0]
    if not ok:
        return []
    tasks = [episodes[i].task for i in ok]
    task = max(set(tasks), key=tasks.count)
    return [i for i in ok if episodes[i].task == task][:num]


def run_counterfactual(
    counterfactual: dict | None,
    episodes: Sequence[Episode],
    model: Any,
    mse_model: Any | None,
    spec: Any,
    mods: Sequence[str],
    num_steps: int | None,
    seed: int,
    device: str | torch.device,
    notes: list[str],
) -> dict[str, Any]:
    """eval-wm's counterfactual stage (model, hold-pose and the MSE twin); appends why it was skipped to ``notes``."""
    from .baselines import HoldLastBaseline

    K = spec.context
    cf_out: dict[str, Any] = {}
    if counterfactual and "motion" in mods:
        cf = dict(counterfactual)
        Hc = int(cf.get("horizon", 16))
        t0 = int(cf["start"]) if cf.get("start") is not None else K
        t0 = max(t0, K - 1)
        chosen = choose_counterfactual_episodes(episodes, t0, int(cf.get("num_contexts", 8)))
        if chosen:
            names, seqs = action_sequences(dict(cf["sequences"]), Hc, seed)
            print(f"counterfactual: {len(chosen)} contexts x {len(names)} action sequences, {Hc} steps from t0={t0}", flush=True)
            sim = simulate_branches(
                episodes, chosen, t0, K, seqs, spec.resolution or episodes[0].obs.get("ego_rgb", np.zeros((1, 3, 64, 64))).shape[-2:], mods
            )
            cf_out = {
                "horizon": Hc,
                "start": t0,
                "num_contexts": len(chosen),
                "sequences": names,
                "replay_max_root_dev_m": sim.replay_dev_m,
            }
            cf_out["model"] = counterfactual_scores(sim, model, names, mods, num_steps, seed, device)
            cf_out["baselines"] = {"hold_pose": counterfactual_scores(sim, HoldLastBaseline(), names, mods, num_steps, seed, device)}
            if mse_model is not None:
                cf_out["baselines"]["deterministic_mse"] = counterfactual_scores(sim, mse_model, names, mods, num_steps, seed, device)
        else:
            notes.append(f"counterfactual skipped: no episode recorded from its reset lasts beyond step {t0 + 1}")
    elif counterfactual:
        notes.append("counterfactual skipped: the model does not predict motion")

    return cf_out
