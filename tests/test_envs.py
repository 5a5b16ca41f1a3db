"""The ground-truth world: determinism, Gymnasium compliance, experts, occupancy, bad input,
backend agreement and auto-reset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import dreamgym.envs  # noqa: F401  (registers the ids)
from dreamgym.envs import scene
from dreamgym.envs.ego_room_env import EgoRoomEnv
from dreamgym.envs.occupancy import AGENT, FREE, MOVABLE, STATIC, GridSpec, OccupancyGrid

STATE_KEYS = ["motion", "partner_motion", "occupancy", "task_obs", "instruction"]


def _random_actions(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 6)).astype(np.float32)


def _rollout(env, seed: int, actions: np.ndarray) -> list[dict]:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        out.append(obs)
    return out


def test_same_seed_same_room_and_trajectory():
    a = EgoRoomEnv(task="push", resolution=32)
    b = EgoRoomEnv(task="push", resolution=32)
    acts = _random_actions(15, 0)
    ra, rb = _rollout(a, 7, acts), _rollout(b, 7, acts)
    for oa, ob in zip(ra, rb):
        for k in oa:
            np.testing.assert_array_equal(np.asarray(oa[k]), np.asarray(ob[k]), err_msg=k)
    other = _rollout(a, 8, acts[:1])
    assert not np.array_equal(other[0]["ego_rgb"], ra[0]["ego_rgb"]), "a different seed should give a different room"


def test_room_generation_is_a_pure_function_of_the_seed():
    r1, r2 = scene.generate_room(11), scene.generate_room(11)
    for f in ("half_extent", "furniture_pos", "furniture_size", "prop_pos", "prop_colour", "mat_pos", "agent_pos"):
        np.testing.assert_array_equal(getattr(r1, f), getattr(r2, f))
    assert len(set(r1.prop_colour.tolist())) == scene.N_PROPS


def test_check_env_passes():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("dreamgym/EgoRoom-v0", task="social", resolution=32).unwrapped
    check_env(env, skip_render_check=False)


def test_observation_layout_and_render():
    env = EgoRoomEnv(task="reach", resolution=(24, 40), render_mode="rgb_array", render_resolution=64)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert obs["ego_rgb"].shape == (3, 24, 40) and obs["ego_depth"].shape == (1, 24, 40)
    assert obs["occupancy"].shape == (8, 32, 32)
    assert obs["motion"].shape == (227,)
    assert info["instruction_text"].startswith("walk to the ")
    assert 0.5 < float(obs["ego_depth"].min()) and float(obs["ego_depth"].max()) <= 10.0
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.std() > 5
    # The motion's root is the pelvis at standing height; joint 15 (head) is above it.
    m = obs["motion"]
    assert abs(m[2] - 0.93) < 0.05
    joints = m[7:73].reshape(22, 3)
    assert joints[15, 2] > 0.5 and np.allclose(joints[0], 0, atol=1e-5)


def test_walking_moves_the_whole_body_and_head_camera():
    env = EgoRoomEnv(task="reach", resolution=32, obs_keys=["motion", "ego_rgb"])
    obs, _ = env.reset(seed=2)
    start = obs["motion"][:3].copy()
    knees, heights = [], []
    for _ in range(30):
        obs, *_ = env.step(np.array([0.8, 0, 0, 0, 0, 0], np.float32))
        j = obs["motion"][7:73].reshape(22, 3)
        knees.append(j[4, 0] - j[5, 0])  # left minus right knee, forward axis
        heights.append(obs["motion"][2])
    assert np.linalg.norm(obs["motion"][:2] - start[:2]) > 0.8, "walking forward should move the root"
    assert np.ptp(knees) > 0.15, "the legs should swing with the gait"
    assert np.ptp(heights) > 0.01, "the pelvis (and the head camera) should bob"


def test_reach_expert_succeeds_in_90_percent_of_20_rooms(vec_env_factory):
    env = vec_env_factory(num_envs=20, task="reach", obs_keys=STATE_KEYS, return_tensors=True)
    env.reset_tensors(seed=100)
    first_done = torch.zeros(20, dtype=torch.bool)
    first_success = torch.zeros(20, dtype=torch.bool)
    for _ in range(env.core.task.max_steps + 1):
        _, _, term, trunc, info = env.step_tensors(env.expert_actions())
        done = term | trunc
        new = done & ~first_done
        if "final_success" in info:
            first_success |= new & info["final_success"]
        first_done |= done
        if bool(first_done.all()):
            break
    assert bool(first_done.all())
    rate = first_success.float().mean().item()
    assert rate >= 0.9, f"reach expert success {rate:.2f} < 0.90"


def _push_world(mat_xy: list[tuple[float, float]], prop_xy=(1.5, 0.0)):
    """States of len(mat_xy) worlds: the agent at the origin facing +x, the target prop at
    ``prop_xy``, the mat at each of ``mat_xy``."""
    from dreamgym.envs.tasks import EpisodeParams, WorldState

    B = len(mat_xy)
    z = torch.zeros(B, 3)
    props = torch.zeros(B, scene.N_PROPS, 3)
    props[:, 0, :2] = torch.tensor(prop_xy)
    props[:, 1:, :2] = torch.tensor([[-3.0, -3.0], [-3.0, 3.0], [3.0, -3.0]])
    state = WorldState(
        agent_pos=z.clone(),
        agent_yaw=torch.zeros(B),
        agent_vel=z.clone(),
        agent_joints=torch.zeros(B, 22, 3),
        partner_pos=z.clone(),
        partner_yaw=torch.zeros(B),
        partner_vel=z.clone(),
        partner_joints=torch.zeros(B, 22, 3),
        partner_behaviour=torch.zeros(B, dtype=torch.long),
        prop_pos=props,
        mat_pos=torch.tensor(mat_xy),
        room_half=torch.full((B, 2), 4.0),
        step=torch.zeros(B, dtype=torch.long),
    )
    params = EpisodeParams(target=torch.zeros(B, dtype=torch.long), instruction=torch.zeros(B, dtype=torch.long), goal=torch.zeros(B, 2))
    return state, params


def test_push_expert_decides_only_from_what_a_straight_ahead_camera_sees():
    """The push expert is the VLA's teacher: its action must not depend on where an unseen mat is."""
    from dreamgym.envs.tasks import PushTask

    task = PushTask()
    # the mat out of view (behind, left, right of the agent): the same action, an orbit to the left
    unseen = task.expert(*_push_world([(-2.0, 0.0), (0.0, 2.5), (0.5, -2.5)]))
    assert torch.equal(unseen, unseen[:1].expand(3, -1))
    assert unseen[0, 1] == 1.0 and unseen[0, 4] > 0  # side-step left, head down
    # the mat seen behind the prop: left of it -> step right; right of it -> step left; in line -> push
    seen = task.expert(*_push_world([(3.5, 0.8), (3.5, -0.8), (3.5, 0.0)]))
    assert seen[0, 1] < 0 < seen[1, 1]
    assert seen[2, 0] == PushTask.PUSH_SPEED and seen[2, 1].abs() < 1e-6
    # the prop out of view: turn left in place whatever the mat does
    lost = task.expert(*_push_world([(3.5, 0.0), (-2.0, 0.0)], prop_xy=(-1.5, 0.5)))
    assert torch.equal(lost[0], lost[1]) and lost[0, 2] == 1.0 and lost[0, 0] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("task, floor", [("push", 0.3), ("social", 0.5), ("avoid", 0.5)])
def test_other_experts_beat_random(task, floor, vec_env_factory):
    env = vec_env_factory(num_envs=12, task=task, obs_keys=STATE_KEYS, return_tensors=True)
    rates = []
    for policy in ("expert", "random"):
        env.reset_tensors(seed=200)
        gen = torch.Generator().manual_seed(0)
        first_done = torch.zeros(12, dtype=torch.bool)
        succ = torch.zeros(12, dtype=torch.bool)
        for _ in range(env.core.task.max_steps + 1):
            a = env.expert_actions() if policy == "expert" else torch.rand(12, 6, generator=gen) * 2 - 1
            _, _, term, trunc, info = env.step_tensors(a)
            done = term | trunc
            if "final_success" in info:
                succ |= done & ~first_done & info["final_success"]
            first_done |= done
            if bool(first_done.all()):
                break
        rates.append(succ.float().mean().item())
    assert rates[0] >= floor and rates[0] > rates[1] + 0.25, f"{task}: expert {rates[0]:.2f}, random {rates[1]:.2f}"


# ---------------------------------------------------------------------------------- occupancy
def _expected_box_voxels(spec: GridSpec, centre, half) -> np.ndarray:
    """Voxels (Z, X, Y) whose cube overlaps an axis-aligned box, agent at the origin, yaw 0."""
    X, Y, Z = spec.size
    v = spec.voxel
    out = np.zeros((Z, X, Y), bool)
    lo_x = np.arange(X) * v - X * v / 2
    lo_y = np.arange(Y) * v - Y * v / 2
    lo_z = np.arange(Z) * v
    ox = (lo_x < centre[0] + half[0]) & (lo_x + v > centre[0] - half[0])
    oy = (lo_y < centre[1] + half[1]) & (lo_y + v > centre[1] - half[1])
    oz = (lo_z < centre[2] + half[2]) & (lo_z + v > centre[2] - half[2])
    out[np.ix_(oz, ox, oy)] = True
    return out


@pytest.mark.parametrize("yaw", [0.0, np.pi / 2])
def test_occupancy_of_a_box_at_a_known_position(yaw):
    spec = GridSpec()
    grid = OccupancyGrid(spec)
    centre_agent = np.array([1.35, -0.6, 0.35])  # in the agent's heading frame; no face on a voxel boundary
    half = np.array([0.3, 0.2, 0.3])
    c, s = np.cos(yaw), np.sin(yaw)
    agent = np.array([0.5, 0.25, 0.0])
    world = agent + np.array([c * centre_agent[0] - s * centre_agent[1], s * centre_agent[0] + c * centre_agent[1], centre_agent[2]])
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])  # the box turns with the agent: aligned in its frame
    far = torch.full((1, 22, 3), -100.0)
    occ = grid(
        torch.tensor([agent], dtype=torch.float32),
        torch.tensor([yaw], dtype=torch.float32),
        torch.tensor([[world]], dtype=torch.float32),
        torch.tensor([[rot]], dtype=torch.float32),
        torch.tensor([[half]], dtype=torch.float32),
        torch.tensor([False]),
        torch.tensor([MOVABLE]),
        far,
        far,
    )[0].numpy()
    want = _expected_box_voxels(spec, centre_agent, half)
    assert want.sum() == 3 * 3 * 3  # x 1.0-1.75, y -1.0 to -0.25, z 0-0.75
    np.testing.assert_array_equal(occ == MOVABLE, want)
    assert set(np.unique(occ)) == {FREE, MOVABLE}


def test_occupancy_in_the_env_sees_a_prop_walls_and_the_agent():
    env = EgoRoomEnv(task="reach", resolution=16, obs_keys=["occupancy", "motion"])
    obs, _ = env.reset(seed=5)
    # Move prop 0 (a box) to 1 m straight ahead of the agent.
    yaw = env.core.state.agent_yaw.item()
    pos = env.core.state.agent_pos[0].numpy()
    a = env.core.idx.prop_qpos[0]
    env.data.qpos[a : a + 3] = (pos[0] + 1.1 * np.cos(yaw), pos[1] + 1.1 * np.sin(yaw), scene.PROP_BOX_HALF)
    env.data.qpos[a + 3 : a + 7] = (np.cos(yaw / 2), 0, 0, np.sin(yaw / 2))
    import mujoco

    mujoco.mj_forward(env.model, env.data)
    occ = env._observe()["occupancy"]
    X = 32
    # Ahead 1.1 m, half 0.2 m: x in [0.9, 1.3] -> voxels 19..21 (0.75..1.5); y in [-0.2, 0.2] -> 15, 16.
    ahead = occ[0:2, 19:22, 15:17]
    assert (ahead == MOVABLE).all(), ahead
    assert (occ == STATIC).sum() > 100, "walls must appear"
    assert (occ[:, X // 2 - 1 : X // 2 + 1, X // 2 - 1 : X // 2 + 1] == AGENT).any(), "the agent is at the grid centre"


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "action, message",
    [
        (np.zeros(3, np.float32), r"shape \(3,\), expected \(6,\)"),
        (np.zeros((1, 6), np.float32), r"shape \(1, 6\), expected \(6,\)"),
        (np.array([0, 0, np.nan, 0, 0, 0], np.float32), r"non-finite value nan at index \(2,\)"),
        (np.array([0, np.inf, 0, 0, 0, 0], np.float32), r"non-finite value inf at index \(1,\)"),
    ],
)
def test_bad_actions_raise_clear_errors(action, message):
    env = EgoRoomEnv(task="reach", resolution=16, obs_keys=["motion"])
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_out_of_range_actions_are_clipped():
    acts = [np.array([5.0, -3.0, 2.0, 9.0, -9.0, 4.0], np.float32), np.array([1, -1, 1, 1, -1, 1], np.float32)]
    results = []
    for a in acts:
        env = EgoRoomEnv(task="reach", resolution=16, obs_keys=["motion"])
        env.reset(seed=0)
        for _ in range(3):
            obs, *_ = env.step(a)
        results.append(obs["motion"])
    np.testing.assert_array_equal(results[0], results[1])


def test_unknown_options_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown task 'fly'; valid tasks: \['avoid', 'push', 'reach', 'social'\]"):
        EgoRoomEnv(task="fly")
    with pytest.raises(ValueError, match=r"unknown observation keys \['rgb'\]; valid keys"):
        EgoRoomEnv(obs_keys=["rgb"])
    with pytest.raises(ValueError, match="resolution"):
        EgoRoomEnv(resolution=2)
    with pytest.raises(ValueError, match="render_mode"):
        EgoRoomEnv(render_mode="human")


def test_vec_env_bad_actions(vec_env_factory):
    env = vec_env_factory(num_envs=3, task="reach", obs_keys=STATE_KEYS, return_tensors=True)
    env.reset_tensors(seed=0)
    with pytest.raises(ValueError, match=r"shape \(6,\), expected \(3, 6\)"):
        env.step_tensors(torch.zeros(6))
    bad = torch.zeros(3, 6)
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(1, 4\)"):
        env.step_tensors(bad)


# ---------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_backends_agree_on_motion_and_images(vec_env_factory, device):
    """Same seed, same actions: C MuJoCo and MuJoCo Warp (on ``device``) give the same motion
    stream (within 1 mm) and similar ego images (different renderers: rasteriser vs ray tracer)."""
    ref = EgoRoomEnv(task="social", resolution=64)
    on_device = {} if device == "cpu" else {"device": device}  # the CPU env is the cached default one
    vec = vec_env_factory(num_envs=1, task="social", resolution=64, return_tensors=False, **on_device)
    o_ref, _ = ref.reset(seed=21)
    o_vec, _ = vec.reset(seed=21)
    worst_motion, img_err, depth_err = 0.0, [], []
    for t in range(40):
        a = ref.expert_action()
        o_ref, _, term, trunc, _ = ref.step(a)
        o_vec, *_ = vec.step(a[None])
        assert not (term or trunc)
        for key in ("motion", "partner_motion"):
            worst_motion = max(worst_motion, float(np.abs(o_ref[key][:73] - o_vec[key][0][:73]).max()))
        img_err.append(np.abs(o_ref["ego_rgb"].astype(float) - o_vec["ego_rgb"][0]).mean() / 255)
        depth_err.append(np.median(np.abs(o_ref["ego_depth"] - o_vec["ego_depth"][0])))
    assert worst_motion < 1e-3, f"motion streams differ by {worst_motion:.2e} m"
    assert np.mean(img_err) < 0.12, f"mean absolute RGB difference {np.mean(img_err):.3f}"
    assert np.mean(depth_err) < 0.05, f"median depth difference {np.mean(depth_err):.3f} m"
    assert (o_ref["occupancy"] == o_vec["occupancy"][0]).mean() > 0.99


def test_vec_env_worlds_are_different_rooms(vec_env_factory):
    env = vec_env_factory(num_envs=4, task="reach", resolution=32)
    obs, info = env.reset(seed=3)
    assert list(info["room_seed"]) == [3, 4, 5, 6]
    imgs = obs["ego_rgb"].reshape(4, -1).astype(float)
    assert all(np.abs(imgs[i] - imgs[j]).mean() > 1.0 for i in range(4) for j in range(i + 1, 4))
    # Per-world model fields: the walls of world 0 and world 1 are where their rooms say.
    sizes = env._fields["geom_size"]
    w0 = env.core.idx.wall_geoms[0]
    assert abs(float(sizes[0, w0, 1]) - (scene.generate_room(3).half_extent[1] + 2 * scene.WALL_THICK)) < 1e-5
    assert abs(float(sizes[1, w0, 1]) - (scene.generate_room(4).half_extent[1] + 2 * scene.WALL_THICK)) < 1e-5


def test_a_state_only_vec_env_skips_the_grid_and_steps_the_same(vec_env_factory):
    keys = ["motion", "partner_motion", "task_obs"]
    lean = vec_env_factory(num_envs=2, task="avoid", obs_keys=keys, return_tensors=True)
    full = vec_env_factory(num_envs=2, task="avoid", obs_keys=[*keys, "occupancy"], return_tensors=True)
    assert not lean.core.observe_occupancy and full.core.observe_occupancy
    a, b = lean.reset_tensors(seed=5)[0], full.reset_tensors(seed=5)[0]
    for act in _random_actions(6, seed=2):
        a, ra, *_ = lean.step_tensors(torch.as_tensor(act).repeat(2, 1))
        b, rb, *_ = full.step_tensors(torch.as_tensor(act).repeat(2, 1))
        assert torch.equal(ra, rb) and all(torch.equal(a[k], b[k]) for k in keys)


def test_vec_env_auto_resets_each_world(vec_env_factory):
    env = vec_env_factory(num_envs=2, task="reach", obs_keys=STATE_KEYS, return_tensors=False)
    obs, info = env.reset(seed=40)
    seeds0 = info["room_seed"].copy()
    env.core.task.max_steps = 6  # force truncation quickly
    try:
        # World 0 idles (truncates at step 6); world 1 too; both reset in the same step.
        for t in range(1, 7):
            obs, r, term, trunc, info = env.step(np.zeros((2, 6), np.float32))
        assert trunc.all() and not term.any()
        assert info["_final_obs"].all()
        assert np.allclose(info["final_obs"]["task_obs"][:, 6], 1.0), "final obs is the last step of the old episode"
        assert np.allclose(obs["task_obs"][:, 6], 0.0), "returned obs starts the new episode"
        assert (info["room_seed"] != seeds0).all(), "a new episode gets a new room"
        assert (info["final_info"]["room_seed"] == seeds0).all(), "the ended episode's infos are kept"
        assert set(info["final_info"]) == {"instruction_text", "room_seed", "partner_behaviour", "utterance", "objects"}
        obs2, *_ = env.step(np.zeros((2, 6), np.float32))
        assert np.allclose(obs2["task_obs"][:, 6], 1 / 6)
    finally:
        env.core.task.max_steps = type(env.core.task).max_steps


def test_vec_env_gymnasium_and_sb3_apis(vec_env_factory):
    from stable_baselines3 import PPO

    from dreamgym.envs.sb3 import SB3VecEnv

    env = vec_env_factory(num_envs=2, task="reach", obs_keys=["motion", "task_obs"], return_tensors=False)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    sb3 = SB3VecEnv(env)
    model = PPO("MultiInputPolicy", sb3, n_steps=8, batch_size=8, n_epochs=1, device="cpu", seed=0)
    model.learn(total_timesteps=16)
    act, _ = model.predict(sb3.reset(), deterministic=True)
    assert act.shape == (2, 6)


def test_partner_commands_replay_exactly_from_the_room_script(vec_env_factory):
    """A recording's partner commands follow from its room seed, task and motions alone."""
    from dreamgym.envs import partner as P

    env = vec_env_factory(num_envs=2, task="push", resolution=16, seed=0, obs_keys=["motion", "partner_motion"], return_tensors=True)
    seeds = [5, 6]
    obs, _ = env.reset_tensors(room_seeds=seeds)
    am, pm, sim = [], [], []
    for _ in range(60):
        am.append(obs["motion"].clone())
        pm.append(obs["partner_motion"].clone())
        obs, *_ = env.step_tensors(torch.zeros(2, 6))
        sim.append(env.core.partner_action.clone())
    sim_a = torch.stack(sim, 1)
    for i, seed in enumerate(seeds):
        rec = P.replay_actions(P.room_script("push", seed), np.arange(60), torch.stack(am, 1)[i], torch.stack(pm, 1)[i])
        assert torch.allclose(rec, sim_a[i], atol=1e-5)
    assert float(sim_a.abs().sum()) > 0, "the partner did something"


def test_script_position_matches_stepwise_advance():
    from dreamgym.envs import partner as P

    packed = P.pack_scripts([[P.script_entry(P.IDLE, 3), P.script_entry(P.WAVE, 2), P.script_entry(P.WALK_TO, 4, (1.0, 2.0))]])
    s = P.PartnerScripts.empty(1, "cpu")
    s.load(torch.tensor([0]), packed)
    for t in range(30):
        at = P.scripts_at(packed, [t])
        assert int(at.cursor[0]) == int(s.cursor[0]) and int(at.timer[0]) == int(s.timer[0]), t
        s.advance()
    with pytest.raises(ValueError, match="steps must be >= 0"):
        P.scripts_at(packed, [-1])
