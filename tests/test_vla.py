"""The instruction encoder and the vision-language-action policy."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder():
    from dreamgym.policies.text_encoder import shared_encoder

    return shared_encoder()


def test_encoder_loads_offline_and_ranks_paraphrases(encoder):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    e = encoder.encode(["walk to the red box", "go to the red box", "Okay, bye for now.", "push the blue ball onto the mat"])
    assert e.shape == (4, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-4)
    sim = e @ e.T
    # a paraphrase is closer than an unrelated utterance or a different task
    assert sim[0, 1] > 0.6 > sim[0, 2] + 0.3
    assert sim[0, 1] > sim[0, 3] + 0.3


def test_encoder_caches_per_sentence(encoder):
    a = encoder.encode("shove the green box onto the mat")
    n = len(encoder._cache)
    b = encoder.encode(["shove the green box onto the mat"] * 3)
    assert len(encoder._cache) == n
    assert torch.equal(b[1], a[0])


def test_phrasing_splits_are_disjoint():
    from dreamgym.envs.tasks import INSTRUCTIONS
    from dreamgym.policies.vla import HELD_OUT_COMBOS, PARAPHRASE_TEMPLATES, TRAIN_TEMPLATES, is_held_out, parse_instruction

    for task in ("reach", "push"):
        assert not set(TRAIN_TEMPLATES[task]) & set(PARAPHRASE_TEMPLATES[task])
    held = [i for i in range(len(INSTRUCTIONS)) if is_held_out(i)]
    assert len(held) == len(HELD_OUT_COMBOS)
    assert all(parse_instruction(i) in HELD_OUT_COMBOS for i in held)


def test_vla_checkpoint_round_trip(tmp_path):
    from dreamgym.policies.vla import VLAConfig, VLAPolicy

    torch.manual_seed(0)
    p = VLAPolicy(VLAConfig(resolution=32))
    p.save_pretrained(tmp_path)
    q = VLAPolicy.from_pretrained(tmp_path)
    obs = {
        "ego_rgb": torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8),
        "motion": torch.randn(2, 227),
        "instruction": torch.tensor([0, 13]),
    }
    a = p.eval().act(obs)
    assert a.shape == (2, 6) and a.abs().max() <= 1
    assert torch.allclose(a, q.act(obs))
    with pytest.raises(KeyError, match="ego_rgb"):
        p.act({"motion": obs["motion"], "instruction": obs["instruction"]})


def test_old_vla_checkpoint_is_refused_by_version(tmp_path):
    import json

    from dreamgym.policies.vla import VLAConfig, VLAPolicy

    VLAPolicy(VLAConfig()).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["version"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="version-1 VLA policy.*retrain"):
        VLAPolicy.from_pretrained(tmp_path)


def test_keypoint_cells():
    from dreamgym.policies.vla import keypoint_cells

    uv = torch.tensor([[[-0.99, -0.99], [0.99, 0.99], [0.1, -0.3], [0.0, 0.0]]])
    visible = torch.tensor([[True, True, True, False]])
    cells = keypoint_cells(uv, visible, 8)
    # top-left, bottom-right, row 2 (v = -0.3 is above the centre) col 4, not in view
    assert cells.tolist() == [[0, 63, 2 * 8 + 4, 64]]


def test_projected_props_land_on_their_colour_in_the_rendered_frame():
    """The keypoint targets: each prop projected with the camera placed by the motion observation
    falls on a pixel of the prop's own colour in the rendered ego frame."""
    from dreamgym.envs import EgoRoomVecEnv
    from dreamgym.envs.scene import COLOUR_NAMES, COLOURS
    from dreamgym.policies.vla import OBS_KEYS, project_to_frame

    R = 64
    env = EgoRoomVecEnv(num_envs=8, task="reach", resolution=R, obs_keys=OBS_KEYS, return_tensors=True, seed=3)
    obs, _ = env.reset_tensors()
    dists = []
    for _ in range(12):
        st = env.core.state
        uv, vis = project_to_frame(obs["motion"], st.prop_pos)
        for b, k in (vis & (uv.abs().amax(-1) < 0.9)).nonzero().tolist():
            col, row = ((uv[b, k] + 1) / 2 * R).long().tolist()
            ref = torch.tensor(COLOURS[COLOUR_NAMES[int(env.core.specs[b].prop_colour[k])]][:3])
            patch = obs["ego_rgb"][b, :, max(0, row - 1) : row + 2, max(0, col - 1) : col + 2].float().reshape(3, -1) / 255
            dists.append(float((patch - ref[:, None]).norm(dim=0).min()))
        obs, *_ = env.step_tensors(env.expert_actions())
    env.close()
    dists = torch.tensor(dists)
    assert len(dists) >= 20
    # a few may hide behind furniture or the partner; the rest match the prop's colour closely
    assert (dists < 0.25).float().mean() > 0.9


SHIPPED = __import__("pathlib").Path(__file__).resolve().parent.parent / "policies" / "checkpoints" / "vla"


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped VLA checkpoint")
def test_shipped_vla_beats_random_on_held_out_rooms():
    from dreamgym.benchmarks.vla import held_out_rooms
    from dreamgym.envs import EgoRoomVecEnv
    from dreamgym.policies.vla import OBS_KEYS, VLAPolicy

    policy = VLAPolicy.from_pretrained(SHIPPED / "final")
    n = 6
    seeds, _ = held_out_rooms("reach", 2 * n, False, 1_600_000_000, set())
    env = EgoRoomVecEnv(num_envs=2 * n, task="reach", resolution=32, obs_keys=OBS_KEYS, return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=seeds)
    rand = torch.arange(2 * n) >= n
    gen = torch.Generator().manual_seed(0)
    done = torch.zeros(2 * n, dtype=torch.bool)
    success = torch.zeros(2 * n, dtype=torch.bool)
    for _ in range(200):
        a = torch.where(rand[:, None], torch.rand(2 * n, 6, generator=gen) * 2 - 1, policy.act(obs))
        obs, _, term, trunc, info = env.step_tensors(a)
        ended = (term | trunc) & ~done
        success |= ended & torch.as_tensor(info["success"])
        done |= ended
        if done.all():
            break
    assert success[~rand].float().mean() > success[rand].float().mean()


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped VLA checkpoint")
def test_shipped_parser_reads_unseen_combinations_and_paraphrases():
    """Trained on three phrasings per task without the held-out colour x object combinations, the
    instruction parser reads new wordings and the held-out combinations correctly."""
    from dreamgym.policies.vla import HELD_OUT_COMBOS, PARAPHRASE_TEMPLATES, SYNONYM, TRAIN_TEMPLATES, VLAPolicy, phrase

    policy = VLAPolicy.from_pretrained(SHIPPED / "final")
    rows = [(phrase(t, c, s, tpl), t, c, s) for t, c, s in HELD_OUT_COMBOS for tpl in TRAIN_TEMPLATES[t] + PARAPHRASE_TEMPLATES[t]]
    rows += [
        (phrase(t, c, s, tpl), t, c, s)
        for t in ("reach", "push")
        for c in ("red", "blue")
        for s in SYNONYM
        for tpl in PARAPHRASE_TEMPLATES[t]
    ]
    parsed = policy.parsed([r[0] for r in rows])
    right = [p == {"colour": c, "shape": s, "task": t} for p, (_, t, c, s) in zip(parsed, rows)]
    assert sum(right) / len(right) >= 0.9, [r[0] for r, ok in zip(rows, right) if not ok]
    assert all(p["colour"] == r[2] and p["task"] == r[1] for p, r in zip(parsed, rows))


def test_train_vla_runs_bc_and_the_grouped_dream_stage_on_both_tasks(tmp_path):
    """A tiny `dreamgym train-vla`: DAgger BC with the parser and keypoint losses, then group-relative
    AWR in a dream (an untrained world model) on reach and push, interleaved; checkpoints for both
    stages, the training rooms (real and dreamed starts) and the real / dreamed counts."""
    import json

    from dreamgym.app.cli import main
    from dreamgym.policies.vla import VLAPolicy
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig
    from dreamgym.worldmodel.sampling import network_dtype

    torch.manual_seed(0)
    wm = tmp_path / "wm"
    WorldModel(
        WorldModelConfig(resolution=16, data_resolution=32, frame_channels=[8, 16], occupancy_channels=[8, 16], dim=32, depth=1, heads=2)
    ).save_pretrained(wm)
    out = tmp_path / "vla"
    args = ["rounds=2", "steps_per_round=3", "num_envs=2", "updates_per_round=3", "batch=8", f"world_model={wm}"]
    args += ["dream_envs=4", "dream_group=2", "dream_iterations=2", "dream_horizon.reach=2", "dream_horizon.push=3", "dream_updates=2"]
    assert main(["train-vla", f"out={out}", *args]) == 0
    bc, final = VLAPolicy.from_pretrained(out / "bc"), VLAPolicy.from_pretrained(out / "final")
    assert final.config.info["stage"] == "bc+dream_awr"
    stats = final.config.info["dream"]
    assert set(stats) == {"reach", "push"}  # the default dream_tasks
    # at most horizon x worlds per iteration; every iteration dreams at least one step per world
    assert 2 * 4 <= stats["reach"]["dreamed_transitions"] <= 2 * 4 * 2
    assert 2 * 4 <= stats["push"]["dreamed_transitions"] <= 2 * 4 * 3
    assert all(len(s["success"]) == 2 and len(s["max_prop_displacement"]) == 2 for s in stats.values())
    own = WorldModel.from_pretrained(wm).sampler  # the model's own, with the precision it resolved to here
    assert all(s["sampler"] == own.to_dict() | {"network_precision": network_dtype(own, "cpu")} for s in stats.values())
    assert not torch.equal(bc.head[-1].weight, final.head[-1].weight)  # the dream stage changed the policy
    exp = json.loads((out / "experience.json").read_text())
    assert exp == final.config.info["experience"]
    assert exp["real"]["bc_collection_steps"] == 2 * 3 * 2 * 2  # rounds x steps x worlds x tasks
    assert exp["real"]["bc_samples"] == bc.config.info["bc_samples"] <= exp["real"]["bc_collection_steps"]
    # each start costs K - 1 = 1 real step (the untrained model's context is 2); at least one start per group and iteration
    assert all(n >= 2 * 2 for n in exp["real"]["dream_start_steps"].values())
    assert exp["real"]["total"] == exp["real"]["bc_collection_steps"] + sum(exp["real"]["dream_start_steps"].values())
    assert exp["dreamed"]["total"] == stats["reach"]["dreamed_transitions"] + stats["push"]["dreamed_transitions"]
    assert exp["dreamed_over_real"] == round(exp["dreamed"]["total"] / exp["real"]["total"], 3)
    rooms = set(json.loads((out / "train_rooms.json").read_text()))
    assert len(rooms) >= 4 + 2 * 2 * 2  # the BC rooms and every dreamed start's room
    log = (out / "train_log.txt").read_text()
    assert "parse" in log and "keypoints" in log
    assert "dream push iteration 2/2" in log and "a prop moved" in log and "experience:" in log


def test_a_killed_train_vla_continues_with_the_same_command(tmp_path, monkeypatch):
    """Killed after the first dream iteration: the same command takes BC from the earlier run, goes on
    with the second iteration and counts both; a finished run does nothing; other settings are refused."""
    import json

    import dreamgym.policies.vla_resume as resume
    from dreamgym.app.cli import Refused, main
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    wm = tmp_path / "wm"
    WorldModel(
        WorldModelConfig(resolution=16, data_resolution=32, frame_channels=[8], occupancy_channels=[8], dim=16, depth=1, heads=2)
    ).save_pretrained(wm)
    out = tmp_path / "vla"
    args = [f"out={out}", "rounds=1", "steps_per_round=3", "num_envs=2", "updates_per_round=2", "batch=8", f"world_model={wm}"]
    args += ["dream_envs=2", "dream_group=2", "dream_iterations=2", "dream_horizon.reach=2", "dream_horizon.push=2", "dream_updates=1"]
    save = resume.save_dream

    def killed(out_, it, *a, **k):
        save(out_, it, *a, **k)
        raise KeyboardInterrupt  # the kill, right after iteration 0 was kept

    monkeypatch.setattr(resume, "save_dream", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["train-vla", *args])
    assert not (out / "final").exists() and (out / "resume" / "bc.json").exists()
    monkeypatch.setattr(resume, "save_dream", save)
    assert main(["train-vla", *args]) == 0
    log = (out / "train_log.txt").read_text()
    assert "behaviour cloning: taken from an earlier run" in log and "continuing after iteration 1/2" in log
    exp = json.loads((out / "experience.json").read_text())
    assert exp["real"]["bc_collection_steps"] == 3 * 2 * 2  # counted once, not collected again
    assert all(n >= 2 * 1 for n in exp["real"]["dream_start_steps"].values())  # both iterations' starts
    assert exp["dreamed"]["reach"] >= 2 * 2 and exp["dreamed"]["push"] >= 2 * 2
    assert main(["train-vla", *args]) == 0 and "nothing to do" in (out / "train_log.txt").read_text()
    with pytest.raises(Refused, match="holds a run with other settings .*dream_iterations: run 2, now 3"):
        main(["train-vla", *args, "dream_iterations=3"])


def test_the_dream_stage_checkpoint_restores_weights_optimiser_and_generators(tmp_path):
    import numpy as np

    from dreamgym.policies.vla_resume import ResumeError, load_dream, save_dream

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    rng, gen = np.random.default_rng(1), torch.Generator().manual_seed(2)
    (tmp_path / "resume").mkdir()
    save_dream(tmp_path, 4, net, opt, {"reach": {"dreamed_transitions": 7}}, {11, 12}, rng, gen)
    want_rng, want_gen = rng.random(), torch.rand(1, generator=gen)
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=5.0)
    rng2, gen2 = np.random.default_rng(9), torch.Generator().manual_seed(9)
    nxt, stats, rooms = load_dream(tmp_path, net2, opt2, rng2, gen2)
    assert nxt == 5 and stats == {"reach": {"dreamed_transitions": 7}} and rooms == {11, 12}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-3
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    assert rng2.random() == want_rng and torch.equal(torch.rand(1, generator=gen2), want_gen)
    (tmp_path / "resume" / "dream.safetensors").write_bytes(b"cut short")
    with pytest.raises(ResumeError, match="not the one dream.json describes"):
        load_dream(tmp_path, net2, opt2, rng2, gen2)


def test_group_advantages_credit_the_rewards_after_each_action():
    from dreamgym.policies.vla_dream import group_advantages

    # two groups of two worlds, three steps; world 1 ended after step 0 (zeros after)
    R = torch.tensor([[0.0, 1.0, 2.0, 2.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    ep = group_advantages(R, 2, "episode")
    # returns (2, 1) and (2, 2): the first group z-scored, the second all zero
    s = torch.tensor([2.0, 1.0]).std() + 1e-3
    assert torch.allclose(ep[:, 0], torch.full((3,), 0.5 / s)) and torch.allclose(ep[:, 1], -ep[:, 0])
    assert torch.allclose(ep[:, 2:], torch.zeros(3, 2))
    rtg = group_advantages(R, 2, "reward_to_go")
    # step 0: to-go 2 vs 1; step 1: 2 vs 0; step 2: 1 vs 0 -- each against the pair's mean, scaled by the return spread
    assert torch.allclose(rtg[:, 0], torch.tensor([0.5, 1.0, 0.5]) / s) and torch.allclose(rtg[:, 1], -rtg[:, 0])
    assert torch.allclose(rtg[:, 2:], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="not a whole number of groups"):
        group_advantages(R, 3)


def test_collector_continues_episodes_across_rounds():
    """DAgger rounds shorter than a push episode still record whole episodes: a round picks up
    the episodes where the previous one stopped instead of resetting the worlds."""
    import numpy as np

    from dreamgym.envs import EgoRoomVecEnv
    from dreamgym.policies.vla import OBS_KEYS
    from dreamgym.policies.vla_train import Buffer, Collector

    env = EgoRoomVecEnv(num_envs=2, task="push", resolution=16, seed=0, obs_keys=OBS_KEYS, return_tensors=True)
    buffer, rooms = Buffer(), set()
    col = Collector(env, "push", np.random.default_rng(0), rooms, grid=4)
    for _ in range(2):
        stats = col.run(None, 3, policy_fraction=0.5, noise=0.2, buffer=buffer)
        assert stats == {"episodes": 0, "successes": 0, "policy_episodes": 0, "policy_successes": 0}
    assert env.core.state.step.tolist() == [6, 6]
    assert len(rooms) == 2 and 0 < len(buffer) <= 12
    assert not col.use_policy.any()  # no policy given: every episode is the expert's
    env.close()
