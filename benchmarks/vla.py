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

``bc_only`` runs on the same rooms with the same sentences as ``train_phrasing``, so
``dream_gain_over_bc`` compares the two policies episode for episode.

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
from dreamgym.policies.vla import (
    HELD_OUT_COMBOS,
    OBS_KEYS,
    PARAPHRASE_TEMPLATES,
    TRAIN_TEMPLATES,
    VLAPolicy,
    is_held_out,
    parse_instruction,
    phrase,
)

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


def sign_test(a: int, b: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven among a + b discordant pairs."""
    from math import comb

    n = a + b
    if n == 0:
        return 1.0
    k = min(a, b)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def parser_accuracy(policy: VLAPolicy) -> dict[str, float]:
    """How often the policy's instruction parser reads (task, colour, shape) right, over every
    combination and template: training phrasings of trained combinations, paraphrases, and the
    held-out combinations (under training and paraphrase templates)."""
    from dreamgym.envs.scene import COLOUR_NAMES

    groups = {"train_phrasing": [], "paraphrase": [], "unseen_combo": []}
    for task in TRAIN_TEMPLATES:
        for colour in COLOUR_NAMES:
            for shape in ("box", "ball"):
                held = (task, colour, shape) in HELD_OUT_COMBOS
                for pool, name in ((TRAIN_TEMPLATES, "train_phrasing"), (PARAPHRASE_TEMPLATES, "paraphrase")):
                    for tpl in pool[task]:
                        groups["unseen_combo" if held else name].append((phrase(task, colour, shape, tpl), task, colour, shape))
    out = {}
    for name, rows in groups.items():
        parsed = policy.parsed([r[0] for r in rows])
        out[name] = sum(p == {"colour": c, "shape": s, "task": t} for p, (_, t, c, s) in zip(parsed, rows)) / len(rows)
    return out


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
    result = {
        "policy": str(final_dir),
        "fine_tuned": final_dir.name == "final",
        "episodes_per_condition_per_task": n,
        "train_rooms_checked": len(train_rooms),
        "tasks": {},
    }
    t0 = time.time()
    for task_name in cfg.tasks:
        max_steps = int(cfg.max_steps[task_name])
        seen, k = held_out_rooms(task_name, 5 * n, False, int(cfg.room_seed_base), train_rooms)
        unseen, _ = held_out_rooms(task_name, n, True, int(cfg.room_seed_base), train_rooms, start=k)
        cond = [c for c in CONDITIONS if c != "unseen_combo" for _ in range(n)]
        seeds = seen[: len(cond)]
        # bc_only runs on the train_phrasing rooms with the same sentences: the dream gain is paired
        tp, bo = cond.index("train_phrasing"), cond.index("bc_only")
        seeds[bo : bo + n] = seeds[tp : tp + n]
        cond += ["unseen_combo"] * n
        seeds += unseen
        assert not set(seeds) & train_rooms
        B = len(seeds)
        env = EgoRoomVecEnv(num_envs=B, task=task_name, resolution=policy.config.resolution, obs_keys=OBS_KEYS, return_tensors=True)
        obs, _ = env.reset_tensors(room_seeds=seeds)
        texts = []
        for c, i in zip(cond, obs["instruction"].tolist()):
            t, colour, shape = parse_instruction(i)
            pool = PARAPHRASE_TEMPLATES[t] if c == "paraphrase" else TRAIN_TEMPLATES[t]
            texts.append(phrase(t, colour, shape, pool[int(rng.integers(len(pool)))]))
        texts[bo : bo + n] = texts[tp : tp + n]
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
            per[c] = {"success": float(success[m].float().mean()), "episodes": int(m.sum()), "mean_steps": float(steps[m].float().mean())}
        per["max_steps"] = max_steps
        fin, base = success[tp : tp + n], success[bo : bo + n]  # the same rooms and sentences
        per["paired"] = {
            "final_only": int((fin & ~base).sum()),
            "bc_only": int((base & ~fin).sum()),
            "both": int((fin & base).sum()),
            "neither": int((~fin & ~base).sum()),
        }
        per["instructions"] = {c: sorted(set(np.array(texts)[cond_t == c].tolist())) for c in ("paraphrase", "unseen_combo")}
        result["tasks"][task_name] = per
        print(f"{task_name}: " + ", ".join(f"{c} {per[c]['success']:.2f}" for c in CONDITIONS), flush=True)
    result["parser_accuracy"] = parser_accuracy(policy)
    for c in CONDITIONS:
        key = "bc_only_success" if c == "bc_only" else f"{c}_success"
        vals = [result["tasks"][t][c]["success"] for t in cfg.tasks]
        result[key] = float(np.mean(vals))
        result[f"{c}_episodes"] = int(sum(result["tasks"][t][c]["episodes"] for t in cfg.tasks))
    base = max(result["random_success"], 1.0 / (2 * n * len(cfg.tasks)))
    result["train_phrasing_vs_random"] = result["train_phrasing_success"] / base
    result["dream_gain_over_bc"] = result["train_phrasing_success"] - result["bc_only_success"]
    # paired episodes where only one of the two policies succeeded, and the two-sided sign-test p-value
    a = sum(result["tasks"][t]["paired"]["final_only"] for t in cfg.tasks)
    b = sum(result["tasks"][t]["paired"]["bc_only"] for t in cfg.tasks)
    result["dream_gain_discordant_pairs"] = {"final_only": a, "bc_only": b, "sign_test_p": sign_test(a, b)}
    result["seconds"] = round(time.time() - t0, 1)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}, indent=1))
    return 0
