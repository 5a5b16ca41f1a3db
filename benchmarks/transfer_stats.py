"""The statistics of ``dreamgym bench transfer``: per-arm intervals, paired comparisons, targets.

Every arm of a cell plays the same held-out rooms in the same order (``evaluate_policies``), so
two arms are compared episode by episode:

- success: McNemar's exact test on the discordant pairs (rooms where exactly one arm succeeded),
  a two-sided binomial test of those pairs against 1/2 (``scipy.stats.binomtest``);
- success and return: a paired percentile bootstrap interval of the difference of the means
  (rooms resampled with replacement, the same rooms for both arms).

Each arm's own success rate has a 95 % Wilson interval and its mean return a 95 % t-interval
(``policies.evaluate.summarize``, the numbers ``eval-policy`` reports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dreamgym.policies.evaluate import summarize


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of paired successes ``a`` and ``b`` (one entry per room).

    Returns ``a_only`` (rooms where only ``a`` succeeded), ``b_only`` and the two-sided ``p``
    (1.0 when no pair is discordant: nothing tells the two apart).
    """
    from scipy.stats import binomtest

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"mcnemar_exact needs two paired lists of the same length, got {x.shape} and {y.shape}")
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5, alternative="two-sided").pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """The mean of ``a - b`` over paired episodes, with a percentile bootstrap interval.

    Each resample draws the episodes (the rooms) with replacement, the same draw for both sides.
    Returns ``diff`` and ``ci95`` ([lo, hi]).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired_bootstrap needs two paired, non-empty lists of the same length, got {x.shape} and {y.shape}")
    if int(resamples) < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    d = x - y
    idx = np.random.default_rng(seed).integers(d.size, size=(int(resamples), d.size))
    means = d[idx].mean(1)
    tail = 100 * (1 - level) / 2
    return {"diff": float(d.mean()), "ci95": [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]}


def arm_figures(scores: Mapping[str, Any]) -> dict[str, Any]:
    """An arm's success rate (Wilson 95 %) and mean return (t 95 %) from its per-episode lists."""
    s = summarize(scores["returns"], scores["successes"], scores["lengths"])
    return {
        "success": s["success_rate"],
        "success_ci95": s["success_ci95"],
        "return": s["mean_return"],
        "return_ci95": s["return_ci95"],
        "episodes": s["episodes"],
    }


def compare(a: Mapping[str, Any], b: Mapping[str, Any], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Arm ``a`` against arm ``b`` on the same rooms: success difference (McNemar, bootstrap) and
    return difference (bootstrap). Refuses arms that did not play the same rooms."""
    if list(a["room_seeds"]) != list(b["room_seeds"]):
        raise ValueError("the two arms did not play the same rooms in the same order; a paired comparison needs them")
    succ_a = np.asarray(a["successes"], dtype=np.float64)
    succ_b = np.asarray(b["successes"], dtype=np.float64)
    success = paired_bootstrap(succ_a, succ_b, resamples, seed)
    ret = paired_bootstrap(a["returns"], b["returns"], resamples, seed + 1)
    return {
        "success_diff": success["diff"],
        "success_diff_ci95": success["ci95"],
        "mcnemar": mcnemar_exact(a["successes"], b["successes"]),
        "return_diff": ret["diff"],
        "return_diff_ci95": ret["ci95"],
        "episodes": int(succ_a.size),
    }


def regime(real_n: Mapping[str, Any], real_10n: Mapping[str, Any], alpha: float, resamples: int, seed: int) -> dict[str, Any]:
    """Whether N is in the regime where a world model should help: PPO with 10 N real steps clearly
    above PPO with N (``ok``: more successes, McNemar p < ``alpha``), and the same on return
    (``return_ok``: the bootstrap interval of the return difference above 0)."""
    c = compare(real_10n, real_n, resamples, seed)
    ok = c["success_diff"] > 0 and c["mcnemar"]["p"] < float(alpha)
    return {"ok": bool(ok), "return_ok": bool(c["return_diff_ci95"][0] > 0), "alpha": float(alpha), "real_10n_vs_real_n": c}


def targets(success: Mapping[str, float], task: str, inputs: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's targets for one cell, on the success rates (point estimates) of the arms present.

    ``dream >= over_real_n * real_n`` in every cell; ``dream >= over_real_10n * real_10n`` in the
    cells ``real_10n_inputs[inputs]`` lists (state: every task; pixels: reach and push). A target
    whose arms were not run is left out; one whose bound is 0 is marked ``trivial``.
    """
    out: dict[str, Any] = {}
    if "dream" not in success:
        return out
    wanted = [("real_n", float(cfg["over_real_n"]), True)]
    wanted.append(("real_10n", float(cfg["over_real_10n"]), task in list((cfg.get("real_10n_inputs") or {}).get(inputs) or [])))
    for arm, factor, applies in wanted:
        if arm not in success or not applies:
            continue
        bound = factor * success[arm]
        out[f"dream_vs_{arm}"] = {
            "target": f"dream_success >= {factor:g} * {arm}_success",
            "bound": bound,
            "dream_success": success["dream"],
            "met": bool(success["dream"] >= bound),
            "trivial": bound == 0,  # the other arm never succeeded: met by any policy, it says nothing
        }
    return out
