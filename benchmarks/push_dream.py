"""Does a world model dream pushes? Scored against the simulator on real push episodes.

The push task's scripted expert walks props onto the mat in rooms of another seed range than
any dataset's. From windows every 8 steps, each world model dreams 16 steps (bodies and props,
one denoising step) under the recorded actions and partner commands, from the real K = 2 steps
before; the dreamed props' horizontal displacement over the window is compared with the
simulator's, beside hold-pose (props never move) in the same run.

    python benchmarks/push_dream.py --checkpoint worldmodel/default --out benchmarks/results/push_dream.json

Figures per model: on the props the simulator moved more than 5 cm, the mean real and dreamed
displacement, the error and its correlation; on resting props (under 5 mm), how often the dream
moved one more than 5 cm; over all props, the mean error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def record(num_envs: int, steps: int, seed: int) -> dict[str, torch.Tensor]:
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=num_envs, task="push", obs_keys=["motion", "partner_motion"], return_tensors=True)
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
        a = env.expert_actions().cpu().clamp(-1, 1)
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
            with torch.no_grad():
                out = model.rollout(
                    ctx,
                    rec["actions"][ok, t0 : t0 + horizon],
                    past_actions=rec["actions"][ok, t0 - 1 : t0],
                    partner_actions=rec["partner_actions"][ok, t0 - 1 : t0 + horizon],
                    modalities=["motion", "partner_motion", "props"],
                )
            dream = out["props"][:, -1] - start
        r, d = real[..., :2].reshape(-1, 2), dream[..., :2].reshape(-1, 2)
        rows.append(torch.stack([r.norm(dim=-1), d.norm(dim=-1), (r - d).norm(dim=-1)], 1))
    R = torch.cat(rows).numpy()
    moved, rest = R[:, 0] > 0.05, R[:, 0] < 0.005
    corr = float(np.corrcoef(R[moved, 0], R[moved, 1])[0, 1]) if model is not None and R[moved, 1].std() > 0 else None
    return {
        "props_windows": int(len(R)),
        "moved_windows": int(moved.sum()),
        "moved_real_mean_m": float(R[moved, 0].mean()),
        "moved_dream_mean_m": float(R[moved, 1].mean()),
        "moved_err_m": float(R[moved, 2].mean()),
        "moved_corr": corr,
        "rest_false_moves": int((R[rest, 1] > 0.05).sum()),
        "rest_windows": int(rest.sum()),
        "all_err_m": float(R[:, 2].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", default=None, help="world-model folder (repeatable; default: the embedded default)")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--seed", type=int, default=9000, help="first room seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/push_dream.json"))
    args = ap.parse_args()
    from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT, WorldModel

    torch.set_num_threads(args.threads)
    t0 = time.time()
    rec = record(args.num_envs, args.steps, args.seed)
    res = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "hold_pose": score(None, rec, args.horizon, args.stride),
    }
    for ck in args.checkpoint or [str(DEFAULT_CHECKPOINT)]:
        res[ck] = score(WorldModel.from_pretrained(ck), rec, args.horizon, args.stride)
    res["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(args.out)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
