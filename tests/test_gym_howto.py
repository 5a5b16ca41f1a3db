"""The README's how-to for a Gymnasium env of one's own, one command per step, end to end on a
small env with a tiny budget: collect -> train-wm -> train-policy in the dream -> eval-policy in
the env; the loop (``diamond env=<id>``) in one command, resumed by re-running it; the SB3 baseline
(``train-policy source_env=<id> env=real``) scored the same way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamgym.app.cli import Refused, main
from dreamgym.policies.gym_eval import evaluate_gym_policy, heldout_seeds
from dreamgym.rollouts.gym_vec import GymTensorVecEnv

QUIET = ["progress=false", "num_threads=1"]


def _score(tmp_path, policy, name, episodes=32):
    out = tmp_path / f"{name}.json"
    assert main(["eval-policy", f"policy={policy}", "source_env=CartPole-v1", f"episodes={episodes}", f"out={out}", *QUIET]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def howto(tmp_path_factory):
    root = tmp_path_factory.mktemp("howto")
    data, wm, pol = root / "data", root / "wm", root / "ppo_dream"
    assert main(["collect", "env=CartPole-v1", "steps=4000", "num_envs=8", f"out={data}", "progress=false"]) == 0
    assert main(["train-wm", f"data={data}", f"out={wm}", "steps=600", "eval_every=300", "ckpt_every=300", *QUIET]) == 0
    args = ["train-policy", "source_env=CartPole-v1", "env=dream", f"checkpoint={wm / 'final'}", f"starts=dataset:{data}"]
    assert main([*args, f"out={pol}", "steps=10000", "num_envs=16", *QUIET]) == 0
    return root, data, wm, pol


def test_a_policy_trained_in_the_dream_of_a_users_env_scores_in_that_env(howto, tmp_path):
    root, data, wm, pol = howto
    meta = json.loads((pol / "policy.json").read_text())
    assert meta["source_env"] == "CartPole-v1" and meta["env"] == "dream" and meta["policy_class"] == "ActorCriticPolicy"
    assert meta["real_env_steps"] == 0 and meta["starts"]["kind"] == "dataset"  # dataset starts spend no real step
    assert meta["sampler"]["num_steps"] >= 1
    trained, rand = _score(tmp_path, pol, "trained"), _score(tmp_path, "random", "random")
    assert trained["episodes"] == rand["episodes"] == 32 and trained["task"] is None
    # 4,000 random real steps behind the world model: the dreamed policy balances far longer than chance
    assert trained["mean_return"] > 4 * rand["mean_return"], (trained["mean_return"], rand["mean_return"])
    assert trained["return_ci95"][0] > rand["return_ci95"][1]


def test_the_sb3_baseline_trains_in_the_env_itself_with_the_same_command(tmp_path):
    out = tmp_path / "ppo_real"
    assert main(["train-policy", "source_env=CartPole-v1", "env=real", f"out={out}", "steps=2048", "num_envs=4", *QUIET]) == 0
    meta = json.loads((out / "policy.json").read_text())
    assert meta["env"] == "real" and meta["real_env_steps"] == meta["steps"] >= 2048 and meta["world_model"] is None
    assert _score(tmp_path, out, "real", episodes=8)["mean_return"] > 0


def test_the_loop_runs_in_one_command_and_a_rerun_continues_it(tmp_path):
    out = tmp_path / "dia"
    cmd = [
        "diamond",
        "env=CartPole-v1",
        "budget=2000",
        "collect_steps=1000",
        "collect_envs=8",
        "gym_wm_steps=200",
        "policy_steps=2048",
        "num_envs=16",
        "eval_episodes=16",
        f"out={out}",
        *QUIET,
    ]
    assert main(cmd) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [0, 1] and log[-1]["real_steps_used"] == 2000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["real_steps_used"] <= summary["budget"] == 2000 and summary["eval"]["episodes"] == 16
    # iteration 1 collected with iteration 0's policy and continued its world model
    assert json.loads((out / "iter_01" / "data" / "manifest.json").read_text())["collection"]["actor"] == log[0]["policy"]
    assert json.loads((out / "iter_01" / "world_model" / "run.json").read_text())["init"] == log[0]["world_model"]
    weights = (out / "iter_01" / "policy" / "policy.safetensors").read_bytes()
    assert main(cmd) == 0  # a re-run of a finished loop adds nothing
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert (out / "iter_01" / "policy" / "policy.safetensors").read_bytes() == weights
    with pytest.raises(Refused, match="another configuration"):
        main([c for c in cmd if not c.startswith("gym_wm_steps=")] + ["gym_wm_steps=300"])
    # the loop's own policies and random, scored in the env and in the loop's last dream
    verdict = tmp_path / "verdict.json"
    bench = ["bench", "gym_verdict", f"loop={out}", "episodes=8", "worlds=8", "bootstrap=50", f"out={verdict}", "threads=1"]
    assert main(bench) == 0
    v = json.loads(verdict.read_text())
    assert set(v["arms"]) == {"iter_00", "iter_01", "random"} and v["config"]["checkpoint"] == log[-1]["world_model"]
    for arm in v["arms"].values():
        assert len(arm["real"]["returns"]) == len(arm["dream"]["returns"]) == 8
    assert v["summary"]["policies"] == 3 and -1 <= v["summary"]["spearman"] <= 1
    with pytest.raises(SystemExit, match="at least 3"):
        main([*bench[:3], "random=false", f"out={verdict}"])


def test_a_killed_loop_continues_from_its_log(tmp_path, monkeypatch):
    """A kill after the first iteration: the re-run keeps that iteration and does only the second."""
    import dreamgym.policies.gym_diamond as gd

    out = tmp_path / "dia"
    cmd = ["diamond", "env=CartPole-v1", "budget=1000", "collect_steps=500", "collect_envs=4", "gym_wm_steps=100"]
    cmd += ["policy_steps=1024", "num_envs=8", "eval_episodes=4", f"out={out}", *QUIET]
    real = gd._train_world_model
    calls = []

    def dies_second_time(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gd, "_train_world_model", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        main(cmd)
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    first = (out / "iter_00" / "policy" / "policy.safetensors").read_bytes()
    monkeypatch.setattr(gd, "_train_world_model", real)
    assert main(cmd) == 0
    assert (out / "iter_00" / "policy" / "policy.safetensors").read_bytes() == first
    assert [json.loads(x)["iteration"] for x in (out / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_the_tensor_api_of_a_gymnasium_env_hands_over_final_observations():
    env = GymTensorVecEnv("CartPole-v1", 3, seed=5)
    obs, _ = env.reset_tensors()
    assert obs.shape == (3, 4) and obs.dtype == torch.float32
    ended = 0
    for _ in range(60):
        obs, rew, term, trunc, infos = env.step_tensors(torch.ones(3, dtype=torch.long))  # always push right: falls fast
        if (term | trunc).any():
            done = term | trunc
            assert infos["final_obs"].shape == (3, 4) and bool(infos["_final_obs"].eq(done).all())
            assert bool((infos["final_obs"][~done] == obs[~done]).all())  # other rows: the current observation
            assert bool((infos["final_obs"][done].abs()[:, 2] > 0.2).all())  # the pole had fallen (angle beyond 12 degrees)
            ended += int(done.sum())
    assert ended >= 3 and env.real_steps == 180
    env.close()


def test_evaluation_starts_are_held_out_and_bad_input_is_refused_in_one_line(howto, tmp_path):
    _, data, wm, pol = howto
    assert min(heldout_seeds(8, 3)) >= 2**31  # collect's reset seeds are below 2**31
    with pytest.raises(ValueError, match="trained on CartPole-v1, not on source_env=Pendulum-v1"):
        evaluate_gym_policy(pol, "Pendulum-v1", episodes=2)
    with pytest.raises(Refused, match="not a registered Gymnasium id"):
        main(["train-policy", "source_env=NoSuchEnv-v0", "env=real", f"out={tmp_path / 'x'}", *QUIET])
    with pytest.raises(Refused, match="give checkpoint="):
        main(["train-policy", "source_env=CartPole-v1", "env=dream", f"out={tmp_path / 'y'}", *QUIET])
    with pytest.raises(Refused, match="room's world model"):
        main(["train-policy", "source_env=CartPole-v1", "env=dream", "checkpoint=worldmodel/default", f"out={tmp_path / 'z'}", *QUIET])
    with pytest.raises(Refused, match="env_kwargs are passed to gym.make"):
        main(["train-policy", "env=real", "env_kwargs={g:1}", f"out={tmp_path / 'w'}", *QUIET])
    r = evaluate_gym_policy("random", "CartPole-v1", episodes=5, seed=1)
    assert r["episodes"] == 5 and np.isfinite(r["mean_return"])


def test_bench_gym_pairs_the_loop_with_each_baseline_seed_by_seed():
    from dreamgym.benchmarks.gym_loop import summarise

    def arm(r):
        return {"score": {"mean_return": r}}

    arms = {"ppo_s0": arm(10.0), "ppo_s1": arm(30.0), "loop_s0": arm(20.0), "loop_s1": arm(20.0), "sac_s0": arm(50.0)}
    s = summarise(arms, [0, 1])
    assert s["arms"]["ppo"]["mean_return"] == 20.0 and s["arms"]["loop"]["per_seed"] == [20.0, 20.0]
    assert s["loop_minus_ppo"]["per_seed"] == [10.0, -10.0] and s["loop_at_least_ppo"] is True
    assert s["loop_minus_sac"]["seeds"] == [0] and s["loop_at_least_sac"] is False  # only seed 0 has both
    assert s["complete"] is False  # sac has one seed of two


def test_bench_gym_takes_one_kwargs_mapping_per_env_and_refuses_a_mismatch():
    with pytest.raises(Refused, match="one mapping .* per entry of envs"):
        main(["bench", "gym", "envs=[CartPole-v1,Pendulum-v1]", "env_kwargs=[{g:1}]", "out=/tmp/never"])


def test_a_dream_horizon_truncates_episodes_counted_from_their_start(howto):
    from dreamgym.worldmodel.vector_dream import VectorDreamVecEnv

    root, data, wm, pol = howto
    env = VectorDreamVecEnv(checkpoint=wm / "final", num_envs=4, starts=f"dataset:{data}:all", horizon=3)
    env.reset_tensors(seed=0)
    ends = []
    for t in range(1, 10):
        _, _, term, trunc, _ = env.step_tensors(torch.ones(4, dtype=torch.long) * (t % 2))  # alternate: the pole stays up
        ends.append((term, trunc))
    # every world ends within 3 dreamed steps of its start; where it was not terminated, it was truncated
    last = torch.zeros(4, dtype=torch.long)
    for t, (term, trunc) in enumerate(ends, 1):
        done = term | trunc
        assert bool((t - last[~done] < 3).all())
        assert not bool((term & trunc).any())
        last[done] = t
    assert bool(ends[2][1].any())  # some world reached the horizon at its third step
    with pytest.raises(ValueError, match="horizon=0: expected a whole number >= 1"):
        VectorDreamVecEnv(checkpoint=wm / "final", num_envs=1, starts=f"dataset:{data}", horizon=0)


def test_eval_wm_scores_a_users_env_model_beside_fitted_baselines(howto, tmp_path):
    root, data, wm, pol = howto
    out = tmp_path / "eval"
    args = ["eval-wm", f"checkpoint={wm / 'final'}", f"data={data}", f"out={out}", "horizons=[1,4,16]", "mlp_steps=300", "resamples=200"]
    assert main([*args, "best_of_starts=8", "threads=1", "progress=false"]) == 0
    text = (out / "eval.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    r = json.loads(text)
    assert r["env_id"] == "CartPole-v1" and r["split"] == "heldout" and r["starts"] > 16
    arms = set(r["metrics"]["obs_nrmse"])
    assert arms == {"sampler", "mean", "copy_last", "constant_velocity", "linear", "mlp"}
    ns = [c["n"] for c in r["metrics"]["obs_nrmse"]["sampler"]]
    assert ns[0] == r["starts"] and ns == sorted(ns, reverse=True)  # fewer starts have 16 steps left than 1
    for cells in r["metrics"]["obs_nrmse"].values():
        for c in cells:
            assert c["ci"][0] <= c["value"] <= c["ci"][1]
    one = {a: cells[0]["value"] for a, cells in r["metrics"]["obs_nrmse"].items()}
    assert one["sampler"] < one["copy_last"]  # 600 training steps already beat holding the last observation
    best = r["strongest_baseline"]["obs_nrmse"][0]
    assert best["value"] == min(v for a, v in one.items() if a not in ("sampler", "mean"))
    assert set(r["paired"]["obs_nrmse"]["sampler"][0]) >= {"diff", "ci", "p", "won"}
    assert r["metrics"]["termination_f1"]["sampler"][-1]["value"] is not None  # CartPole's poles fall within 16 steps
    assert (out / "EVAL.md").read_text().startswith("# CartPole-v1")


def test_eval_wm_of_a_users_env_refuses_bad_data_in_one_line(howto, tmp_path):
    root, data, wm, pol = howto
    heldout_only = tmp_path / "scoring"
    assert (
        main(["collect", "env=CartPole-v1", "steps=200", "num_envs=2", f"out={heldout_only}", "heldout_fraction=0", "progress=false"]) == 0
    )
    base = ["eval-wm", f"checkpoint={wm / 'final'}", f"out={tmp_path / 'e'}", "progress=false", "threads=1"]
    with pytest.raises(SystemExit, match="no episode in the heldout split"):
        main([*base, f"data={heldout_only}"])
    other = tmp_path / "pendulum"
    assert main(["collect", "env=Pendulum-v1", "steps=200", "num_envs=2", f"out={other}", "progress=false"]) == 0
    with pytest.raises(SystemExit, match="holds episodes of Pendulum-v1, but the world model dreams CartPole-v1"):
        main([*base, f"data={other}", "split=all"])
