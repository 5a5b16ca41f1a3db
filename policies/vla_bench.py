"""``dreamgym bench vla``: generalisation of the VLA policy, measured in the real simulator.

All conditions of a task run side by side in one ``EgoRoomVecEnv`` (one world per episode, each on
its own held-out room), so they see the same physics, step count and machine load:

==================  ====================================================================
condition           what acts, with which instruction text
==================  ====================================================================
train_phrasing      the fine-tuned policy, a training phrasing of a trained combination
paraphrase          the fine-tuned policy, a held-out paraphrase (``PARAPHRASE_TEMPLATES``)
unseen_combo        the fine-tuned policy, a training phrasing of a ``HELD_OUT_COMBOS`` entry
bc_only             the behaviour-cloned policy before dream fine-tuning, training phrasings
random              uniform random actions
expert              the scripted expert (privileged state): the ceiling
==================  ====================================================================

Held-out rooms are seeds from ``room_seed_base`` upwards whose set-up gives the needed kind of
instruction; any seed in the checkpoint's ``train_rooms.json`` is skipped, and the JSON says how
many training rooms it was checked against. Success is the task's own ``success`` within
``max_steps`` steps (per task, reported).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from dreamgym.envs import scene
from dreamgym.envs.core import _rng_for
from dreamgym.envs.tasks import make_task

from .vla import OBS_KEYS, PARAPHRASE_TEMPLATES, TRAIN_TEMPLATES, VLAPolicy, is_held_out, parse_instruction, phrase

CONDITIONS = ("train_phrasing", "paraphrase", "unseen_combo", "bc_only", "random", "expert")


def instruction_of(task_name: str, seed: int) -> int:
    task = make_task(task_name)
    return int(task.setup(scene.generate_room(seed), _rng_for(seed, task))[2])


def held_out_rooms(task_name: str, n: int, unseen: bool, base: int, exclude: set[int], start: int = 0) -> tuple[list[int], int]:
    """``n`` room seeds from ``base + start`` whose instruction is (``unseen``) or is not a held-out combination."""
    seeds, k = [], start
    while len(seeds) < n:
        s = base + k
        k += 1
        if s in exclude:
            continue
        if is_held_out(instruction_of(task_name, s)) == unseen:
            seeds.append(s)
        if k - start > 200 * n:
            raise RuntimeError(f"found only {len(seeds)} of {n} {task_name} rooms with unseen={unseen}")
    return seeds, k


def run(cfg) -> int:
    from dreamgym.envs import EgoRoomVecEnv

    torch.set_num_threads(int(cfg.num_threads))
    ckpt = Path(cfg.checkpoint)
    final_dir = ckpt / "final" if (ckpt / "final").exists() else ckpt / "bc"
    policy = VLAPolicy.from_pretrained(final_dir)
    bc = VLAPolicy.from_pretrained(ckpt / "bc")
    train_rooms = set(json.loads((ckpt / "train_rooms.json").read_text())) if (ckpt / "train_rooms.json").exists() else set()
    rng = np.random.default_rng(int(cfg.seed))
    n = int(cfg.episodes_per_condition)
    result = {"policy": str(final_dir), "fine_tuned": final_dir.name == "final", "episodes_per_condition_per_task": n,
              "train_rooms_checked": len(train_rooms), "tasks": {}}
    t0 = time.time()
    for task_name in cfg.tasks:
        max_steps = int(cfg.max_steps[task_name])
        seen, k = held_out_rooms(task_name, 5 * n, False, int(cfg.room_seed_base), train_rooms)
        unseen, _ = held_out_rooms(task_name, n, True, int(cfg.room_seed_base), train_rooms, start=k)
        cond = [c for c in CONDITIONS if c != "unseen_combo" for _ in range(n)]
        seeds = seen[: len(cond)]
        cond += ["unseen_combo"] * n
        seeds += unseen
        assert not set(seeds) & train_rooms
        B = len(seeds)
        env = EgoRoomVecEnv(num_envs=B, task=task_name, resolution=policy.config.resolution, obs_keys=OBS_KEYS,
                            return_tensors=True)
        obs, _ = env.reset_tensors(room_seeds=seeds)
        texts = []
        for c, i in zip(cond, obs["instruction"].tolist()):
            t, colour, shape = parse_instruction(i)
            pool = PARAPHRASE_TEMPLATES[t] if c == "paraphrase" else TRAIN_TEMPLATES[t]
            texts.append(phrase(t, colour, shape, pool[int(rng.integers(len(pool)))]))
        cond_t = np.array(cond)
        use_bc = torch.as_tensor(cond_t == "bc_only")
        use_rand = torch.as_tensor(cond_t == "random")
        use_exp = torch.as_tensor(cond_t == "expert")
        done = torch.zeros(B, dtype=torch.bool)
        success = torch.zeros(B, dtype=torch.bool)
        steps = torch.zeros(B, dtype=torch.long)
        for _ in range(max_steps):
            a = policy.act(obs, texts=texts)
            a = torch.where(use_bc[:, None], bc.act(obs, texts=texts), a)
            a = torch.where(use_rand[:, None], torch.rand(B, 6) * 2 - 1, a)
            a = torch.where(use_exp[:, None], env.expert_actions(), a)
            obs, _, term, trunc, info = env.step_tensors(a)
            ended = (term | trunc).cpu() & ~done
            succ_now = torch.as_tensor(info["success"]).cpu()
            success |= ended & succ_now
            steps[~done] += 1
            done |= ended
            if bool(done.all()):
                break
        env.close()
        per = {}
        for c in CONDITIONS:
            m = torch.as_tensor(cond_t == c)
            per[c] = {"success": float(success[m].float().mean()), "episodes": int(m.sum()),
                      "mean_steps": float(steps[m].float().mean())}
        per["max_steps"] = max_steps
        per["instructions"] = {c: sorted(set(np.array(texts)[cond_t == c].tolist())) for c in ("paraphrase", "unseen_combo")}
        result["tasks"][task_name] = per
        print(f"{task_name}: " + ", ".join(f"{c} {per[c]['success']:.2f}" for c in CONDITIONS), flush=True)
    for c in CONDITIONS:
        key = "bc_only_success" if c == "bc_only" else f"{c}_success"
        vals = [result["tasks"][t][c]["success"] for t in cfg.tasks]
        result[key] = float(np.mean(vals))
        result[f"{c}_episodes"] = int(sum(result["tasks"][t][c]["episodes"] for t in cfg.tasks))
    base = max(result["random_success"], 1.0 / (2 * n * len(cfg.tasks)))
    result["train_phrasing_vs_random"] = result["train_phrasing_success"] / base
    result["dream_gain_over_bc"] = result["train_phrasing_success"] - result["bc_only_success"]
    result["seconds"] = round(time.time() - t0, 1)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}, indent=1))
    return 0
