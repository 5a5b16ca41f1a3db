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
from pathlib import Path

import numpy as np
import torch

from dreamgym.benchmarks.runner import start
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


def _instruction_texts(cond: list[str], instructions: list[int], rng: np.random.Generator) -> list[str]:
    """One sentence per world: a paraphrase template for ``paraphrase``, a training one otherwise."""
    texts = []
    for c, i in zip(cond, instructions):
        t, colour, shape = parse_instruction(i)
        pool = PARAPHRASE_TEMPLATES[t] if c == "paraphrase" else TRAIN_TEMPLATES[t]
        texts.append(phrase(t, colour, shape, pool[int(rng.integers(len(pool)))]))
    return texts


def run_task(cfg, task_name: str, policy: VLAPolicy, bc: VLAPolicy, train_rooms: set[int], rng: np.random.Generator) -> dict:
    """Every condition of one task side by side in one ``EgoRoomVecEnv``: success, steps, the paired
    (same rooms, same sentences) comparison of the fine-tuned policy with BC only."""
    from dreamgym.envs import EgoRoomVecEnv

    n, max_steps = int(cfg.episodes_per_condition), int(cfg.max_steps[task_name])
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
    texts = _instruction_texts(cond, obs["instruction"].tolist(), rng)
    texts[bo : bo + n] = texts[tp : tp + n]
    cond_t = np.array(cond)
    use_bc, use_rand, use_exp = (torch.as_tensor(cond_t == c) for c in ("bc_only", "random", "expert"))
    done, success = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    steps = torch.zeros(B, dtype=torch.long)
    for _ in range(max_steps):
        a = policy.act(obs, texts=texts)
        a = torch.where(use_bc[:, None], bc.act(obs, texts=texts), a)
        a = torch.where(use_rand[:, None], torch.rand(B, 6) * 2 - 1, a)
        a = torch.where(use_exp[:, None], env.expert_actions(), a)
        obs, _, term, trunc, info = env.step_tensors(a)
        ended = (term | trunc).cpu() & ~done
        success |= ended & torch.as_tensor(info["success"]).cpu()
        steps[~done] += 1
        done |= ended
        if bool(done.all()):
            break
    env.close()
    per: dict = {}
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
    return per


def vla_summary(tasks: dict[str, dict], n: int) -> dict:
    """Success per condition over the tasks, the gain of dream fine-tuning over BC and its sign test."""
    out: dict = {}
    for c in CONDITIONS:
        out[f"{c}_success"] = float(np.mean([tasks[t][c]["success"] for t in tasks]))
        out[f"{c}_episodes"] = int(sum(tasks[t][c]["episodes"] for t in tasks))
    base = max(out["random_success"], 1.0 / (2 * n * len(tasks)))
    out["train_phrasing_vs_random"] = out["train_phrasing_success"] / base
    out["dream_gain_over_bc"] = out["train_phrasing_success"] - out["bc_only_success"]
    # paired episodes where only one of the two policies succeeded, and the two-sided sign-test p-value
    a = sum(tasks[t]["paired"]["final_only"] for t in tasks)
    b = sum(tasks[t]["paired"]["bc_only"] for t in tasks)
    out["dream_gain_discordant_pairs"] = {"final_only": a, "bc_only": b, "sign_test_p": sign_test(a, b)}
    return out


def run(cfg) -> int:
    """Entry point of ``dreamgym bench vla`` (``configs/bench/vla.yaml``)."""
    torch.set_num_threads(int(cfg.num_threads))
    bench_run = start("vla", cfg)
    ckpt = Path(cfg.checkpoint)
    final_dir = ckpt / "final" if (ckpt / "final").exists() else ckpt / "bc"
    policy = VLAPolicy.from_pretrained(final_dir)
    bc = VLAPolicy.from_pretrained(ckpt / "bc")
    train_rooms = set(json.loads((ckpt / "train_rooms.json").read_text())) if (ckpt / "train_rooms.json").exists() else set()
    rng = np.random.default_rng(int(cfg.seed))
    tasks = {}
    for task_name in cfg.tasks:
        tasks[task_name] = bench_run.add(task_name, run_task(cfg, task_name, policy, bc, train_rooms, rng))
        print(f"{task_name}: " + ", ".join(f"{c} {tasks[task_name][c]['success']:.2f}" for c in CONDITIONS), flush=True)
    bench_run.add("parser_accuracy", parser_accuracy(policy))
    bench_run.summary = {
        "policy": str(final_dir),
        "fine_tuned": final_dir.name == "final",
        "episodes_per_condition_per_task": int(cfg.episodes_per_condition),
        "train_rooms_checked": len(train_rooms),
    } | vla_summary(tasks, int(cfg.episodes_per_condition))
    bench_run.write(cfg.out)
    print(json.dumps(bench_run.summary, indent=1))
    return 0
