"""``dreamgym bench verdict``: the rank statistics, the start rooms a dream is given, and one tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamgym.benchmarks.verdict import bootstrap_spearman, pearson, spearman, wave_plan

LAYOUT = {"benchmark", "created", "code", "machine", "config", "arms", "summary", "keys", "reused", "wall_s"}


# ------------------------------------------------------------------------------------ rank statistics
def test_spearman_is_one_for_the_same_order_and_minus_one_for_the_reverse():
    sim = [0.0, 0.1, 0.5, 0.9, 1.0]
    assert spearman(sim, [0.2, 0.3, 0.4, 0.8, 0.81]) == pytest.approx(1.0)
    assert spearman(sim, [1.0, 0.7, 0.6, 0.1, 0.0]) == pytest.approx(-1.0)


def test_spearman_gives_tied_scores_their_average_rank():
    from scipy.stats import spearmanr

    sim, dream = [1.0, 1.0, 0.75, 0.0, 0.0], [1.0, 0.9, 0.8, 0.1, 0.2]
    # ranks (4.5, 4.5, 3, 1.5, 1.5) against (5, 4, 3, 1, 2)
    assert spearman(sim, dream) == pytest.approx(spearmanr(sim, dream).statistic)
    assert spearman(sim, dream) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman(sim, sim) == pytest.approx(1.0)


def test_correlations_of_a_constant_side_are_undefined_and_lengths_must_match():
    assert spearman([0.0, 0.0, 0.0], [0.1, 0.5, 0.9]) is None
    assert pearson([0.3, 0.3, 0.3], [0.1, 0.5, 0.9]) is None
    assert pearson([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        spearman([0.0, 1.0], [0.0, 1.0, 2.0])


def _episodes(rates: list[float], n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random(n) < p).astype(float) for p in rates]


def test_the_bootstrap_interval_of_well_separated_policies_is_the_point():
    sim = [np.full(32, v) for v in (0.0, 1.0, 2.0, 3.0)]  # no spread within a policy: every resample is the same
    same = bootstrap_spearman(sim, [a + 0.5 for a in sim], resamples=200)
    assert same["ci95"] == [1.0, 1.0] and same["undefined"] == 0 and same["resamples"] == 200
    reversed_ = bootstrap_spearman(sim, [3.0 - a for a in sim], resamples=200)
    assert reversed_["ci95"] == [-1.0, -1.0]


def test_the_bootstrap_interval_widens_with_overlapping_policies_and_holds_the_estimate():
    rates = [0.3, 0.35, 0.4, 0.45]
    sim, dream = _episodes(rates, 16, seed=1), _episodes(rates, 16, seed=2)
    point = spearman([a.mean() for a in sim], [a.mean() for a in dream])
    lo, hi = bootstrap_spearman(sim, dream, resamples=500, seed=0)["ci95"]
    assert -1.0 <= lo < hi <= 1.0 and hi - lo > 0.5
    assert lo <= point <= hi
    # far apart with many episodes: a tight interval near 1
    lo2, hi2 = bootstrap_spearman(_episodes([0.05, 0.3, 0.6, 0.95], 200, 3), _episodes([0.05, 0.3, 0.6, 0.95], 200, 4), 500)["ci95"]
    assert lo2 >= 0.8 and hi2 == pytest.approx(1.0)


def test_resamples_where_a_side_has_no_order_are_counted_not_used():
    zeros = [np.zeros(8) for _ in range(3)]
    r = bootstrap_spearman(zeros, _episodes([0.2, 0.5, 0.8], 8), resamples=100)
    assert r["ci95"] is None and r["undefined"] == 100
    with pytest.raises(ValueError, match="at least 1"):
        bootstrap_spearman(zeros, zeros, resamples=0)


def test_waves_are_planned_as_the_simulator_evaluation_plans_them():
    assert wave_plan(64, 7, 448) == (64, 1)
    assert wave_plan(5, 3, 6) == (2, 3)  # 2 worlds per policy per wave: 3 waves, 6 episodes each (rounded up)
    assert wave_plan(5, 2, 8) == (3, 2)  # 4 per wave would leave the second wave short: 3 and 3


# ------------------------------------------------------------------------------------ start rooms
def _spec(num_envs: int):
    from dreamgym.envs.occupancy import GridSpec
    from dreamgym.envs.tasks import make_task
    from dreamgym.worldmodel.starts import StartSpec

    return StartSpec(make_task("reach"), 2, ("motion", "partner_motion", "props"), 32, GridSpec((32, 32, 8), 0.25), num_envs)


def test_simulator_starts_hand_out_the_given_rooms_in_order_cyclically_and_restart_on_reseed():
    from dreamgym.worldmodel.starts import SimulatorStarts

    rooms = [2**31 + 7, 2**31 + 3, 2**31 + 11]
    src = SimulatorStarts("expert", rooms=rooms, seed=0)
    src.bind(_spec(2))
    assert src.draw(2).room_seed.tolist() == rooms[:2]
    assert src.draw(2).room_seed.tolist() == [rooms[2], rooms[0]]
    src.reseed(0)  # the first batch again, and the next one goes on from there
    assert src.draw(2).room_seed.tolist() == rooms[:2]
    assert src.draw(2).room_seed.tolist() == [rooms[2], rooms[0]]
    src.reseed(5)
    assert src.draw(1).room_seed.tolist() == [rooms[0]]
    d = src.describe()
    assert d["rooms"] == {"count": 3, "first": rooms[0], "last": rooms[-1]} and d["real_steps"] > 0
    src.close()


def test_simulator_starts_without_rooms_draw_training_rooms():
    from dreamgym.worldmodel.starts import SimulatorStarts

    src = SimulatorStarts("expert", seed=0)
    src.bind(_spec(3))
    seeds = src.draw(3).room_seed.tolist()
    assert all(0 <= s < 2**31 - 1 for s in seeds) and len(set(seeds)) == 3 and src.describe()["rooms"] is None
    src.close()


def test_bad_rooms_are_refused_in_one_line():
    from dreamgym.worldmodel.starts import SimulatorStarts

    with pytest.raises(ValueError, match=r"rooms=\[\] gives no room"):
        SimulatorStarts(rooms=[])
    with pytest.raises(ValueError, match=r"whole-number room seeds >= 0, got \[-1\]"):
        SimulatorStarts(rooms=[3, -1])
    with pytest.raises(ValueError, match="whole-number room seeds"):
        SimulatorStarts(rooms=[1.5])


@pytest.fixture(scope="module")
def tiny_state_model(tmp_path_factory):
    """A small randomly initialised state-only world model (32 px data, K = 2)."""
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(
        resolution=16,
        data_resolution=32,
        context=2,
        modalities=["motion", "partner_motion", "props"],
        ego_warp=False,
        ego_render=False,
        occupancy_warp=False,
        state_prior=0,
        props_dynamics=0,
        partner_actions=False,
        dim=32,
        depth=1,
        heads=2,
        reward_hidden=32,
    )
    path = tmp_path_factory.mktemp("wm") / "tiny"
    WorldModel(cfg).save_pretrained(path)
    return path


def test_a_dream_given_rooms_starts_its_worlds_in_them(tiny_state_model):
    from dreamgym.worldmodel.dream_env import DreamVecEnv
    from dreamgym.worldmodel.starts import SimulatorStarts

    rooms = [2**31 + 1, 2**31 + 2]
    env = DreamVecEnv(
        tiny_state_model, num_envs=4, obs_keys=["task_obs"], starts=SimulatorStarts("expert", rooms=rooms, seed=0), return_tensors=True
    )
    _, infos = env.reset_tensors(seed=0)
    assert infos["room_seed"].tolist() == rooms * 2 and env.starts_info["rooms"]["count"] == 2
    env.close()


# ------------------------------------------------------------------------------------ end to end
def test_bench_verdict_measures_every_policy_in_both_envs_on_the_same_rooms(tmp_path, tiny_state_model):
    from dreamgym.app.cli import main

    out = tmp_path / "verdict.json"
    args = ["tasks=[reach]", "only=[expert,noisy_4,random]", "episodes=2", "max_steps.reach=12", "max_worlds=3", "bootstrap=50"]
    assert main(["bench", "verdict", f"checkpoint={tiny_state_model}", f"out={out}", *args]) == 0
    r = json.loads(out.read_text())
    assert set(r) == LAYOUT and r["benchmark"] == "verdict" and r["reused"] == {}
    assert set(r["arms"]) == {"reach_sim", "reach_dream"}
    names = {"expert", "noisy_4", "random"}
    for arm in r["arms"].values():
        assert set(arm["policies"]) == names and arm["max_steps"] == 12
        for p in arm["policies"].values():
            assert p["episodes"] == 2 and len(p["returns"]) == len(p["successes"]) == 2 and max(p["lengths"]) <= 12
    dream = r["arms"]["reach_dream"]
    assert dream["horizon"] == 11 and dream["observations"] == ["task_obs"] and dream["start_real_steps"] > 0
    t = r["summary"]["tasks"]["reach"]
    assert t["paired_rooms"] is True and set(t["policies"]) == names and r["summary"]["complete"] is True
    assert isinstance(t["target_met"], bool) and t["target"] == 0.9
    for key in ("spearman_success", "spearman_return", "pearson_return"):
        assert t[key] is None or -1.0 <= t[key] <= 1.0
    assert t["spearman_return_ci95"] is None or len(t["spearman_return_ci95"]) == 2
    assert r["summary"]["world_model"]["source"] == str(tiny_state_model)


def test_bench_verdict_refuses_too_few_policies_in_one_line(capsys):
    from dreamgym.app.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "verdict", "only=[expert,random]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dreamgym bench verdict: 2 policies chosen; a rank correlation needs at least 3"]
