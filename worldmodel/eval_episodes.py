"""eval-wm's inputs: recorded episodes (from a dataset or the simulator) and what the evaluation needs to know of a model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamgym.rollouts.episodes import props_from_qpos

from .baselines import MODALITIES
from .eval_replay import ENV_OBS_KEYS


# ---------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One recorded episode: observations and actions with a leading time axis T.

    ``obs`` holds env-dtype arrays (T, ...) per key, including ``props`` (T, 4, 3) (prop positions,
    world, m). ``actions[t]`` is the action taken after observation t (the last row is unused).
    ``first_step`` is the env step of row 0 since the episode's reset (0: recorded from its reset,
    which the counterfactual replay needs).
    """

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    room_seed: int
    task: str
    qpos: np.ndarray | None = None
    first_step: int = 0
    name: str = ""
    instruction: int | None = None
    rewards: np.ndarray | None = None  # (T,): reward of action t (the last row unused)
    partner_actions: np.ndarray | None = None  # (T, 6): the partner's command after observation t

    @classmethod
    def from_tensors(cls, d: dict[str, Any], room_seed: int = -1, task: str = "", first_step: int = 0, name: str = "") -> Episode:
        """From a dict of (T, ...) tensors or arrays with the observation keys, ``props`` (or
        ``qpos``), ``actions`` and optionally ``instruction`` (T,) -- the in-memory episode format
        of ``worldmodel.data``."""
        arr = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in d.items()}
        obs = {k: arr[k] for k in MODALITIES if k in arr}
        if "props" not in obs and "qpos" in arr:
            obs["props"] = props_from_qpos(arr["qpos"])
        instr = arr.get("instruction")
        instr = int(np.asarray(instr).reshape(-1)[0]) if instr is not None else None
        rew = arr["rewards"].astype(np.float32) if "rewards" in arr else None
        pa = arr["partner_actions"].astype(np.float32) if "partner_actions" in arr else None
        return cls(obs, arr["actions"].astype(np.float32), int(room_seed), task, arr.get("qpos"), first_step, name, instr, rew, pa)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def simulate_episodes(
    task: str,
    room_seeds: Sequence[int],
    steps: int,
    resolution: int = 64,
    policy: str = "expert",
    seed: int = 0,
    obs_keys: Sequence[str] = (*ENV_OBS_KEYS, "instruction"),
    noise: float = 0.3,
) -> list[Episode]:
    """Run ``EgoRoomVecEnv`` in ``room_seeds`` (one world each) for up to ``steps`` steps and record
    each world's first episode (until it ends or ``steps``): a small ground-truth set for tests
    and for checking the evaluation without a dataset. ``policy``: ``expert``, ``noisy`` (expert
    plus Gaussian noise of std ``noise``) or ``random``."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    B = len(room_seeds)
    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, seed=seed, obs_keys=list(obs_keys), return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=list(room_seeds))
    gen = torch.Generator().manual_seed(seed)
    rows = {k: [v.clone()] for k, v in obs.items()}
    qpos = [env.sim_state()["qpos"]]
    acts, pacts, rews, alive_rows = [], [], [], [torch.ones(B, dtype=torch.bool)]
    alive = torch.ones(B, dtype=torch.bool)
    for _ in range(steps):
        if policy == "random":
            a = torch.rand(B, 6, generator=gen) * 2 - 1
        else:
            a = env.expert_actions().cpu()
            if policy == "noisy":
                a = (a + noise * torch.randn(B, 6, generator=gen)).clamp(-1, 1)
            elif policy != "expert":
                raise ValueError(f"policy must be expert, noisy or random, got {policy!r}")
        obs, r, term, trunc, info = env.step_tensors(a)
        pacts.append(env.core.partner_action.cpu().clone())
        done = (term | trunc).cpu()
        o, q = obs, env.sim_state()["qpos"]
        rews.append(r.float().cpu())
        if bool(done.any()):
            o = {k: torch.where(_bcast(done, v), info["final_obs"][k], v) for k, v in obs.items()}
            q = torch.where(done[:, None], info["final_state"]["qpos"], q)
        acts.append(a)
        for k, v in o.items():
            rows[k].append(v.clone())
        qpos.append(q.clone())
        alive_rows.append(alive.clone())
        alive = alive & ~done
        if not bool(alive.any()):
            break
    env.close()
    acts.append(torch.zeros(B, 6))
    pacts.append(torch.zeros(B, 6))
    rews.append(torch.zeros(B))
    valid = torch.stack(alive_rows, 1)  # (B, T): row t belongs to the first episode
    out = []
    for i in range(B):
        T = int(valid[i].sum())
        ep_obs = {k: torch.stack(v, 1)[i, :T].cpu().numpy() for k, v in rows.items() if k in ENV_OBS_KEYS}
        q = torch.stack(qpos, 1)[i, :T].cpu().numpy()
        ep_obs["props"] = props_from_qpos(q)
        a = torch.stack(acts, 1)[i, :T].cpu().numpy().astype(np.float32)
        a[T - 1] = 0.0
        rew = torch.stack(rews, 1)[i, :T].numpy().astype(np.float32)
        rew[T - 1] = 0.0
        instr = int(rows["instruction"][0][i]) if "instruction" in rows else None
        pa = torch.stack(pacts, 1)[i, :T].numpy().astype(np.float32)
        pa[T - 1] = 0.0
        out.append(Episode(ep_obs, a, int(room_seeds[i]), task, q, 0, f"{task}_room{room_seeds[i]}", instr, rew, pa))
    return out


def _bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1))).to(like.device)


def load_episodes(
    path: str | Path | Sequence[str | Path], split: str = "heldout", keys: Sequence[str] | None = None, max_episodes: int | None = None
) -> list[Episode]:
    """Whole episodes of a dataset written by ``dreamgym collect`` (``rollouts``), from the rooms
    of ``split`` (``heldout``: seeds never seen in training), read by ``rollouts.episodes`` (with
    ``props`` and the partner's commands).

    Each episode runs from its reset: rows 0..T hold observations 0..T (T is the final one),
    ``actions`` row t the action after observation t (row T is zero, unused)."""
    from dreamgym.rollouts.episodes import EpisodeReader, index_dataset

    index = index_dataset(path, split=split, max_episodes=max_episodes)
    if keys is None:
        keys = sorted(set.intersection(*(set(m.data["env"]["obs_keys"]) for m in index.manifests)))
    obs_keys = [k for k in keys if k in MODALITIES]
    replay = all(r.task for r in index.episodes) and {"motion", "partner_motion"} <= set(obs_keys)
    reader = EpisodeReader(index.episodes, [*obs_keys, "qpos", "props", *(["partner_actions"] if replay else [])])
    out = []
    for i, e in enumerate(index.episodes):
        rows = reader.episode(i)
        a = reader.attrs(i)
        obs = {k: rows[k] for k in (*obs_keys, "props")}
        task = str(a.get("task", "") or e.task)
        name = f"{a.get('task', 'episode')}_room{e.room_seed}_{Path(e.shard).stem}_{e.group}"
        instruction = e.instruction if e.instruction >= 0 else None
        pacts = rows.get("partner_actions")
        out.append(Episode(obs, rows["actions"], e.room_seed, task, rows["qpos"], 0, name, instruction, rows["rewards"], pacts))
    reader.close()
    if not out:
        where = path if isinstance(path, (str, Path)) else ", ".join(map(str, path))
        raise ValueError(f"dataset {where} has no {split} episodes (room seeds are split by a hash; collect more rooms)")
    return out


# ---------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelSpec:
    """What the evaluation needs to know of a world model."""

    context: int
    resolution: tuple[int, int] | None
    modalities: tuple[str, ...]


def model_spec(model: Any) -> ModelSpec:
    """Context length, the resolution of the frames it returns, and the observation keys it
    predicts, from ``model.config`` (and ``model.output_keys()`` when it has one)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} has no .config; expected a WorldModel")
    get = (lambda n: cfg.get(n)) if isinstance(cfg, dict) else (lambda n: getattr(cfg, n, None))
    K = get("context")
    if K is None:
        raise TypeError(f"{type(model).__name__}.config has no context length ('context')")
    # ``resolution`` may be the internal (denoising) size; ``data_resolution`` is what it returns.
    res = get("data_resolution") if get("data_resolution") is not None else get("resolution")
    if res is not None:
        res = (int(res), int(res)) if isinstance(res, (int, np.integer)) else tuple(int(x) for x in res)
    if callable(getattr(model, "output_keys", None)):
        mods = tuple(model.output_keys())
    elif get("modalities") is not None:
        mods = tuple(get("modalities"))
    else:
        mods = MODALITIES
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        raise TypeError(f"{type(model).__name__} predicts unknown observation keys {unknown}; known: {list(MODALITIES)}")
    return ModelSpec(int(K), res, tuple(m for m in MODALITIES if m in mods))


def check_compatible(spec: ModelSpec, episodes: Sequence[Episode], checkpoint: str, data: str) -> None:
    """Raise ``ValueError`` naming both the checkpoint and the data when they do not fit."""
    if not episodes:
        raise ValueError(f"dataset {data} holds no held-out episodes")
    have = set(episodes[0].obs)
    missing = [m for m in spec.modalities if m not in have]
    if missing:
        raise ValueError(
            f"checkpoint {checkpoint} models {list(spec.modalities)} but dataset {data} lacks {missing} "
            f"(it holds {sorted(have)}); collect the data with those observation keys"
        )
    for m in ("ego_rgb", "ego_depth"):
        if m in spec.modalities and spec.resolution is not None:
            got = tuple(episodes[0].obs[m].shape[-2:])
            if got != spec.resolution:
                raise ValueError(
                    f"checkpoint {checkpoint} expects {m} at {spec.resolution[0]}x{spec.resolution[1]} "
                    f"but dataset {data} holds {got[0]}x{got[1]}; evaluate on data collected at resolution={spec.resolution[0]}"
                )
    longest = max(e.length for e in episodes)
    if longest < spec.context + 1:
        raise ValueError(
            f"checkpoint {checkpoint} needs a context of {spec.context} steps plus one to predict, "
            f"but the longest episode in dataset {data} has {longest} steps"
        )
