"""``dreamgym bench vla``: the VLA policy after the dream stage against behaviour cloning alone, in the real simulator.

A ``train-vla`` run leaves ``bc/`` (cloned from its real samples) and ``final/`` (the same after
the dream stage), so the two differ only by what the dream taught. Both play every phrasing
condition on the same held-out rooms with the same sentences, episode for episode:

==================  ====================================================================
condition           instruction text
==================  ====================================================================
train_phrasing      a training phrasing of a trained colour x object combination
paraphrase          a held-out paraphrase (``PARAPHRASE_TEMPLATES``) of a trained combination
unseen_combo        a training phrasing of a ``HELD_OUT_COMBOS`` entry (never trained on)
==================  ====================================================================

beside two references on the first ``reference_episodes`` rooms of ``train_phrasing``: uniform
random actions and the scripted expert (privileged state, the ceiling).

Per task and arm: success with a 95 % Wilson interval. Per task and condition, ``final`` against
``bc``: the paired success difference with a paired bootstrap 95 % interval, the discordant
pairs and McNemar's exact test (a two-sided binomial test on them) -- the functions of
``transfer_stats``. ``target_met`` per task: the gain on ``train_phrasing`` is at least
``target.min_gain`` and its p-value under ``target.alpha``.

Held-out rooms are seeds from ``room_seed_base`` upwards whose set-up gives the needed kind of
instruction; any seed in the run's ``train_rooms.json`` (BC and dreamed starts) is skipped, and
the JSON says how many training rooms it was checked against. Episodes run at most
``max_steps[task]`` steps, ``max_worlds`` worlds at a time in one ``EgoRoomVecEnv``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamgym.benchmarks.runner import start
from dreamgym.benchmarks.transfer_stats import mcnemar_exact, paired_bootstrap
from dreamgym.envs import scene
from dreamgym.envs.core import _rng_for
from dreamgym.envs.tasks import make_task
from dreamgym.policies.evaluate import wilson_interval
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

CONDITIONS = ("train_phrasing", "paraphrase", "unseen_combo")
POLICIES = ("final", "bc")  # both play every condition, paired
REFERENCES = ("random", "expert")


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


def sentence(condition: str, instruction: int, rng: np.random.Generator) -> str:
    """A paraphrase template for ``paraphrase``, a training one otherwise."""
    t, colour, shape = parse_instruction(instruction)
    pool = PARAPHRASE_TEMPLATES[t] if condition == "paraphrase" else TRAIN_TEMPLATES[t]
    return phrase(t, colour, shape, pool[int(rng.integers(len(pool)))])


def episode_plan(task_name: str, n: int, n_ref: int, base: int, exclude: set[int], rng: np.random.Generator) -> list[dict]:
    """Every episode of one task: ``arm`` (final, bc, random, expert), ``condition``, ``room``, ``text``.
    ``final`` and ``bc`` get the same rooms and sentences in each condition (in the same order)."""
    seen, k = held_out_rooms(task_name, 2 * n, False, base, exclude)
    unseen, _ = held_out_rooms(task_name, n, True, base, exclude, start=k)
    rooms = {"train_phrasing": seen[:n], "paraphrase": seen[n:], "unseen_combo": unseen}
    plan = []
    for cond in CONDITIONS:
        texts = [sentence(cond, instruction_of(task_name, s), rng) for s in rooms[cond]]
        plan += [{"arm": arm, "condition": cond, "room": s, "text": t} for arm in POLICIES for s, t in zip(rooms[cond], texts)]
    ref = [e for e in plan if e["arm"] == "final" and e["condition"] == "train_phrasing"][:n_ref]
    plan += [{**e, "arm": arm} for arm in REFERENCES for e in ref]
    assert not {e["room"] for e in plan} & exclude
    return plan


def play(
    plan: Sequence[dict], task_name: str, policies: dict[str, VLAPolicy], max_steps: int, resolution: int
) -> tuple[list[bool], list[int]]:
    """Run ``plan``'s episodes in one ``EgoRoomVecEnv``; each world's success and steps."""
    from dreamgym.envs import EgoRoomVecEnv

    B = len(plan)
    env = EgoRoomVecEnv(num_envs=B, task=task_name, resolution=resolution, obs_keys=OBS_KEYS, return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=[e["room"] for e in plan])
    texts = [e["text"] for e in plan]
    rows = {arm: torch.tensor([i for i, e in enumerate(plan) if e["arm"] == arm], dtype=torch.long) for arm in (*POLICIES, *REFERENCES)}
    done, success = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    steps = torch.zeros(B, dtype=torch.long)
    for _ in range(max_steps):
        a = torch.zeros(B, 6)
        for arm, policy in policies.items():
            r = rows[arm]
            if len(r):
                a[r] = policy.act({k: v[r] for k, v in obs.items()}, texts=[texts[i] for i in r.tolist()]).cpu()
        if len(rows["random"]):
            a[rows["random"]] = torch.rand(len(rows["random"]), 6) * 2 - 1
        if len(rows["expert"]):
            a[rows["expert"]] = env.expert_actions().cpu()[rows["expert"]]
        obs, _, term, trunc, info = env.step_tensors(a)
        ended = (term | trunc).cpu() & ~done
        success |= ended & torch.as_tensor(info["success"]).cpu()
        steps[~done] += 1
        done |= ended
        if bool(done.all()):
            break
    env.close()
    return success.tolist(), steps.tolist()


def arm_success(successes: Sequence[bool], steps: Sequence[int]) -> dict[str, Any]:
    """Success rate with its 95 % Wilson interval, episodes and mean steps."""
    k, n = int(sum(successes)), len(successes)
    return {"success": k / n, "success_ci95": list(wilson_interval(k, n)), "episodes": n, "mean_steps": float(np.mean(steps))}


def paired_gain(final: Sequence[bool], bc: Sequence[bool], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``final`` against ``bc`` on the same episodes: the success gain with a paired bootstrap 95 %
    interval, the discordant pairs and McNemar's exact p-value."""
    boot = paired_bootstrap(np.asarray(final, dtype=float), np.asarray(bc, dtype=float), resamples, seed)
    m = mcnemar_exact(final, bc)
    f, b = np.asarray(final, dtype=bool), np.asarray(bc, dtype=bool)
    return {
        "gain": boot["diff"],
        "gain_ci95": boot["ci95"],
        "final_only": m["a_only"],
        "bc_only": m["b_only"],
        "both": int((f & b).sum()),
        "neither": int((~f & ~b).sum()),
        "sign_test_p": m["p"],
        "episodes": int(f.size),
    }


def target(gain: dict[str, Any], min_gain: float, alpha: float) -> dict[str, Any]:
    """Whether a paired gain meets the target: at least ``min_gain`` and p < ``alpha``."""
    met = gain["gain"] >= float(min_gain) and gain["sign_test_p"] < float(alpha)
    return {"gain": gain["gain"], "sign_test_p": gain["sign_test_p"], "min_gain": float(min_gain), "alpha": float(alpha), "met": bool(met)}


def run_task(cfg, task_name: str, policies: dict[str, VLAPolicy], train_rooms: set[int], rng: np.random.Generator) -> dict:
    """Every arm and condition of one task (module docstring)."""
    n, max_steps = int(cfg.episodes_per_condition), int(cfg.max_steps[task_name])
    plan = episode_plan(task_name, n, int(cfg.reference_episodes), int(cfg.room_seed_base), train_rooms, rng)
    success, steps, W = [], [], int(cfg.max_worlds)
    for i in range(0, len(plan), W):
        s, t = play(plan[i : i + W], task_name, policies, max_steps, policies["final"].config.resolution)
        success += s
        steps += t

    def pick(arm: str, cond: str | None = None) -> list[int]:
        return [i for i, e in enumerate(plan) if e["arm"] == arm and (cond is None or e["condition"] == cond)]

    out: dict[str, Any] = {"max_steps": max_steps}
    for arm in POLICIES:
        out[arm] = {c: arm_success([success[i] for i in pick(arm, c)], [steps[i] for i in pick(arm, c)]) for c in CONDITIONS}
    for arm in REFERENCES:
        out[arm] = arm_success([success[i] for i in pick(arm)], [steps[i] for i in pick(arm)])
    out["final_vs_bc"] = {}
    for j, c in enumerate(CONDITIONS):
        f, b = pick("final", c), pick("bc", c)
        assert [plan[i]["room"] for i in f] == [plan[i]["room"] for i in b] and [plan[i]["text"] for i in f] == [plan[i]["text"] for i in b]
        out["final_vs_bc"][c] = paired_gain(
            [success[i] for i in f], [success[i] for i in b], int(cfg.bootstrap_resamples), int(cfg.seed) + j
        )
    out["target"] = target(out["final_vs_bc"]["train_phrasing"], cfg.target.min_gain, cfg.target.alpha)
    out["instructions"] = {c: sorted({plan[i]["text"] for i in pick("final", c)}) for c in ("paraphrase", "unseen_combo")}
    return out


def vla_summary(tasks: dict[str, dict]) -> dict:
    """Per task: success of each arm and condition, the gains over BC with their p-values, ``target_met``."""
    out: dict[str, Any] = {"success": {}, "gain_over_bc": {}, "gain_ci95": {}, "sign_test_p": {}, "target_met": {}}
    for t, r in tasks.items():
        out["success"][t] = {f"{arm}/{c}": r[arm][c]["success"] for arm in POLICIES for c in CONDITIONS}
        out["success"][t] |= {arm: r[arm]["success"] for arm in REFERENCES}
        out["gain_over_bc"][t] = {c: r["final_vs_bc"][c]["gain"] for c in CONDITIONS}
        out["gain_ci95"][t] = {c: r["final_vs_bc"][c]["gain_ci95"] for c in CONDITIONS}
        out["sign_test_p"][t] = {c: r["final_vs_bc"][c]["sign_test_p"] for c in CONDITIONS}
        out["target_met"][t] = r["target"]["met"]
    out["all_targets_met"] = bool(tasks) and all(out["target_met"].values())
    return out


def run(cfg) -> int:
    """Entry point of ``dreamgym bench vla`` (``configs/bench/vla.yaml``)."""
    torch.set_num_threads(int(cfg.num_threads))
    bench_run = start("vla", cfg)
    ckpt = Path(cfg.checkpoint)
    final_dir = ckpt / "final" if (ckpt / "final").exists() else ckpt / "bc"
    policies = {"final": VLAPolicy.from_pretrained(final_dir), "bc": VLAPolicy.from_pretrained(ckpt / "bc")}
    train_rooms = set(json.loads((ckpt / "train_rooms.json").read_text())) if (ckpt / "train_rooms.json").exists() else set()
    rng = np.random.default_rng(int(cfg.seed))
    tasks = {}
    for task_name in cfg.tasks:
        tasks[task_name] = bench_run.add(task_name, run_task(cfg, task_name, policies, train_rooms, rng))
        g = tasks[task_name]["final_vs_bc"]
        print(
            f"{task_name}: "
            + ", ".join(
                f"{c} final {tasks[task_name]['final'][c]['success']:.2f} bc {tasks[task_name]['bc'][c]['success']:.2f} "
                f"(p {g[c]['sign_test_p']:.3g})"
                for c in CONDITIONS
            ),
            flush=True,
        )
    bench_run.add("parser_accuracy", parser_accuracy(policies["final"]))
    experience = ckpt / "experience.json"
    bench_run.summary = {
        "policy": str(final_dir),
        "fine_tuned": final_dir.name == "final",
        "episodes_per_condition_per_task": int(cfg.episodes_per_condition),
        "reference_episodes_per_task": int(cfg.reference_episodes),
        "train_rooms_checked": len(train_rooms),
        "experience": json.loads(experience.read_text()) if experience.exists() else None,
        "target": {"condition": "train_phrasing", "min_gain": float(cfg.target.min_gain), "alpha": float(cfg.target.alpha)},
    } | vla_summary(tasks)
    bench_run.write(cfg.out)
    print(json.dumps({k: bench_run.summary[k] for k in ("success", "gain_over_bc", "sign_test_p", "target_met")}, indent=1))
    return 0
