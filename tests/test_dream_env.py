"""DreamEnv: the world model behind the real env's API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamgym.worldmodel.dream_env import DreamEnv, DreamVecEnv


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(resolution=16, data_resolution=32, frame_channels=[8, 16], occupancy_channels=[8, 16], dim=32, depth=1, heads=2)
    path = tmp_path_factory.mktemp("wm") / "tiny"
    WorldModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dream(tiny_checkpoint):
    return DreamVecEnv(tiny_checkpoint, num_envs=3, task="reach", seed=0, return_tensors=True)


def test_dream_env_passes_check_env(tiny_checkpoint):
    from gymnasium.utils.env_checker import check_env

    env = DreamEnv(tiny_checkpoint, task="reach", seed=1)
    check_env(env)


def test_same_spaces_and_dtypes_as_the_real_env(dream, vec_env_factory):
    real = vec_env_factory(num_envs=3, task="reach", resolution=32, obs_keys=list(dream.obs_keys), return_tensors=True)
    assert dream.single_observation_space == real.single_observation_space
    assert dream.single_action_space == real.single_action_space
    o_d, _ = dream.reset_tensors(seed=0)
    o_r, _ = real.reset_tensors(seed=0)
    for k in o_r:
        assert o_d[k].shape == o_r[k].shape and o_d[k].dtype == o_r[k].dtype, k
    o_d, r, term, trunc, info = dream.step_tensors(torch.zeros(3, 6))
    assert r.shape == (3,) and term.dtype == torch.bool and trunc.dtype == torch.bool
    assert set(info) >= {"success", "instruction_text", "room_seed", "partner_behaviour", "utterance"}


def test_frames_and_occupancy_are_generated_when_asked(tiny_checkpoint):
    env = DreamVecEnv(
        tiny_checkpoint, num_envs=2, task="push", seed=0, modalities=["motion", "partner_motion", "ego_rgb", "ego_depth", "occupancy"]
    )
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(np.zeros((2, 6), np.float32))
    assert obs["ego_rgb"].shape == (2, 3, 32, 32) and obs["ego_rgb"].dtype == np.uint8
    assert obs["occupancy"].shape == (2, 8, 32, 32) and obs["occupancy"].max() <= 4


def test_bad_actions_give_the_real_env_errors(dream):
    dream.reset_tensors(seed=0)
    with pytest.raises(ValueError, match=r"shape \(6,\), expected \(3, 6\)"):
        dream.step_tensors(torch.zeros(6))
    bad = torch.zeros(3, 6)
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(2, 0\)"):
        dream.step_tensors(bad)


def test_wrong_resolution_and_modalities_are_named(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"trained on 32x32 ego frames but the env asks for 64x64"):
        DreamVecEnv(tiny_checkpoint, num_envs=1, resolution=64)
    with pytest.raises(ValueError, match="reward_source"):
        DreamVecEnv(tiny_checkpoint, num_envs=1, reward_source="oracle")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DreamVecEnv("/nonexistent/checkpoint", num_envs=1)


def test_a_nan_world_is_terminated_and_the_others_go_on(dream, monkeypatch):
    dream.reset_tensors(seed=3)
    seeds_before = dream._seed.clone()
    real_imagine = dream.model.imagine

    def poisoned(*args, **kwargs):
        out = real_imagine(*args, **kwargs)
        out["motion"][1] = float("nan")
        return out

    monkeypatch.setattr(dream.model, "imagine", poisoned)
    obs, r, term, trunc, info = dream.step_tensors(torch.zeros(3, 6))
    assert term.tolist() == [False, True, False]
    assert info["_dream_error"].tolist() == [False, True, False]
    assert "non-finite" in info["dream_error"][1]
    assert torch.isfinite(obs["motion"]).all(), "the failed world restarts from a real context"
    assert dream._seed[1] != seeds_before[1] and dream._seed[0] == seeds_before[0]
    assert float(r[1]) == 0.0


def test_dream_episodes_truncate_at_the_horizon(tiny_checkpoint):
    env = DreamVecEnv(tiny_checkpoint, num_envs=2, task="reach", seed=0, horizon=3, return_tensors=True)
    env.reset_tensors()
    for t in range(3):
        _, _, term, trunc, info = env.step_tensors(torch.zeros(2, 6))
    assert bool((term | trunc).all())
    assert "final_obs" in info


def test_start_groups_share_a_start_and_then_follow_their_own_actions(tiny_checkpoint):
    env = DreamVecEnv(tiny_checkpoint, num_envs=4, task="reach", seed=0, start_group=2, return_tensors=True)
    obs, info = env.reset_tensors()
    assert torch.equal(obs["motion"][0], obs["motion"][1]) and torch.equal(obs["motion"][2], obs["motion"][3])
    assert not torch.equal(obs["motion"][0], obs["motion"][2])
    assert list(info["room_seed"][::2]) == list(info["room_seed"][1::2])
    act = torch.zeros(4, 6)
    act[1, 0] = act[3, 0] = 1.0  # the second world of each group walks, the first stands
    obs, *_ = env.step_tensors(act)
    assert not torch.equal(obs["motion"][0], obs["motion"][1])
    with pytest.raises(ValueError, match="start_group must be a positive divisor of num_envs=4"):
        DreamVecEnv(tiny_checkpoint, num_envs=4, task="reach", start_group=3)


def test_the_dreamed_partner_gets_its_scripted_commands(tmp_path, monkeypatch):
    """A model conditioned on the partner's commands gets, each dreamed step, what the partner's
    script commands for the dreamed bodies (as the simulator would compute it)."""
    from dreamgym.envs import partner as P
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(
        resolution=16,
        data_resolution=32,
        frame_channels=[8, 16],
        occupancy_channels=[8, 16],
        dim=32,
        depth=1,
        heads=2,
        context=2,
        state_prior=16,
        partner_actions=True,
    )
    WorldModel(cfg).save_pretrained(tmp_path / "wm")
    env = DreamVecEnv(tmp_path / "wm", num_envs=2, task="reach", seed=0, return_tensors=True)
    env.reset_tensors(seed=1)
    seen = []
    real = env.model.imagine

    def spy(*args, **kwargs):
        seen.append(kwargs.get("partner_actions"))
        return real(*args, **kwargs)

    monkeypatch.setattr(env.model, "imagine", spy)
    for _ in range(3):
        st = env._state
        want = P.partner_action(env._scripts, st.partner_pos, st.partner_yaw, st.agent_pos)
        env.step_tensors(torch.zeros(2, 6))
        got = seen[-1]
        assert got is not None and got.shape == (2, 2, 6)
        assert torch.allclose(got[:, -1], want)
    assert torch.allclose(seen[1][:, 0], seen[0][:, 1]), "the window of commands shifts like the actions'"


def test_infos_carry_the_dreamed_scene_objects(dream):
    _, info = dream.reset_tensors(seed=1)
    assert info["objects"].shape == (3, 4, 2)
    _, _, _, _, info = dream.step_tensors(torch.zeros(3, 6))
    assert np.allclose(info["objects"], dream._state.prop_pos[..., :2].cpu().numpy())


def test_the_default_dream_keeps_bodies_standing_under_random_commands():
    """The shipped model's dreamed bodies stay upright and bounded through 100 steps of random
    commands (a model whose errors compound sinks the pelvis or blows the joints up)."""
    env = DreamVecEnv(None, num_envs=16, task="reach", seed=0, return_tensors=True, obs_keys=["motion"])
    env.reset_tensors(seed=0)
    g = torch.Generator().manual_seed(0)
    heights, spread = [], []
    for _ in range(100):
        obs, *_ = env.step_tensors(torch.rand(16, 6, generator=g) * 2 - 1)
        m = obs["motion"]
        heights.append(m[:, 2].clone())
        spread.append(m[:, 7:73].abs().max(1).values)  # joints in the pelvis frame
    z, s = torch.stack(heights), torch.stack(spread)
    assert bool(torch.isfinite(z).all())
    assert float(z.min()) > 0.75 and float(z.max()) < 1.1, (float(z.min()), float(z.max()))
    assert float(s.max()) < 1.5  # no joint further than 1.5 m from the pelvis


def test_the_default_dreams_props_settling_after_a_reset(vec_env_factory):
    """Props placed at a reset settle onto the floor over the first steps (a few millimetres, the
    same way every time). The shipped model's props network dreams it: from the real first two
    steps its props are closer to the simulator's than holding them still is."""
    from dreamgym.worldmodel.model import load_default

    env = vec_env_factory(num_envs=4, task="reach", obs_keys=["motion", "partner_motion"], return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=[11, 12, 13, 14])
    idx = env.core.idx.prop_qpos

    def props():
        q = env.sim_state()["qpos"]
        return torch.stack([q[:, a : a + 3] for a in idx], 1).float()

    rec = {"motion": [obs["motion"]], "partner_motion": [obs["partner_motion"]], "props": [props()]}
    pacts = []
    for _ in range(5):
        obs, *_ = env.step_tensors(torch.zeros(4, 6))
        pacts.append(env.core.partner_action.clone())
        for k in ("motion", "partner_motion"):
            rec[k].append(obs[k])
        rec["props"].append(props())
    rec = {k: torch.stack(v, 1).float() for k, v in rec.items()}
    model = load_default()
    ctx = {k: v[:, :2] for k, v in rec.items()}
    out = model.rollout(
        ctx,
        torch.zeros(4, 4, 6),
        past_actions=torch.zeros(4, 1, 6),
        partner_actions=torch.stack(pacts, 1)[:, :5],
        modalities=["motion", "partner_motion", "props"],
    )
    real = rec["props"][:, 2:6]
    dream_err = (out["props"] - real).norm(dim=-1).mean()
    hold_err = (rec["props"][:, 1:2] - real).norm(dim=-1).mean()
    assert float(hold_err) > 1e-3  # the props do settle
    assert float(dream_err) < 0.5 * float(hold_err), (float(dream_err), float(hold_err))
