"""``dreamgym bench transfer``: the paired statistics on hand-made data, one state and one pixels
cell end to end at a tiny scale, the stage cache and the refusal of bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamgym.benchmarks.transfer_stats import arm_figures, compare, mcnemar_exact, paired_bootstrap, regime, targets
from dreamgym.policies.evaluate import wilson_interval

torch.set_num_threads(1)  # the machine is shared: one thread avoids oversubscription stalls

LAYOUT = {"benchmark", "created", "code", "machine", "config", "arms", "summary", "keys", "reused", "wall_s"}
STAGES = {"dream", "real_n", "real_10n", "diamond", "eval_real", "eval_dream"}
TARGETS = {
    "over_real_n": 1.0,
    "over_real_10n": 0.8,
    "real_10n_inputs": {"state": ["reach", "push", "social", "avoid"], "pixels": ["reach", "push"]},
}


# ------------------------------------------------------------------------------------ statistics
def test_mcnemar_counts_the_discordant_rooms_and_tests_them_exactly():
    a = [True] * 6 + [False] * 4 + [True] * 5
    b = [False] * 6 + [False] * 4 + [True] * 5
    r = mcnemar_exact(a, b)
    assert (r["a_only"], r["b_only"]) == (6, 0)
    assert r["p"] == pytest.approx(2 * 0.5**6)  # both tails of Binomial(6, 1/2) at 6 of 6
    r = mcnemar_exact([True, False, True, False, True], [False, True, True, False, False])
    # discordant: 2 rooms only a, 1 room only b: p = P(X <= 1 or X >= 2 | n=3) = 1
    assert (r["a_only"], r["b_only"]) == (2, 1) and r["p"] == pytest.approx(1.0)
    assert mcnemar_exact([True, False], [True, False]) == {"a_only": 0, "b_only": 0, "p": 1.0}
    with pytest.raises(ValueError, match="same length"):
        mcnemar_exact([True], [True, False])


def test_wilson_intervals_are_the_textbook_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    f = arm_figures({"returns": [1.0, 2.0, 3.0, 4.0], "successes": [True, False, True, True], "lengths": [5, 9, 5, 5]})
    assert f["success"] == 0.75 and f["success_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert f["return"] == 2.5 and f["return_ci95"][0] < 2.5 < f["return_ci95"][1] and f["episodes"] == 4


def test_the_paired_bootstrap_sees_a_constant_shift_through_noise_that_hides_it_unpaired():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 5.0, 64)  # rooms that differ much more than the two arms do
    r = paired_bootstrap(x + 0.1, x, resamples=500)
    assert r["diff"] == pytest.approx(0.1) and r["ci95"] == pytest.approx([0.1, 0.1])
    same = paired_bootstrap(x, x, resamples=100)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]
    noisy = paired_bootstrap(x, rng.normal(0.0, 5.0, 64), resamples=500, seed=1)
    assert noisy["ci95"][0] < noisy["diff"] < noisy["ci95"][1] and noisy["ci95"][1] - noisy["ci95"][0] > 1.0
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1"):
        paired_bootstrap([1.0], [1.0], resamples=0)


def _arm(successes: list[bool], returns: list[float] | None = None, rooms: list[int] | None = None) -> dict:
    n = len(successes)
    return {
        "successes": successes,
        "returns": returns if returns is not None else [float(s) for s in successes],
        "lengths": [10] * n,
        "room_seeds": rooms if rooms is not None else list(range(n)),
    }


def test_arms_are_compared_room_by_room_and_the_regime_is_tested():
    strong, weak = _arm([True] * 18 + [False] * 2), _arm([False] * 16 + [True] * 4)
    c = compare(strong, weak, resamples=300)
    assert c["success_diff"] == pytest.approx(0.7) and c["mcnemar"]["a_only"] == 16 and c["mcnemar"]["b_only"] == 2
    assert c["mcnemar"]["p"] < 0.01 and c["success_diff_ci95"][0] > 0.3 and c["return_diff"] == pytest.approx(0.7)
    r = regime(weak, strong, alpha=0.05, resamples=300, seed=0)
    assert r["ok"] and r["return_ok"] and r["real_10n_vs_real_n"]["success_diff"] == pytest.approx(0.7)
    assert not regime(strong, weak, alpha=0.05, resamples=300, seed=0)["ok"], "10 N below N is not the regime"
    assert not regime(weak, weak, alpha=0.05, resamples=300, seed=0)["ok"]
    with pytest.raises(ValueError, match="same rooms"):
        compare(strong, _arm([True] * 20, rooms=list(range(1, 21))))


def test_targets_apply_per_input_and_a_zero_bound_is_trivial():
    t = targets({"dream": 0.5, "real_n": 0.4, "real_10n": 0.7}, "push", "pixels", TARGETS)
    assert t["dream_vs_real_n"]["met"] and not t["dream_vs_real_10n"]["met"]
    assert t["dream_vs_real_10n"]["bound"] == pytest.approx(0.56)
    social = targets({"dream": 0.5, "real_n": 0.4, "real_10n": 0.7}, "social", "pixels", TARGETS)
    assert set(social) == {"dream_vs_real_n"}, "for pixels the 0.8 x real_10n target is reach and push only"
    assert set(targets({"dream": 0.5, "real_n": 0.4, "real_10n": 0.7}, "social", "state", TARGETS)) == {
        "dream_vs_real_n",
        "dream_vs_real_10n",
    }
    zero = targets({"dream": 0.0, "real_n": 0.0}, "reach", "state", TARGETS)
    assert zero["dream_vs_real_n"]["met"] and zero["dream_vs_real_n"]["trivial"]
    assert targets({"expert": 1.0}, "reach", "state", TARGETS) == {}


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_world_model(tmp_path_factory):
    """A small world model of every modality, dreaming 32x32 frames as the simulator renders them."""
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(resolution=16, data_resolution=32, frame_channels=[8, 16], occupancy_channels=[8, 16], dim=32, depth=1, heads=2)
    path = tmp_path_factory.mktemp("wm") / "tiny"
    WorldModel(cfg).save_pretrained(path)
    return path


TINY = (
    "tasks=[reach]",
    "wm_data_steps=8",
    "dream_steps=32",
    "scale=0.5",
    "num_envs.dream=2",
    "num_envs.real=2",
    "ppo.n_steps=8",
    "ppo.batch_size=8",
    "ppo.n_epochs=1",
    "eval_episodes=2",
    "eval_max_worlds=12",
    "diamond.budget=64",
    "diamond.collect_steps=32",
    "diamond.collect_envs=2",
    "diamond.wm.steps=2",
    "diamond.wm.batch_size=2",
    "eval_max_steps=12",
    "value_gap_episodes=2",
    "bootstrap=200",
    "progress=false",
    "threads=1",
)


def _bench(tmp: Path, *overrides: str) -> dict:
    from dreamgym.app.cli import main

    assert main(["bench", "transfer", *overrides]) == 0
    out = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("out=")))
    r = json.loads(out.read_text())
    assert set(r) == LAYOUT and r["benchmark"] == "transfer"
    return r


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_world_model):
    tmp = tmp_path_factory.mktemp("transfer")
    common = (f"checkpoint={tiny_world_model}", f"run_dir={tmp / 'stages'}", *TINY)
    overview = _bench(tmp, f"out={tmp / 'first' / 't.json'}", "inputs=[state,pixels]", *common)
    return tmp, common, overview


def test_a_state_and_a_pixels_cell_write_their_json_and_the_overview(first_run, tiny_world_model):
    tmp, _, overview = first_run
    s = overview["summary"]
    assert s["complete"] and s["planned"] == s["done"] == ["reach_state", "reach_pixels"] and not s["full_scale"]
    for name, keys in (("reach_state", ["task_obs"]), ("reach_pixels", ["ego_rgb", "motion", "instruction"])):
        cell = json.loads((tmp / "first" / f"t_{name}.json").read_text())
        assert set(cell) == LAYOUT and set(cell["arms"]) == STAGES and set(cell["keys"]) == STAGES and cell["reused"] == {}
        c = cell["summary"]
        assert c["obs_keys"] == keys and set(c["arms"]) == {"dream", "real_n", "real_10n", "diamond", "expert", "random"}
        assert all(a["episodes"] == 2 and 0 <= a["success"] <= 1 and len(a["success_ci95"]) == 2 for a in c["arms"].values())
        assert c["paired_rooms"] and set(c["comparisons"]) == {
            f"{a}_vs_{o}"
            for a, o in (("dream", "real_n"), ("dream", "real_10n"), ("diamond", "real_n"), ("diamond", "real_10n"), ("diamond", "dream"))
        }
        assert 0 <= c["comparisons"]["dream_vs_real_n"]["mcnemar"]["p"] <= 1 and isinstance(c["regime_ok"], bool)
        assert set(c["targets"]) == {"dream_vs_real_n", "dream_vs_real_10n"} and isinstance(c["target_met"], bool)
        b = c["budgets"]
        # N: the world model's data and the dream's start steps (K-1 = 1 per dreamed episode, counted in training)
        assert b["dream_start_steps"] == cell["arms"]["dream"]["real_env_steps"] >= 2
        assert b["n_real_steps"] == 8 + b["dream_start_steps"]
        ppo = {"dream": 16, "real_n": -(-b["n_real_steps"] // 2), "real_10n": -(-10 * b["n_real_steps"] // 2)}
        assert b["budget"] == ppo | {"diamond": 32}  # the loop's budget is of real steps
        assert all(b["steps"][a] >= b["budget"][a] for a in ppo), "PPO trains whole rollouts"
        assert b["real_steps"]["real_n"] == b["steps"]["real_n"] and b["world_model"] == str(tiny_world_model)
        # the loop: its own budget (x scale) of real steps, collected and spent on dream starts, beside the model's data
        d = cell["arms"]["diamond"]
        assert d["real_env_steps"] == d["collected_steps"] + d["dream_start_steps"] <= 32 and d["iterations"] >= 1
        assert b["diamond_n_real_steps"] == 8 + d["real_env_steps"] and b["steps"]["diamond"] == d["steps"] > 0
        assert Path(d["policy_folder"], "policy.safetensors").is_file()
        assert c["value_gap"] == pytest.approx(c["dream_predicted_return"] - c["arms"]["dream"]["return"])
        assert 0 <= c["expert_dream_success"] <= 1
        assert set(c["in_dream"]) == {"dream", "real_n", "real_10n", "diamond", "expert"}  # every arm dreamed too
        assert c["in_dream"]["dream"]["dream_success"] == c["dream_predicted_success"]
        assert c["in_dream"]["real_10n"]["real_success"] == c["arms"]["real_10n"]["success"]
        head = overview["arms"][name]
        assert head["file"] == str(tmp / "first" / f"t_{name}.json") and head["success"]["dream"] == c["arms"]["dream"]["success"]
        assert head["n_real_steps"] == b["n_real_steps"] and head["reused"] == []
    assert len(overview["keys"]) == 2 * len(STAGES)
    # the stages live in <run_dir>/<task>_<input>/<arm>/<key>/
    key = overview["keys"]["reach_pixels/dream"]
    assert (tmp / "stages" / "reach_pixels" / "dream" / key[:16] / "policy.safetensors").is_file()


def test_a_rerun_reuses_every_stage_and_trains_nothing(first_run, monkeypatch):
    import dreamgym.policies.evaluate as evaluate
    import dreamgym.policies.train as train

    tmp, common, overview = first_run

    def refuse(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(train, "train_policy", refuse)
    monkeypatch.setattr(evaluate, "evaluate_policies", refuse)
    monkeypatch.setattr(evaluate, "evaluate_in_dream", refuse)
    again = _bench(tmp, f"out={tmp / 'again' / 't.json'}", "inputs=[state,pixels]", *common)
    assert set(again["reused"]) == set(overview["keys"])
    assert all(again["reused"][k]["key"] == overview["keys"][k] for k in again["reused"])
    assert again["arms"]["reach_state"]["reused"] == sorted(STAGES)
    assert again["arms"]["reach_state"]["success"] == overview["arms"]["reach_state"]["success"]


def test_a_run_of_one_cell_keeps_the_other_cells_on_record_in_the_overview(first_run):
    tmp, common, overview = first_run
    out = tmp / "one" / "t.json"
    out.parent.mkdir()
    earlier = json.loads((tmp / "first" / "t_reach_pixels.json").read_text())
    (tmp / "one" / "t_reach_pixels.json").write_text(json.dumps(earlier))
    again = _bench(tmp, f"out={out}", "inputs=[state]", *common)
    s = again["summary"]
    assert s["done"] == ["reach_state"] and s["from_earlier_runs"] == ["reach_pixels"]
    assert s["cells_on_record"] == ["reach_pixels", "reach_state"] and not s["all_cells_on_record"]
    line = again["arms"]["reach_pixels"]
    assert line["success"] == overview["arms"]["reach_pixels"]["success"]
    assert line["earlier_run"] == {"created": earlier["created"], "code": earlier["code"]}
    (tmp / "one" / "t_reach_pixels.json").write_text("{")
    from dreamgym.benchmarks.transfer import earlier_cells

    with pytest.raises(ValueError, match="not a bench transfer cell file"):
        earlier_cells(out, skip=["reach_state"])


def test_a_stage_killed_before_it_was_recorded_continues_in_its_folder(first_run, capsys):
    tmp, common, overview = first_run
    key = overview["keys"]["reach_state/real_10n"]
    folder = tmp / "stages" / "reach_state" / "real_10n" / key[:16]
    weights = (folder / "policy.safetensors").read_bytes()
    (folder / "arm.json").unlink()  # as if killed after training, before the stage's result was written
    capsys.readouterr()
    again = _bench(tmp, f"out={tmp / 'killed' / 't.json'}", "inputs=[state]", *common)
    assert "finished in an earlier run; nothing to do" in capsys.readouterr().out
    assert set(again["reused"]) == {f"reach_state/{a}" for a in STAGES - {"real_10n"}}
    assert again["keys"]["reach_state/real_10n"] == key and (folder / "policy.safetensors").read_bytes() == weights


def test_only_arms_scores_the_built_ins_without_training(tmp_path, tiny_world_model):
    r = _bench(
        tmp_path, f"out={tmp_path / 't.json'}", f"run_dir={tmp_path / 'stages'}", "only_arms=[expert,random]", "inputs=[state]", *TINY
    )
    cell = json.loads((tmp_path / "t_reach_state.json").read_text())
    assert set(cell["keys"]) == {"eval_real"} and set(cell["summary"]["arms"]) == {"expert", "random"}
    assert cell["summary"]["targets"] == {} and cell["summary"]["target_met"] is None and cell["summary"]["regime_ok"] is None
    assert r["summary"]["arms"] == ["expert", "random"] and r["arms"]["reach_state"]["n_real_steps"] is None


# ------------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize(
    "override, expect",
    [
        ("tasks=[reach,jump]", "tasks=[reach,jump]: [jump] unknown; choose from avoid, push, reach, social"),
        ("inputs=[depth]", "inputs=[depth]: [depth] unknown; choose from state, pixels"),
        ("only_arms=[real_n]", "only_arms=[real_n]: the simulator arms' budget N is counted by the dream arm; add dream"),
        ("only_arms=[dream,best]", "only_arms=[dream,best]: choose a non-empty subset of dream, real_n, real_10n, diamond, expert, random"),
        ("+per_task.push.steps=5", "per_task.push: [steps] unknown; a task may set checkpoint, wm_data_steps, dream_steps"),
        ("obs_keys.pixels=[ego_rgb,eyes]", "obs_keys.pixels=[ego_rgb,eyes]: unknown observation keys ['eyes']"),
        ("scale=0", "scale=0.0 is out of range; scale must be > 0"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line(capsys, tmp_path, override, expect):
    from dreamgym.app.cli import Refused, main

    with pytest.raises(Refused) as e:
        main(["bench", "transfer", override, f"out={tmp_path / 't.json'}", f"run_dir={tmp_path / 'stages'}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and err == [str(e.value)] and expect in err[0]
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "stages").exists()


def test_a_pixels_cell_refuses_a_world_model_whose_frames_the_simulator_does_not_render(capsys, tmp_path):
    from dreamgym.app.cli import Refused, main
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    cfg = WorldModelConfig(resolution=16, data_resolution=16, frame_channels=[8, 16], occupancy_channels=[8, 16], dim=32, depth=1, heads=2)
    WorldModel(cfg).save_pretrained(tmp_path / "wm16")
    with pytest.raises(Refused):
        wm, out, stages = tmp_path / "wm16", tmp_path / "t.json", tmp_path / "s"
        main(["bench", "transfer", "inputs=[pixels]", f"checkpoint={wm}", f"out={out}", f"run_dir={stages}", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dreams 16x16 frames but the simulator renders 32x32" in err[0]
