"""A world model and a dream env for any Gymnasium env with vector observations.

``collect env=<id>`` -> ``train-wm`` (the vector world model, chosen from the dataset's spaces,
trained by the one trainer) -> ``gym.make("dreamgym/Dream-v0", source_env=<id>, checkpoint=...)``.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import dreamgym.envs  # noqa: F401  (registers dreamgym/Dream-v0)
from dreamgym.app.cli import Refused, main
from dreamgym.worldmodel.load import checkpoint_kind, load_world_model
from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT, WorldModel
from dreamgym.worldmodel.vector import VectorWorldModel
from dreamgym.worldmodel.vector_dream import VectorDreamVecEnv

QUIET = ["progress=false", "num_threads=1"]


def _collect(out, env, steps, *more):
    assert main(["collect", f"env={env}", f"steps={steps}", "num_envs=4", f"out={out}", "progress=false", *more]) == 0


def _train(data, out, steps, *more):
    assert main(["train-wm", f"data={data}", f"out={out}", f"steps={steps}", "eval_every=100", "ckpt_every=100", *QUIET, *more]) == 0
    return out / "final"


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    root = tmp_path_factory.mktemp("pendulum")
    _collect(root / "data", "Pendulum-v1", 4000)
    return root, _train(root / "data", root / "run", 500)


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    root = tmp_path_factory.mktemp("cartpole")
    _collect(root / "data", "CartPole-v1", 4000)
    return root, _train(root / "data", root / "run", 400)


def test_train_wm_builds_the_vector_model_from_the_datasets_spaces_and_beats_both_baselines(pendulum):
    root, final = pendulum
    assert checkpoint_kind(final) == "vector"
    model = load_world_model(final)
    assert isinstance(model, VectorWorldModel) and model.config.env_id == "Pendulum-v1"
    assert model.config.observation_space["shape"] == [3] and model.config.max_episode_steps == 200
    last = [json.loads(x) for x in (root / "run" / "heldout.jsonl").read_text().splitlines()][-1]
    # one-step error on held-out episodes, in units of each number's spread
    assert last["obs_rmse/model"] < 0.5 * last["obs_rmse/constant_velocity"] < last["obs_rmse/copy_last"]
    assert last["reward_mae"] < 0.3  # Pendulum's rewards span about 0..-16
    record = json.loads((root / "run" / "run.json").read_text())
    assert record["model"]["env_id"] == "Pendulum-v1" and record["training"]["batch_size"] == 256


def test_a_vector_checkpoint_round_trips_and_the_rooms_loader_refuses_it_by_name(pendulum, tmp_path):
    _, final = pendulum
    model = VectorWorldModel.from_pretrained(final)
    model.save_pretrained(tmp_path / "copy")
    again = VectorWorldModel.from_pretrained(tmp_path / "copy")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="vector world model of the Gymnasium env Pendulum-v1"):
        WorldModel.from_pretrained(final)


def test_train_wm_resumes_a_stopped_vector_run_to_the_same_weights(pendulum, tmp_path):
    root, final = pendulum
    data = root / "data"
    _train(data, tmp_path / "whole", 200)
    assert main(["train-wm", f"data={data}", f"out={tmp_path / 'cut'}", "steps=200", "ckpt_every=100", "stop_after=100", *QUIET]) == 0
    assert not (tmp_path / "cut" / "final").exists()
    _train(data, tmp_path / "cut", 200)
    a = VectorWorldModel.from_pretrained(tmp_path / "whole" / "final").state_dict()
    b = VectorWorldModel.from_pretrained(tmp_path / "cut" / "final").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_dream_has_the_source_envs_spaces_and_passes_check_env(pendulum):
    _, final = pendulum
    env = gym.make("dreamgym/Dream-v0", source_env="Pendulum-v1", checkpoint=str(final))
    real = gym.make("Pendulum-v1")
    assert env.observation_space == real.observation_space and env.action_space == real.action_space
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)


def test_a_dream_from_the_real_context_follows_the_simulator(pendulum):
    """Dreamed from the same real start under the same actions, Pendulum's dream stays near the real one."""
    _, final = pendulum
    model = VectorWorldModel.from_pretrained(final)
    real = gym.make("Pendulum-v1")
    errs, copy_errs = [], []
    rng = np.random.default_rng(0)
    for ep in range(16):
        obs, _ = real.reset(seed=100 + ep)
        a0 = rng.uniform(-2, 2, size=(1,)).astype(np.float32)
        obs1, *_ = real.step(a0)
        ctx = torch.tensor(np.stack([obs, obs1]))[None]
        acts = torch.zeros(1, 2, 1)
        acts[0, 0] = torch.tensor(a0)
        dreamed, truth = obs1, obs1
        for t in range(10):
            a = rng.uniform(-2, 2, size=(1,)).astype(np.float32)
            acts[0, 1] = torch.tensor(a)
            out = model.imagine({"obs": ctx}, acts, generator=torch.Generator().manual_seed(ep * 100 + t))
            truth, *_ = real.step(a)
            dreamed = out["obs"][0]
            ctx = torch.cat([ctx[:, 1:], out["obs"][:, None]], 1)
            acts = torch.cat([acts[:, 1:], torch.zeros(1, 1, 1)], 1)
        errs.append(float(np.abs(dreamed.numpy() - truth).mean()))
        copy_errs.append(float(np.abs(obs1 - truth).mean()))
    # after 10 dreamed steps the dream is closer to the simulator than the start is
    assert np.mean(errs) < 0.5 * np.mean(copy_errs)


def test_discrete_actions_and_a_learned_termination(cartpole):
    """CartPole: Discrete actions are one-hot inputs; its dreamed episodes end by the termination head."""
    _, final = cartpole
    vec = gym.make_vec("dreamgym/Dream-v0", num_envs=16, source_env="CartPole-v1", checkpoint=str(final))
    assert isinstance(vec, VectorDreamVecEnv) and vec.single_action_space == spaces.Discrete(2)
    vec.reset(seed=0)
    ended, lengths, t = np.zeros(16, bool), [], np.zeros(16, int)
    for _ in range(200):
        _, r, term, trunc, infos = vec.step(vec.action_space.sample())
        t += 1
        lengths += list(t[term])
        t[term | trunc] = 0
        ended |= term
        assert np.all(r > 0.5)  # CartPole pays 1 a step
    assert ended.mean() > 0.5 and 5 < np.mean(lengths) < 100  # random play falls within a few dozen steps
    assert vec.real_steps >= 16  # every start is K - 1 real steps of the source env
    check_env(gym.make("dreamgym/Dream-v0", source_env="CartPole-v1", checkpoint=str(final)).unwrapped, skip_render_check=True)


def test_dataset_starts_cost_no_real_step(pendulum):
    root, final = pendulum
    vec = VectorDreamVecEnv(checkpoint=str(final), num_envs=4, starts=f"dataset:{root / 'data'}:heldout")
    obs, _ = vec.reset(seed=0)
    for _ in range(5):
        obs, *_ = vec.step(np.zeros((4, 1), np.float32))
    assert obs.shape == (4, 3) and vec.real_steps == 0


def test_bad_input_is_refused_in_one_line(pendulum, cartpole, tmp_path):
    _, final = pendulum
    with pytest.raises(ValueError, match="trained on 'Pendulum-v1'"):
        gym.make("dreamgym/Dream-v0", source_env="CartPole-v1", checkpoint=str(final))
    with pytest.raises(ValueError, match="room's world model"):
        VectorDreamVecEnv(checkpoint=str(DEFAULT_CHECKPOINT), num_envs=1)
    env = gym.make("dreamgym/Dream-v0", source_env="Pendulum-v1", checkpoint=str(final)).unwrapped
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(1, np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step(np.array([np.nan], np.float32))
    _, cfinal = cartpole
    with pytest.raises(Refused, match="init=.* models CartPole-v1"):
        main(["train-wm", f"data={pendulum[0] / 'data'}", f"out={tmp_path / 'x'}", f"init={cfinal}", "steps=10", *QUIET])


class _TwoPictures(gym.Env):
    observation_space = spaces.Dict({"a": spaces.Box(0, 255, (8, 8, 3), np.uint8), "b": spaces.Box(0, 255, (8, 8, 3), np.uint8)})
    action_space = spaces.Discrete(2)

    def _obs(self):
        return {"a": np.zeros((8, 8, 3), np.uint8), "b": np.zeros((8, 8, 3), np.uint8)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 0.0, False, False, {}


def test_two_image_keys_are_refused_by_name(tmp_path):
    if "dreamgym-test/TwoPictures-v0" not in gym.registry:
        gym.register(id="dreamgym-test/TwoPictures-v0", entry_point=_TwoPictures, max_episode_steps=20)
    _collect(tmp_path / "data", "dreamgym-test/TwoPictures-v0", 200)
    with pytest.raises(Refused, match="2 image keys; the model dreams one image key"):
        main(["train-wm", f"data={tmp_path / 'data'}", f"out={tmp_path / 'run'}", "steps=10", *QUIET])


def test_a_policy_trained_only_in_the_dream_runs_in_the_source_env_unchanged(cartpole):
    """SB3 PPO learns CartPole in its dream (through ``envs.sb3.SB3VecEnv``) and then plays the real env."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    from dreamgym.envs.sb3 import SB3VecEnv

    _, final = cartpole
    dream = VectorDreamVecEnv(checkpoint=str(final), num_envs=16)
    torch.manual_seed(0)
    model = PPO("MlpPolicy", SB3VecEnv(dream), n_steps=64, batch_size=256, seed=0, verbose=0, device="cpu")
    model.learn(10_000)
    real = gym.make("CartPole-v1")
    trained, _ = evaluate_policy(model, real, n_eval_episodes=20, deterministic=True)
    rng = np.random.default_rng(0)
    random_returns = []
    for ep in range(20):
        real.reset(seed=ep)
        done, ret = False, 0.0
        while not done:
            _, r, term, trunc, _ = real.step(int(rng.integers(2)))
            ret, done = ret + r, term or trunc
        random_returns.append(ret)
    assert trained > 4 * np.mean(random_returns)  # random play: about 20; a learned balance lasts far longer
    assert dream.real_steps < 0.1 * 10_000  # its real experience: the dataset and the starts' single steps


class _Drift(gym.Env):
    """A point drifting under Box actions, observed as a Dict of two vectors (position, velocity)."""

    observation_space = spaces.Dict(
        {"position": spaces.Box(-5.0, 5.0, (2,), np.float32), "velocity": spaces.Box(-np.inf, np.inf, (2,), np.float32)}
    )
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.p = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        self.v = np.zeros(2, np.float32)
        return self._obs(), {}

    def _obs(self):
        return {"position": self.p.copy(), "velocity": self.v.copy()}

    def step(self, action):
        self.v = (0.9 * self.v + 0.1 * np.asarray(action, np.float32)).astype(np.float32)
        self.p = np.clip(self.p + self.v, -5, 5).astype(np.float32)
        return self._obs(), float(-np.abs(self.p).sum()), bool(np.abs(self.p).max() >= 5), False, {}


def test_a_dict_of_vectors_is_dreamed_key_by_key(tmp_path):
    if "dreamgym-test/Drift-v0" not in gym.registry:
        gym.register(id="dreamgym-test/Drift-v0", entry_point=_Drift, max_episode_steps=50)
    _collect(tmp_path / "data", "dreamgym-test/Drift-v0", 1500)
    final = _train(tmp_path / "data", tmp_path / "run", 150)
    env = gym.make("dreamgym/Dream-v0", source_env="dreamgym-test/Drift-v0", checkpoint=str(final))
    assert env.observation_space == _Drift.observation_space
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    obs, r, *_ = env.step(np.ones(2, np.float32))
    assert set(obs) == {"position", "velocity"} and obs["velocity"].dtype == np.float32 and np.isfinite(r)
