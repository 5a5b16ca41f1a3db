"""``dreamgym bench social``: the dream-fine-tuned social avatar against the simulator-only avatar it started from.

Arms, each measured in the run, on the SAME held-out scenes (room seeds ``room_seed_base`` ...
``+ scenes``; a scene's room fixes the partner's script, so every arm answers the same
behaviours at the same steps) in the real simulator (``policies.social_train.run_scenes``):

==================  ==================================================================
arm                 who responds
==================  ==================================================================
dream_tuned         ``checkpoint`` (``train-social init=... world_model=...``)
simulator_only      ``baseline`` (the avatar the dream stage started from)
scripted            the scripted responder (privileged state; the reference)
==================  ==================================================================

Per arm: response correctness (``segment_correct``) overall and per behaviour with 95 % Wilson
intervals; for the avatars MPJPE / PA-MPJPE against the scripted arm's motion and FID /
diversity of response windows in the *baseline's* motion-feature space (one space for both, so
their FIDs compare). Paired, ``dream_tuned`` vs ``simulator_only`` (and each vs ``scripted``):
the correctness gain with a percentile bootstrap 95 % interval over scenes (scenes resampled
with their segments), and McNemar's exact test (a two-sided sign test) on the discordant
segments, overall and per behaviour.

For each judge named in ``dream_judge`` (``simulator``: ``response_checks`` on the dreamed state;
``body``: ``policies.social_dream.body_checks``), both avatars also play dreamed versions of the
same scenes (the dream starts from the scene's first simulator step; ``world_model``), and so
does the scripted responder (on the dreamed state), and the dream's verdict on each segment is set beside the simulator's: how often they agree, and the
dream's correctness. Rooms the
checkpoint's dream stage started in (its ``train_rooms.json``) are refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamgym.benchmarks.runner import start
from dreamgym.benchmarks.transfer_stats import mcnemar_exact
from dreamgym.policies.evaluate import wilson_interval

BEHAVIOURS = ("wave", "approach", "point", "turn_away")
AVATARS = ("dream_tuned", "simulator_only")


def scene_segments(behaviour: np.ndarray, checks: dict[str, np.ndarray]) -> list[list[tuple[str, int]]]:
    """Per scene (column), its response segments in order as (behaviour name, correct 0/1)."""
    from dreamgym.policies.social_scenes import segment_correct

    out = []
    for w in range(behaviour.shape[1]):
        got = segment_correct(behaviour[:, w : w + 1], {k: v[:, w : w + 1] for k, v in checks.items()})
        # segment_correct lists one scene's segments per behaviour in time order; keep (name, ordinal) keys
        out.append([(k, int(c)) for k in BEHAVIOURS for c in got[k]])
    return out


def correctness(segs: list[list[tuple[str, int]]]) -> dict[str, Any]:
    """Overall and per-behaviour correctness with Wilson 95 % intervals."""

    def fig(vals: list[int]) -> dict[str, Any]:
        k, n = int(sum(vals)), len(vals)
        return {"rate": k / n if n else None, "correct": k, "segments": n, "ci95": list(wilson_interval(k, n))}

    flat = [c for s in segs for _, c in s]
    return {"overall": fig(flat)} | {b: fig([c for s in segs for k, c in s if k == b]) for b in BEHAVIOURS}


def paired(a: list[list[tuple[str, int]]], b: list[list[tuple[str, int]]], resamples: int, seed: int) -> dict[str, Any]:
    """Arm ``a`` vs arm ``b`` on the same scenes: gain, bootstrap interval over scenes, McNemar."""
    if len(a) != len(b) or any([k for k, _ in x] != [k for k, _ in y] for x, y in zip(a, b)):
        raise ValueError("the two arms' scenes do not have the same response segments; a paired comparison needs them")
    out: dict[str, Any] = {}
    for name in ("overall", *BEHAVIOURS):
        pick = [[i for i, (k, _) in enumerate(s) if name == "overall" or k == name] for s in a]
        ca = [np.array([a[j][i][1] for i in p], dtype=float) for j, p in enumerate(pick)]
        cb = [np.array([b[j][i][1] for i in p], dtype=float) for j, p in enumerate(pick)]
        diff = np.array([x.sum() - y.sum() for x, y in zip(ca, cb)])
        n = np.array([len(x) for x in ca], dtype=float)
        if n.sum() == 0:
            out[name] = {"segments": 0}
            continue
        idx = np.random.default_rng(seed).integers(len(n), size=(int(resamples), len(n)))
        boot = diff[idx].sum(1) / np.maximum(n[idx].sum(1), 1)
        test = mcnemar_exact(np.concatenate(ca).astype(bool), np.concatenate(cb).astype(bool))
        out[name] = {
            "gain": float(diff.sum() / n.sum()),
            "gain_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "segments": int(n.sum()),
            "discordant": {"a_only": test["a_only"], "b_only": test["b_only"]},
            "mcnemar_p": test["p"],
        }
    return out


def play(seeds: Sequence[int], policy, max_worlds: int) -> dict[str, Any]:
    """``run_scenes`` over ``seeds`` in chunks of ``max_worlds``: behaviour (T, N), checks, joints (T, N, 66), seconds."""
    from dreamgym.envs.motion import JOINT_POS
    from dreamgym.policies.social_scenes import SocialSceneTask
    from dreamgym.policies.social_train import run_scenes

    t0, parts = time.time(), []
    for i in range(0, len(seeds), max_worlds):
        r = run_scenes(SocialSceneTask(), list(seeds[i : i + max_worlds]), policy=policy)
        parts.append({"behaviour": r["behaviour"].numpy(), "checks": r["checks"], "motion": r["motion"]})
    motion = torch.cat([p["motion"] for p in parts], 1)
    return {
        "behaviour": np.concatenate([p["behaviour"] for p in parts], 1),
        "checks": {k: np.concatenate([p["checks"][k] for p in parts], 1) for k in BEHAVIOURS},
        "motion": motion,
        "joints": motion[..., JOINT_POS],
        "seconds": time.time() - t0,
    }


def motion_quality(rec: dict, ref: dict, policy, encoder) -> dict[str, float]:
    """MPJPE / PA-MPJPE (mm) against the scripted recording; FID / diversity of response windows."""
    from dreamgym.policies.social_train import diversity, features, fid, mpjpe, windows

    T, N = rec["behaviour"].shape
    err, pa = mpjpe(rec["joints"].reshape(T * N, 22, 3).numpy(), ref["joints"].reshape(T * N, 22, 3).numpy())
    with torch.no_grad():
        emb = lambda r: encoder(policy.norm(windows(features(r)[0])).flatten(0, 1)).numpy()  # noqa: E731
        e, e_ref = (
            emb({"motion": rec["motion"], "partner_motion": rec["motion"]}),
            emb({"motion": ref["motion"], "partner_motion": ref["motion"]}),
        )
    return {"mpjpe_mm": err, "pa_mpjpe_mm": pa, "fid": fid(e, e_ref), "diversity": diversity(e), "reference_diversity": diversity(e_ref)}


def dream_agreement(
    policy, world_model, seeds: Sequence[int], sim: dict, max_worlds: int, seed: int, checks: str = "simulator"
) -> dict[str, Any]:
    """The avatar in dreams of the same scenes: the dream's correctness and its per-segment agreement with the simulator."""
    from dreamgym.policies.social_dream import dream_judge

    t0, beh, chk = time.time(), [], []
    for i in range(0, len(seeds), max_worlds):
        j = dream_judge(policy, world_model, list(seeds[i : i + max_worlds]), seed=seed, checks=checks)
        beh.append(j["behaviour"])
        chk.append(j["checks"])
    dream = scene_segments(np.concatenate(beh, 1), {k: np.concatenate([c[k] for c in chk], 1) for k in BEHAVIOURS})
    # the dream starts after the scene's first simulator step: its step j is the simulator's j + 1
    real = scene_segments(sim["behaviour"][1:], {k: v[1:] for k, v in sim["checks"].items()})
    same = [(d, r) for d, r in zip(dream, real) if [k for k, _ in d] == [k for k, _ in r]]
    agree = {b: [int(dc == rc) for d, r in same for (k, dc), (_, rc) in zip(d, r) if b in ("overall", k)] for b in ("overall", *BEHAVIOURS)}
    return {
        "dream_correctness": correctness(dream),
        "simulator_correctness_same_window": correctness(real),
        "agreement": {b: (float(np.mean(v)) if v else None) for b, v in agree.items()},
        "scenes_compared": len(same),
        "dream_says_correct_simulator_not": int(sum(dc > rc for d, r in same for (_, dc), (_, rc) in zip(d, r))),
        "simulator_says_correct_dream_not": int(sum(rc > dc for d, r in same for (_, dc), (_, rc) in zip(d, r))),
        "seconds": round(time.time() - t0, 1),
    }


def measure(cfg, policies: dict, encoder, seeds: list[int]) -> tuple[dict, dict]:
    """Every arm on ``seeds``; the arms' figures and the paired comparisons."""
    W = int(cfg.max_worlds)
    recs = {"scripted": play(seeds, None, W)}
    for arm in AVATARS:
        recs[arm] = play(seeds, policies[arm], W)
    segs = {arm: scene_segments(r["behaviour"], r["checks"]) for arm, r in recs.items()}
    arms: dict[str, Any] = {}
    for arm, r in recs.items():
        arms[arm] = {"correctness": correctness(segs[arm]), "scenes": len(seeds), "seconds": round(r["seconds"], 1)}
        if arm in AVATARS:
            arms[arm]["motion"] = motion_quality(r, recs["scripted"], policies["simulator_only"], encoder)
            arms[arm]["per_scene_correct"] = [sum(c for _, c in s) for s in segs[arm]]
    R, s = int(cfg.bootstrap_resamples), int(cfg.seed)
    comp = {
        "dream_tuned_vs_simulator_only": paired(segs["dream_tuned"], segs["simulator_only"], R, s),
        "dream_tuned_vs_scripted": paired(segs["dream_tuned"], segs["scripted"], R, s + 1),
        "simulator_only_vs_scripted": paired(segs["simulator_only"], segs["scripted"], R, s + 2),
    }
    for arm in (*AVATARS, "scripted"):
        for kind in cfg.dream_judge:
            judged = dream_agreement(policies.get(arm), cfg.world_model, seeds, recs[arm], W, s, kind)
            arms[arm].setdefault("dream_judgement", {})[kind] = judged
    return arms, comp


def run(cfg) -> int:
    """Entry point of ``dreamgym bench social`` (``configs/bench/social.yaml``)."""
    from dreamgym.policies.social import SocialAvatarPolicy
    from dreamgym.policies.social_train import load_motion_encoder

    torch.set_num_threads(int(cfg.num_threads))
    bench_run = start("social_dream", cfg)
    ckpt, base = Path(cfg.checkpoint), Path(cfg.baseline)
    policies = {"dream_tuned": SocialAvatarPolicy.from_pretrained(ckpt), "simulator_only": SocialAvatarPolicy.from_pretrained(base)}
    encoder = load_motion_encoder(base)
    seeds = list(range(int(cfg.room_seed_base), int(cfg.room_seed_base) + int(cfg.scenes)))
    train_rooms = set(json.loads((ckpt / "train_rooms.json").read_text())) if (ckpt / "train_rooms.json").exists() else set()
    clash = sorted(train_rooms & set(seeds))
    if clash:
        raise ValueError(f"held-out rooms {clash[:3]} were start rooms of the checkpoint's dream stage; choose another room_seed_base")
    arms, comp = measure(cfg, policies, encoder, seeds)
    for arm, figs in arms.items():
        bench_run.add(arm, figs)
    experience = ckpt / "experience.json"
    exp = json.loads(experience.read_text()) if experience.exists() else None
    g = comp["dream_tuned_vs_simulator_only"]["overall"]
    bench_run.summary = {
        "checkpoint": str(ckpt),
        "baseline": str(base),
        "scenes": len(seeds),
        "rooms": [seeds[0], seeds[-1]],
        "train_rooms_checked": len(train_rooms),
        "segments": arms["scripted"]["correctness"]["overall"]["segments"],
        "correctness": {arm: a["correctness"]["overall"]["rate"] for arm, a in arms.items()},
        "correctness_by_behaviour": {arm: {b: a["correctness"][b]["rate"] for b in BEHAVIOURS} for arm, a in arms.items()},
        "paired": comp,
        "gain": g.get("gain"),
        "gain_ci95": g.get("gain_ci95"),
        "mcnemar_p": g.get("mcnemar_p"),
        "experience": None if exp is None else {k: v for k, v in exp.items() if k != "iterations"},
    }
    bench_run.write(cfg.out)
    print(json.dumps({k: bench_run.summary[k] for k in ("correctness", "gain", "gain_ci95", "mcnemar_p")}, indent=1))
    return 0
