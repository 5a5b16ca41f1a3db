"""eval-wm's statistics and sampling plan: bootstrap intervals and paired tests, pooled statistics,
uniform starts, per-task split, target objects and push displacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_eval_wm import synthetic_episodes

from dreamgym.worldmodel import eval_stats as S
from dreamgym.worldmodel import metrics as M
from dreamgym.worldmodel.eval_episodes import Episode
from dreamgym.worldmodel.eval_replay import StartRecord
from dreamgym.worldmodel.eval_summary import push_displacement
from dreamgym.worldmodel.eval_tasks import PARTNER_OBJECT, sample_starts, split_by_task, target_object, valid_rows


# ------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_interval_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 2000):
        x = rng.normal(3.0, 1.0, n)
        r = S.interval(S.mean_of(x), n, 1000, seed=0)
        assert r["value"] == pytest.approx(x.mean()) and r["n"] == n
        assert r["ci"][0] < x.mean() < r["ci"][1]
        widths.append(r["ci"][1] - r["ci"][0])
        # about 3.92 standard errors wide
        assert widths[-1] == pytest.approx(3.92 * x.std() / np.sqrt(n), rel=0.2)
    assert widths[1] < widths[0] / 5
    assert S.interval(S.mean_of(np.ones(0)), 0, 100, 0) == {"value": None, "ci": [None, None], "n": 0}


def test_paired_test_wins_only_on_a_real_difference_in_the_right_direction():
    rng = np.random.default_rng(1)
    base = rng.normal(20, 3, 200)  # per-start values spread widely...
    better = base + 0.2 + rng.normal(0, 0.05, 200)  # ...but the model is better on every start
    up = S.paired_test(S.mean_of(better), S.mean_of(base), 200, higher_is_better=True, resamples=1000, seed=0)
    assert up["won"] and up["diff"] == pytest.approx(0.2, abs=0.02) and up["ci"][0] > 0 and up["p"] < 0.01
    # the same numbers as errors (lower is better): a loss
    assert not S.paired_test(S.mean_of(better), S.mean_of(base), 200, False, 1000, 0)["won"]
    same = S.paired_test(S.mean_of(base), S.mean_of(base), 200, True, 1000, 0)
    assert not same["won"] and same["diff"] == 0 and same["p"] == 1.0
    # an unpaired test could not see a 0.2 difference under a spread of 3; the paired one does
    assert S.interval(S.mean_of(better), 200, 1000, 0)["ci"][0] < S.interval(S.mean_of(base), 200, 1000, 0)["ci"][1]
    assert S.paired_test(S.mean_of(better), S.mean_of(base), 1, True, 100, 0)["won"] is False


def test_pooled_statistics_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (6, 2, 4, 4), generator=g, dtype=torch.uint8) * (torch.rand(6, 2, 4, 4, generator=g) < 0.3)
    real = torch.randint(0, 5, (6, 2, 4, 4), generator=g, dtype=torch.uint8) * (torch.rand(6, 2, 4, 4, generator=g) < 0.3)
    c = {k: v.double().numpy() for k, v in M.occupancy_counts(pred, real).items()}
    full = np.arange(6)[None]
    want = M.iou_from_counts(M.occupancy_counts(pred, real))
    assert S.ratio_of(c["occ_inter"], c["occ_union"])(full)[0] == pytest.approx(want["occ_iou"])
    assert S.miou_of(c["class_inter"][:, 1:], c["class_union"][:, 1:])(full)[0] == pytest.approx(want["occ_miou"])
    tp, fp, fn = np.array([1.0, 1, 0]), np.array([0.0, 1, 0]), np.array([0.0, 0, 1])
    assert S.fscore_of(tp, fp, fn)(full[:, :3])[0] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    x = np.arange(10.0)
    assert S.pearson_of(x, 2 * x + 1)(np.arange(10)[None])[0] == pytest.approx(1.0)
    assert np.isnan(S.pearson_of(x, np.ones(10))(np.arange(10)[None])[0])


# ------------------------------------------------------------------------------------ starts
def test_starts_are_uniform_over_every_valid_row_not_over_episodes():
    eps = synthetic_episodes((10, 30, 60))
    rows = valid_rows(eps, [0, 1, 2], 2)
    assert len(rows) == 8 + 28 + 58  # rows 1 .. T-2
    counts = {r: 0 for r in rows}
    draws = 1500
    for seed in range(draws):
        for s in sample_starts(eps, [0, 1, 2], 2, 64, 20, seed):
            counts[(s.episode, s.t0)] += 1
    freq = np.array(list(counts.values())) / draws
    p = 20 / len(rows)
    assert np.abs(freq - p).max() < 4 * np.sqrt(p * (1 - p) / draws)  # every row equally likely
    share = [sum(v for (e, _), v in counts.items() if e == i) / (20 * draws) for i in range(3)]
    assert share == pytest.approx([8 / 94, 28 / 94, 58 / 94], abs=0.01)  # episodes weigh by length
    # all rows when asked for more; lengths capped at the largest horizon; longest first
    every = sample_starts(eps, [0, 1, 2], 2, 16, 1000, 0)
    assert len(every) == 94 and max(s.length for s in every) == 16
    assert [s.length for s in every] == sorted((s.length for s in every), reverse=True)
    assert sample_starts(eps, [1], 2, 16, 5, 3) == sample_starts(eps, [1], 2, 16, 5, 3)


def test_split_by_task_and_each_tasks_target_object():
    from dreamgym.envs import scene
    from dreamgym.envs.core import _rng_for
    from dreamgym.envs.tasks import INSTRUCTIONS, make_task

    eps = synthetic_episodes((5, 5, 5), tasks=["social", "reach", "social"])
    assert split_by_task(eps) == {"reach": [1], "social": [0, 2]}
    for task in ("reach", "push"):
        for seed in (11, 12, 13):
            t = make_task(task)
            spec = scene.generate_room(seed)
            _, target, instr, *_ = t.setup(spec, _rng_for(seed, t))
            ep = Episode({}, np.zeros((1, 6), np.float32), room_seed=seed, task=task, instruction=instr)
            assert target_object(ep) == target and spec.prop_name(target) in INSTRUCTIONS[instr]
            ep.instruction = (instr + 1) % 16
            with pytest.raises(ValueError, match="is not the one its room draws"):
                target_object(ep)
    assert target_object(Episode({}, np.zeros((1, 6)), room_seed=3, task="avoid")) == PARTNER_OBJECT
    assert target_object(Episode({}, np.zeros((1, 6)), room_seed=-1, task="reach")) is None


def test_push_displacement_is_a_ratio_of_means_with_its_correlation():
    n = 6
    start = np.zeros((n, 4, 3))
    real = np.zeros((n, 4, 3))
    real[:, 0, 0] = np.linspace(0.1, 0.6, n)  # prop 0 pushed 0.1 .. 0.6 m
    real[:, 1, 1] = 0.01  # prop 1 nudged under the threshold
    rec = StartRecord([16], n)
    dream = start.copy()
    dream[:, 0, 0] = 0.5 * real[:, 0, 0]  # the dream pushes half as far, in proportion
    rec.put("props", np.arange(n), 0, dream[:, None][:, 0])
    real[5] = np.nan  # the last start does not last 16 steps
    r = push_displacement(rec, start, real, 0, 0.05, {"resamples": 200, "seed": 0})
    assert r["n_windows"] == 5 and r["n_moved"] == 5
    assert r["ratio"]["value"] == pytest.approx(0.5) and r["corr"]["value"] == pytest.approx(1.0)
    assert r["sim_mean_m"] == pytest.approx(np.mean(np.linspace(0.1, 0.6, n)[:5]))


def test_a_statistic_that_resampling_biases_gets_an_interval_around_its_estimate():
    # the share of distinct starts: 1 on the data, about 0.63 on every bootstrap resample
    distinct = lambda idx: np.array([len(np.unique(r)) / idx.shape[1] for r in idx])  # noqa: E731
    plain = S.interval(distinct, 200, 300, 0)
    assert plain["value"] == 1.0 and plain["ci"][1] < 0.7, "the percentile interval misses the estimate"
    fixed = S.interval(distinct, 200, 300, 0, recentre=True)
    assert fixed["ci"][0] < 1.0 < fixed["ci"][1] and fixed["ci"][1] - fixed["ci"][0] < 0.2
    test = S.paired_test(distinct, lambda idx: 0.5 * distinct(idx), 200, True, 300, 0, recentre=True)
    assert test["won"] and test["ci"][0] < test["diff"] == 0.5 < test["ci"][1]
