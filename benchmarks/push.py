"""``dreamgym bench push``: does a world model dream pushes? Scored against the simulator on real
push episodes.

The push task's scripted expert (or ``policy``: any policy, e.g. a ``train-policy`` run, whose
pushes may look nothing like the expert's) walks props onto the mat in rooms of another seed
range than any dataset's. From windows every 8 steps, each world model dreams 16 steps (bodies and props,
one denoising step) under the recorded actions and partner commands, from the real K = 2 steps
before; the dreamed props' horizontal displacement over the window is compared with the
simulator's, beside hold-pose (props never move) in the same run.

    dreamgym bench push [checkpoints=[DIR,...]] [policy=expert|DIR] [out=FILE.json]

Arms: ``hold_pose`` and one per world model (``default``: the shipped one). Figures per arm: on
the props the simulator moved more than 5 cm, the mean real and dreamed displacement, the error
and its correlation; on resting props (under 5 mm), how often the dream moved one more than 5 cm;
over all props, the mean error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from dreamgym.benchmarks.runner import hash_path, start


def record(num_envs: int, steps: int, seed: int, policy: str = "expert") -> dict[str, torch.Tensor]:
    """``steps`` recorded steps of ``num_envs`` push episodes acted by ``policy`` (``expert``, or
    any policy spec ``load_policy`` reads: a ``train-policy`` run, ``random``; deterministic)."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv
    from dreamgym.policies.base import load_policy, required_obs_keys

    pol = None if policy == "expert" else load_policy(policy, task="push", seed=seed)
    keys = ["motion", "partner_motion"] + [k for k in (required_obs_keys([pol]) if pol else ()) if k not in ("motion", "partner_motion")]
    env = EgoRoomVecEnv(num_envs=num_envs, task="push", obs_keys=keys, return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=list(range(seed, seed + num_envs)))
    idx = env.core.idx.prop_qpos

    def props() -> torch.Tensor:
        q = env.sim_state()["qpos"]
        return torch.stack([q[:, a : a + 3] for a in idx], 1).float()

    rec = {"motion": [obs["motion"]], "partner_motion": [obs["partner_motion"]], "props": [props()]}
    acts, pacts = [], []
    alive = torch.ones(num_envs, dtype=torch.bool)
    alive_t = [alive.clone()]
    for _ in range(steps):
        a = (env.expert_actions() if pol is None else pol.act({k: obs[k] for k in pol.obs_keys}, deterministic=True)).cpu().clamp(-1, 1)
        obs, _, term, trunc, _ = env.step_tensors(a)
        alive &= ~(term | trunc).cpu()
        acts.append(a)
        pacts.append(env.core.partner_action.cpu().clone())
        for k in ("motion", "partner_motion"):
            rec[k].append(obs[k])
        rec["props"].append(props())
        alive_t.append(alive.clone())
    out = {k: torch.stack(v, 1).float() for k, v in rec.items()}
    out["actions"], out["partner_actions"], out["alive"] = torch.stack(acts, 1), torch.stack(pacts, 1), torch.stack(alive_t, 1)
    return out


def score(model, rec: dict[str, torch.Tensor], horizon: int, stride: int) -> dict[str, float]:
    T = rec["actions"].shape[1]
    rows = []
    for t0 in range(1, T - horizon, stride):
        ok = rec["alive"][:, t0 + horizon]
        if not bool(ok.any()):
            continue
        start = rec["props"][ok, t0]
        real = rec["props"][ok, t0 + horizon] - start
        if model is None:  # hold-pose
            dream = torch.zeros_like(real)
        else:
            ctx = {k: rec[k][ok, t0 - 1 : t0 + 1] for k in ("motion", "partner_motion", "props")}
            # the partner's recorded commands, for a model conditioned on them
            partner = rec["partner_actions"][ok, t0 - 1 : t0 + horizon] if getattr(model.config, "partner_actions", False) else None
            with torch.no_grad():
                out = model.rollout(
                    ctx,
                    rec["actions"][ok, t0 : t0 + horizon],
                    past_actions=rec["actions"][ok, t0 - 1 : t0],
                    partner_actions=partner,
                    modalities=["motion", "partner_motion", "props"],
                )
            dream = out["props"][:, -1] - start
        r, d = real[..., :2].reshape(-1, 2), dream[..., :2].reshape(-1, 2)
        rows.append(torch.stack([r.norm(dim=-1), d.norm(dim=-1), (r - d).norm(dim=-1)], 1))
    if not rows:
        raise SystemExit(f"dreamgym bench push: no window of {horizon} steps fits in {T} recorded steps; raise steps")
    R = torch.cat(rows).numpy()
    moved, rest = R[:, 0] > 0.05, R[:, 0] < 0.005
    mean = lambda x: float(x.mean()) if len(x) else None  # noqa: E731 -- None when no prop moved
    corr = float(np.corrcoef(R[moved, 0], R[moved, 1])[0, 1]) if model is not None and moved.sum() > 1 and R[moved, 1].std() > 0 else None
    return {
        "props_windows": int(len(R)),
        "moved_windows": int(moved.sum()),
        "moved_real_mean_m": mean(R[moved, 0]),
        "moved_dream_mean_m": mean(R[moved, 1]),
        "moved_err_m": mean(R[moved, 2]),
        "moved_corr": corr,
        "rest_false_moves": int((R[rest, 1] > 0.05).sum()),
        "rest_windows": int(rest.sum()),
        "all_err_m": float(R[:, 2].mean()),
    }


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench push`` (``configs/bench/push.yaml``)."""
    from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT, WorldModel

    torch.set_num_threads(int(cfg.threads))
    bench_run = start("push", cfg)
    horizon, stride = int(cfg.horizon), int(cfg.stride)
    rec = record(int(cfg.num_envs), int(cfg.steps), int(cfg.seed), str(cfg.policy))
    hold = bench_run.add("hold_pose", score(None, rec, horizon, stride))
    models = {}
    for ck in list(cfg.checkpoints or [None]):
        path = Path(ck) if ck is not None else DEFAULT_CHECKPOINT
        name = "default" if ck is None else str(ck)
        wm = WorldModel.from_pretrained(path)  # dreams with its own sampler, recorded beside its scores
        scores = bench_run.add(name, score(wm, rec, horizon, stride) | {"checkpoint": str(path), "sampler": wm.sampler.to_dict()})
        models[name] = {
            "sha256": hash_path(path),
            "moved_dream_over_real": scores["moved_dream_mean_m"] / scores["moved_real_mean_m"] if scores["moved_windows"] else None,
            "all_err_over_hold_pose": scores["all_err_m"] / hold["all_err_m"] if hold["all_err_m"] else None,
        }
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(
            f"{name}: pushed props dreamed {f(scores['moved_dream_mean_m'])} m of {f(scores['moved_real_mean_m'])} m "
            f"(corr {f(scores['moved_corr'])}), {scores['rest_false_moves']} of {scores['rest_windows']} resting props moved",
            flush=True,
        )
    bench_run.summary = {"models": models}
    bench_run.write(cfg.out)
    return 0
