"""DreamEnv: the world model behind the real env's API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamgym.worldmodel.dream_env import DreamEnv, DreamVecEnv

torch.set_num_threads(1)  # the machine is shared: one thread avoids oversubscription stalls


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


@pytest.mark.parametrize("frames", [["ego_rgb"], ["ego_depth"]])
def test_one_frame_key_generates_every_frame_channel_and_returns_only_it(tiny_checkpoint, frames):
    # the pixel policy's input: the frame branch makes rgb and depth together, so asking for one
    # must dream both (it crashed with "context is missing ['ego_depth']") and return the one asked for
    keys = [*frames, "motion", "instruction"]
    env = DreamVecEnv(tiny_checkpoint, num_envs=2, task="reach", seed=0, modalities=["motion", "partner_motion", *frames], obs_keys=keys)
    assert {"ego_rgb", "ego_depth"} <= set(env.gen_keys)
    assert set(env.single_observation_space.spaces) == set(keys)
    obs, _ = env.reset_tensors(seed=0)
    for _ in range(2):
        obs, r, term, trunc, _ = env.step_tensors(torch.zeros(2, 6))
    assert set(obs) == set(keys) and r.shape == (2,)
    other = ({"ego_rgb", "ego_depth"} - set(frames)).pop()
    assert other not in obs
    if "ego_rgb" in frames:
        assert obs["ego_rgb"].shape == (2, 3, 32, 32) and obs["ego_rgb"].dtype == torch.uint8
    else:
        assert obs["ego_depth"].shape == (2, 1, 32, 32) and obs["ego_depth"].dtype == torch.float32


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
    seeds_before = dream._seed_host.copy()
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
    assert dream._seed_host[1] != seeds_before[1] and dream._seed_host[0] == seeds_before[0]
    assert float(r[1]) == 0.0


def test_dream_episodes_truncate_at_the_horizon(tiny_checkpoint):
    env = DreamVecEnv(tiny_checkpoint, num_envs=2, task="reach", seed=0, horizon=3, return_tensors=True)
    env.reset_tensors()
    for t in range(3):
        _, _, term, trunc, info = env.step_tensors(torch.zeros(2, 6))
    assert bool((term | trunc).all())
    assert "final_obs" in info


def test_an_ended_episode_reports_its_own_infos(tiny_checkpoint):
    env = DreamVecEnv(tiny_checkpoint, num_envs=2, task="reach", seed=0, horizon=2, return_tensors=True)
    _, first = env.reset_tensors()
    _, _, _, _, mid = env.step_tensors(torch.zeros(2, 6))
    _, _, _, trunc, info = env.step_tensors(torch.zeros(2, 6))
    assert bool(trunc.all()) and list(info["final_info"]["room_seed"]) == list(first["room_seed"])
    assert list(info["room_seed"]) != list(first["room_seed"]), "the restarted worlds report their new episode"
    assert np.asarray(info["final_info"]["objects"]).shape == np.asarray(mid["objects"]).shape
    one = DreamEnv(tiny_checkpoint, task="reach", seed=1, horizon=2)
    _, i0 = one.reset()
    one.step(np.zeros(6, np.float32))
    *_, truncated, last = one.step(np.zeros(6, np.float32))
    assert truncated and last["room_seed"] == i0["room_seed"], "a gymnasium.Env's last info belongs to its episode"


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
    steps its props are closer to the simulator's than holding them still is (2.1 vs 2.7 mm; the
    props rollout stage, which weighs errors in 2 cm units, traded some of this millimetre detail,
    0.6 mm before it, for 16-step pushes)."""
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
    assert float(dream_err) < 0.9 * float(hold_err), (float(dream_err), float(hold_err))


# ----------------------------------------------------------------------------- the same spaces by default
def test_default_spaces_are_the_real_envs_and_both_pass_check_env():
    """With default arguments a policy sees the same spaces in the simulator and in the dream."""
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from dreamgym.envs.spaces import OBS_KEYS
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    real, dream = gym.make("dreamgym/EgoRoom-v0"), gym.make("dreamgym/Dream-v0")
    assert dream.observation_space == real.observation_space
    assert dream.action_space == real.action_space
    assert tuple(real.observation_space.spaces) == tuple(sorted(OBS_KEYS))
    assert real.observation_space["ego_rgb"].shape == (3, 32, 32)
    check_env(dream.unwrapped)
    vreal, vdream = EgoRoomVecEnv(), DreamVecEnv()
    assert vdream.num_envs == vreal.num_envs
    assert vdream.single_observation_space == vreal.single_observation_space == real.observation_space
    assert vdream.observation_space == vreal.observation_space and vdream.action_space == vreal.action_space
    for env in (real, dream, vreal, vdream):
        env.close()


def test_a_policy_trained_in_one_env_runs_unchanged_in_the_other():
    """SB3 PPO on ``task_obs`` for a few hundred steps in one env, then SB3's own evaluate_policy in
    the other, both ways: the same policy object, no wrapper or conversion between the envs."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    envs = {
        env_id: Monitor(gym.make(env_id, task="reach", obs_keys=["task_obs"], max_episode_steps=25))
        for env_id in ("dreamgym/EgoRoom-v0", "dreamgym/Dream-v0")
    }
    for train_in, evaluate_in in (("dreamgym/EgoRoom-v0", "dreamgym/Dream-v0"), ("dreamgym/Dream-v0", "dreamgym/EgoRoom-v0")):
        model = PPO("MultiInputPolicy", envs[train_in], n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
        model.learn(256)
        assert model.num_timesteps == 256
        target = envs[evaluate_in]
        assert model.observation_space == target.observation_space and model.action_space == target.action_space
        returns, lengths = evaluate_policy(model, target, n_eval_episodes=2, return_episode_rewards=True)
        assert len(returns) == len(lengths) == 2, (train_in, evaluate_in)
        assert all(1 <= n <= 25 for n in lengths) and all(np.isfinite(returns))
    for env in envs.values():
        env.close()


# ----------------------------------------------------------------------------- the world-model keyword
def test_gym_make_takes_the_world_model_keyword(tiny_checkpoint):
    import gymnasium as gym

    env = gym.make("dreamgym/Dream-v0", world_model=tiny_checkpoint, obs_keys=["motion", "task_obs"])
    assert env.unwrapped.vec.model.config.dim == 32  # the tiny model, not the shipped default
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    old = gym.make("dreamgym/Dream-v0", checkpoint=tiny_checkpoint, obs_keys=["motion", "task_obs"])
    assert old.unwrapped.vec.model.config.dim == 32
    with pytest.raises(ValueError, match=r"given twice; pass only world_model="):
        DreamEnv(tiny_checkpoint, checkpoint=tiny_checkpoint)
    with pytest.raises(TypeError, match=r"DreamEnv takes no num_envs: .*DreamVecEnv\(num_envs=\.\.\.\)"):
        gym.make("dreamgym/Dream-v0", world_model=tiny_checkpoint, num_envs=4)
    with pytest.raises(TypeError, match=r"unknown arguments \['wm'\]; it takes world_model, task and"):
        gym.make("dreamgym/Dream-v0", wm=tiny_checkpoint)
    with pytest.raises(TypeError, match="world_model must be a checkpoint directory, a world model or None, got int"):
        DreamVecEnv(42, num_envs=1)


# ----------------------------------------------------------------------------- the world-model protocol
def test_any_model_meeting_the_protocol_is_stepped(tiny_checkpoint):
    """The dream env types its model against ``DreamModel``: a model that is no ``WorldModel`` is
    stepped the same way."""
    from dreamgym.worldmodel.model import WorldModel
    from dreamgym.worldmodel.protocol import DreamModel

    inner = WorldModel.from_pretrained(tiny_checkpoint)

    class Delegate:  # meets DreamModel by delegation; not a torch module, not a WorldModel
        config = inner.config

        def to(self, device):
            inner.to(device)
            return self

        def eval(self):
            inner.eval()
            return self

        def output_keys(self):
            return inner.output_keys()

        def scene_memory(self, context):
            return inner.scene_memory(context)

        def imagine(self, context, actions, **kw):
            self.calls = getattr(self, "calls", 0) + 1
            return inner.imagine(context, actions, **kw)

    model = Delegate()
    assert isinstance(model, DreamModel) and isinstance(inner, DreamModel)
    env = DreamVecEnv(model, num_envs=2, task="reach", obs_keys=["motion", "task_obs"], seed=0, return_tensors=True)
    assert env.model is model
    env.reset_tensors(seed=0)
    _, r, *_ = env.step_tensors(torch.zeros(2, 6))
    assert model.calls == 1 and torch.isfinite(r).all()


# ----------------------------------------------------------------------------- starts
def test_simulator_starts_count_their_real_steps(tiny_checkpoint):
    env = DreamVecEnv(tiny_checkpoint, num_envs=3, task="reach", obs_keys=["motion", "task_obs"], horizon=2, seed=0, return_tensors=True)
    K = env.K
    assert env.real_steps == 0 and env.starts_info["kind"] == "simulator"
    first, _ = env.reset_tensors(seed=5)
    assert env.real_steps == 3 * (K - 1)
    again, _ = env.reset_tensors(seed=5)  # the same seed's starts again: no new simulator run
    assert env.real_steps == 3 * (K - 1)
    assert torch.equal(first["motion"], again["motion"])
    env.reset_tensors(seed=6)
    assert env.real_steps == 6 * (K - 1)
    for _ in range(2):  # every world ends at the horizon and restarts from a new batch
        env.step_tensors(torch.zeros(3, 6))
    assert env.real_steps == 9 * (K - 1)
    assert env.starts_info["real_steps"] == env.real_steps


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A small reach dataset at the tiny model's resolution, with rooms on both sides of the split."""
    from dreamgym.rollouts.collect import collect
    from dreamgym.rollouts.dataset import Manifest

    out = tmp_path_factory.mktemp("starts") / "reach"
    collect(out, task="reach", steps=8 * 20, num_envs=8, resolution=32, seed=3, round_steps=20, heldout_fraction=0.5, progress=False)
    splits = {e["split"] for _, e in Manifest.load(out).episodes()}
    assert splits == {"train", "heldout"}
    return out


def _recorded_steps(root, room_seed: int) -> dict[str, np.ndarray]:
    from dreamgym.rollouts.dataset import Manifest, read_episode

    for shard, e in Manifest.load(root).episodes():
        if e["room_seed"] == room_seed:
            return read_episode(root / shard["file"], e["group"], ["motion", "task_obs"]).observations
    raise AssertionError(f"room {room_seed} is not in {root}")


def test_dataset_starts_are_recorded_windows_and_cost_no_real_steps(tiny_checkpoint, recorded):
    from dreamgym.rollouts.dataset import Manifest

    heldout = {e["room_seed"] for _, e in Manifest.load(recorded).episodes() if e["split"] == "heldout"}
    env = DreamVecEnv(
        tiny_checkpoint, num_envs=4, task="reach", horizon=2, seed=0, starts=f"dataset:{recorded}:heldout", return_tensors=True
    )
    info = env.starts_info
    assert info["kind"] == "dataset" and info["path"] == str(recorded) and info["split"] == "heldout" and info["windows"] > 0
    obs, infos = env.reset_tensors(seed=1)
    assert set(infos["room_seed"].tolist()) <= heldout
    for w, seed in enumerate(infos["room_seed"].tolist()):
        rec = _recorded_steps(recorded, seed)
        t = int(env._steps[w])  # the start's last real step in its episode
        np.testing.assert_array_equal(obs["motion"][w].numpy(), rec["motion"][t])
        # task_obs is computed from the start's bookkeeping (target, goal, step): it must be the recorded one
        np.testing.assert_allclose(obs["task_obs"][w].numpy(), rec["task_obs"][t], atol=1e-4)
    for _ in range(4):  # episodes end at the horizon and restart from further recorded windows
        obs, r, *_ = env.step_tensors(torch.zeros(4, 6))
        assert torch.isfinite(r).all()
    assert env.real_steps == 0 and set(env._seed_host.tolist()) <= heldout
    env.close()


def test_a_start_source_can_be_passed_and_bad_starts_are_named(tiny_checkpoint, recorded):
    from dreamgym.rollouts.dataset import Manifest
    from dreamgym.worldmodel.starts import DatasetStarts

    train = {e["room_seed"] for _, e in Manifest.load(recorded).episodes() if e["split"] == "train"}
    env = DreamVecEnv(tiny_checkpoint, num_envs=2, task="reach", obs_keys=["motion"], starts=DatasetStarts(recorded), return_tensors=True)
    _, infos = env.reset_tensors(seed=0)
    assert set(infos["room_seed"].tolist()) <= train and env.starts_info["split"] == "train"
    kw = dict(num_envs=1, obs_keys=["motion"])
    with pytest.raises(ValueError, match=r"records task \['reach'\], but the dream env runs 'push'"):
        DreamVecEnv(tiny_checkpoint, task="push", starts=f"dataset:{recorded}", **kw)
    with pytest.raises(ValueError, match="starts must be 'simulator', 'dataset:<dir>' or 'dataset:<dir>:<split>'"):
        DreamVecEnv(tiny_checkpoint, starts="replay", **kw)
    with pytest.raises(ValueError, match="context_policy and starts_pool configure simulator starts"):
        DreamVecEnv(tiny_checkpoint, starts=f"dataset:{recorded}", context_policy="expert", **kw)
    with pytest.raises(ValueError, match="split must be one of"):
        DatasetStarts(recorded, split="test")
    with pytest.raises(FileNotFoundError, match="is not a dreamgym dataset"):
        DreamVecEnv(tiny_checkpoint, starts="dataset:/nonexistent/data", **kw)
    with pytest.raises(ValueError, match="unknown context policy 'oracle'"):
        DreamVecEnv(tiny_checkpoint, context_policy="oracle", **kw)


def test_cuda_is_refused_in_one_line_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda") as e:
        DreamVecEnv(num_envs=1, task="reach", device="cuda", obs_keys=["task_obs"])
    assert "\n" not in str(e.value)
