"""``dreamgym collect env=<Gymnasium id>``: any registered env into the resumable dataset format."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from dreamgym.app.cli import Refused, main
from dreamgym.rollouts.dataset import Manifest, read_episode
from dreamgym.rollouts.gym_spaces import space_from_json, space_to_json

QUIET = ["progress=false"]


# ------------------------------------------------------------------------------ tiny test envs
class ImageEnv(gym.Env):
    """A lit pixel walking on an 8 x 8 uint8 RGB image; ends when it leaves the image."""

    observation_space = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = spaces.Discrete(4)
    MOVES = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.integers(2, 6, size=2)
        self.colour = self.np_random.integers(1, 256, size=3).astype(np.uint8)
        return self._obs(), {}

    def _obs(self):
        img = np.zeros((8, 8, 3), np.uint8)
        img[self.pos[0], self.pos[1]] = self.colour
        return img

    def step(self, action):
        self.pos = self.pos + self.MOVES[int(action)]
        out = bool(np.any(self.pos < 0) or np.any(self.pos > 7))
        self.pos = np.clip(self.pos, 0, 7)
        return self._obs(), float(self.pos.sum()), out, False, {}


class DictEnv(gym.Env):
    """A point pushed by Box actions, observed as a position vector and a small camera image."""

    observation_space = spaces.Dict(
        {"position": spaces.Box(-np.inf, np.inf, (2,), np.float32), "camera": spaces.Box(0, 255, (8, 8, 3), np.uint8)}
    )
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.p = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        return self._obs(), {}

    def _obs(self):
        cam = np.zeros((8, 8, 3), np.uint8)
        i, j = np.clip(((self.p + 3) / 6 * 8).astype(int), 0, 7)
        cam[i, j] = 255
        return {"position": self.p.copy(), "camera": cam}

    def step(self, action):
        self.p = (self.p + 0.5 * np.asarray(action, np.float32) + self.np_random.normal(0, 0.01, 2)).astype(np.float32)
        return self._obs(), -float(np.abs(self.p).sum()), bool(np.abs(self.p).max() > 3), False, {}


class NestedDictEnv(DictEnv):
    observation_space = spaces.Dict({"inner": spaces.Dict({"x": spaces.Box(-1, 1, (1,))})})


class MultiDiscreteEnv(ImageEnv):
    action_space = spaces.MultiDiscrete([2, 3])


for _name, _cls in (("Image", ImageEnv), ("Dict", DictEnv), ("NestedDict", NestedDictEnv), ("MultiDiscrete", MultiDiscreteEnv)):
    if f"dreamgym-test/{_name}-v0" not in gym.registry:
        gym.register(id=f"dreamgym-test/{_name}-v0", entry_point=_cls, max_episode_steps=40)


# ------------------------------------------------------------------------------ helpers
def _collect(out: Path, *args: str) -> int:
    return main(["collect", f"out={out}", *QUIET, *args])


def _episodes(root: Path) -> list[tuple[dict, object]]:
    m = Manifest.load(root)
    return [(e, read_episode(root / s["file"], e["group"])) for s, e in m.episodes()]


def _replay(env_id: str, entry: dict, ep, env_kwargs=None) -> None:
    """The stored episode is what the env does from its reset seed under its stored actions."""
    env = gym.make(env_id, **(env_kwargs or {}))
    obs, _ = env.reset(seed=int(entry["room_seed"]))
    keys = list(ep.observations)

    def same(o, t):
        o = o if isinstance(o, dict) else {"obs": o}
        assert sorted(o) == sorted(keys)
        for k in keys:
            np.testing.assert_array_equal(ep.observations[k][t], o[k], err_msg=f"{entry['key']} {k} row {t}")

    same(obs, 0)
    T = len(ep.actions)
    for t in range(T):
        a = ep.actions[t]
        obs, r, term, trunc, _ = env.step(int(a) if a.ndim == 0 else a)
        same(obs, t + 1)
        assert np.float32(r) == ep.rewards[t]
        assert bool(term) == bool(ep.terminations[t])
        if t < T - 1:
            assert not (term or trunc), f"{entry['key']} ended at step {t} of {T}"
    env.close()


def _check_flags(ep, entry) -> None:
    assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
    assert ep.terminations[-1] or ep.truncations[-1]
    assert bool(entry["terminated"]) == bool(ep.terminations[-1])
    if entry["cut"]:
        assert ep.truncations[-1] and not ep.terminations[-1]


# ------------------------------------------------------------------------------ tests
def test_cartpole_end_to_end(tmp_path, capsys):
    out = tmp_path / "cartpole"
    assert _collect(out, "env=CartPole-v1", "steps=2000", "num_envs=4") == 0
    assert main(["dataset", "verify", str(out)]) == 0
    assert "0 bad" in capsys.readouterr().out
    assert main(["dataset", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["env_id"] == "CartPole-v1" and info["steps"] == 2000 and set(info["by_behaviour"]) == {"random"}
    m = Manifest.load(out)
    env = m.data["env"]
    assert env["kind"] == "gym" and env["env_id"] == "CartPole-v1" and env["env_kwargs"] == {}
    ref = gym.make("CartPole-v1")
    assert space_from_json(env["observation_space"]) == ref.observation_space
    assert space_from_json(env["action_space"]) == ref.action_space
    assert env["obs_keys"] == ["obs"]
    eps = _episodes(out)
    assert sum(len(ep.actions) for _, ep in eps) == 2000
    for entry, ep in eps:
        assert list(ep.observations) == ["obs"] and ep.qpos is None and ep.qvel is None
        T = len(ep.actions)
        assert ep.observations["obs"].shape == (T + 1, 4) and ep.observations["obs"].dtype == np.float32
        assert ep.actions.shape == (T,) and ep.actions.dtype == np.int64
        assert ep.rewards.dtype == np.float32 and ep.terminations.dtype == bool and ep.truncations.dtype == bool
        _check_flags(ep, entry)
    for entry, ep in eps[:12]:
        _replay("CartPole-v1", entry, ep)
    assert any(e["terminated"] for e, _ in eps) and any(e["cut"] for e, _ in eps)
    assert {e["split"] for e, _ in eps} == {"train", "heldout"}  # 97 episodes, 10 % held out
    # the windows of the loader read it
    from dreamgym.rollouts.loader import WindowDataset

    w = WindowDataset(out, context=3, horizon=2, split="train", verify="size")
    item = w[0]
    assert item["obs"].shape == (5, 4) and item["actions"].shape == (5,) and item["actions"].dtype.is_floating_point is False


def test_pendulum_box_actions_and_held_behaviour(tmp_path):
    out = tmp_path / "pendulum"
    argv = ["env=Pendulum-v1", "env_kwargs={g:9.0}", "steps=1200", "num_envs=3", "round_steps=300", 'policy="random:0.5,held:0.5"']
    assert _collect(out, *argv) == 0
    assert main(["dataset", "verify", str(out)]) == 0
    eps = _episodes(out)
    assert {e["behaviour"] for e, _ in eps} == {"random", "held"}
    for entry, ep in eps:
        T = len(ep.actions)
        assert ep.actions.shape == (T, 1) and ep.actions.dtype == np.float32
        assert ep.observations["obs"].shape == (T + 1, 3) and ep.observations["obs"].dtype == np.float32
        assert np.all(np.abs(ep.actions) <= 2.0)
        _check_flags(ep, entry)
        if entry["behaviour"] == "held":  # runs of one action, 4-20 steps (the last one cut by the episode's end)
            change = np.nonzero(np.any(ep.actions[1:] != ep.actions[:-1], axis=1))[0] + 1
            runs = np.diff(np.concatenate([[0], change, [T]]))
            assert runs.max() <= 20 and (runs[:-1] >= 4).all(), runs
        else:
            assert len(np.unique(ep.actions)) > T // 2
    for entry, ep in eps[:6]:
        _replay("Pendulum-v1", entry, ep, {"g": 9.0})
    assert Manifest.load(out).data["env"]["env_kwargs"] == {"g": 9.0}


def _contents(root: Path) -> list[tuple]:
    rows = []
    for entry, ep in _episodes(root):
        arrays = {**{f"obs/{k}": v for k, v in ep.observations.items()}, "a": ep.actions, "r": ep.rewards, "te": ep.terminations}
        rows.append((entry["key"], entry["room_seed"], entry["behaviour"], {k: v.tobytes() for k, v in arrays.items()}))
    return sorted(rows, key=lambda r: r[0])


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
    argv = ["env=CartPole-v1", "steps=1200", "num_envs=4", "round_steps=100", "shard_episodes=4", 'policy="random:0.5,held:0.5"']
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _collect(whole, *argv) == 0
    assert _collect(parts, *argv, "stop_after_steps=170") == 0
    first = Manifest.load(parts)
    assert 0 < first.num_steps < 1200
    assert _collect(parts, *argv, "stop_after_steps=500") == 0
    assert _collect(parts, *argv) == 0
    assert Manifest.load(parts).num_steps == Manifest.load(whole).num_steps == 1200
    assert _contents(parts) == _contents(whole)
    assert main(["dataset", "verify", str(parts)]) == 0
    before = (parts / "manifest.json").read_text()
    assert _collect(parts, *argv) == 0  # a finished dataset: nothing to do
    assert json.loads((parts / "manifest.json").read_text())["shards"] == json.loads(before)["shards"]


def test_changed_settings_are_refused_with_the_differences(tmp_path, capsys):
    out = tmp_path / "d"
    assert _collect(out, "env=CartPole-v1", "steps=40", "num_envs=2") == 0
    with pytest.raises(Refused) as e:
        _collect(out, "env=CartPole-v1", "steps=40", "num_envs=2", "seed=3", "policy=held")
    assert e.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "seed: dataset 0, now 3" in line and "policy: dataset {'random': 1.0}, now {'held': 1.0}" in line
    with pytest.raises(Refused):
        _collect(out, "env=Pendulum-v1", "steps=40", "num_envs=2")
    assert "env_id: dataset 'CartPole-v1', now 'Pendulum-v1'" in capsys.readouterr().err
    with pytest.raises(Refused):  # the room into a Gymnasium env's dataset
        _collect(out, "steps=8", "num_envs=2")
    assert "holds episodes of the Gymnasium env CartPole-v1, this run collects the room" in capsys.readouterr().err


def test_dict_observations_round_trip(tmp_path):
    out = tmp_path / "dict"
    assert _collect(out, "env=dreamgym-test/Dict-v0", "steps=200", "num_envs=2") == 0
    assert main(["dataset", "verify", str(out)]) == 0
    env = Manifest.load(out).data["env"]
    assert space_from_json(env["observation_space"]) == DictEnv.observation_space
    assert env["observations"]["camera"] == {"shape": [8, 8, 3], "dtype": "uint8", "image": True}
    assert env["observations"]["position"]["image"] is False
    eps = _episodes(out)
    assert len(eps) >= 5  # 40-step time limit
    for entry, ep in eps:
        T = len(ep.actions)
        assert set(ep.observations) == {"position", "camera"}
        assert ep.observations["position"].shape == (T + 1, 2) and ep.observations["position"].dtype == np.float32
        assert ep.observations["camera"].shape == (T + 1, 8, 8, 3) and ep.observations["camera"].dtype == np.uint8
        assert ep.actions.shape == (T, 2)
        _check_flags(ep, entry)
        _replay("dreamgym-test/Dict-v0", entry, ep)


def test_image_observations_round_trip(tmp_path):
    import h5py

    out = tmp_path / "img"
    assert _collect(out, "env=dreamgym-test/Image-v0", "steps=300", "num_envs=3", "policy=held") == 0
    assert main(["dataset", "verify", str(out)]) == 0
    m = Manifest.load(out)
    eps = _episodes(out)
    assert any(e["terminated"] for e, _ in eps)
    for entry, ep in eps:
        T = len(ep.actions)
        assert ep.observations["obs"].shape == (T + 1, 8, 8, 3) and ep.observations["obs"].dtype == np.uint8
        assert ep.actions.dtype == np.int64
        _check_flags(ep, entry)
        _replay("dreamgym-test/Image-v0", entry, ep)
    with h5py.File(out / m.shards[0]["file"], "r") as f:
        assert f[m.shards[0]["episodes"][0]["group"]]["observations/obs"].compression == "gzip"


@pytest.mark.parametrize(
    "args, expect",
    [
        (["env=CartPol-v1"], "env=CartPol-v1 is not a registered Gymnasium id"),
        (["env=CartPole-v1", "env_kwargs={bogus:1}"], "refused env_kwargs={'bogus': 1}"),
        (["env=FrozenLake-v1"], "has the observation space Discrete(16), which collect cannot store"),
        (["env=dreamgym-test/NestedDict-v0"], "observation key 'inner' is a nested Dict"),
        (["env=dreamgym-test/MultiDiscrete-v0"], "has the action space MultiDiscrete([2 3]), which collect cannot store"),
        (["env=CartPole-v1", 'policy="expert:0.5,random:0.5"'], "policy names ['expert'], behaviours of the room"),
        (["env_kwargs={g:1}"], "env_kwargs are passed to gym.make and need env="),
    ],
)
def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, args, expect):
    out = tmp_path / "nothing"
    capsys.readouterr()
    with pytest.raises(Refused) as e:
        _collect(out, *args, "steps=10")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dreamgym collect: ") and "\n" not in err and expect in err, err
    assert not out.exists()


def test_spaces_json_round_trip():
    cases = [
        spaces.Box(-np.inf, np.inf, (3,), np.float32),
        spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, np.inf]), dtype=np.float64),
        spaces.Box(0, 255, (8, 8, 3), np.uint8),
        spaces.Box(np.arange(4).reshape(2, 2), 9, (2, 2), np.int64),
        spaces.Discrete(5),
        spaces.Discrete(3, start=-1),
        DictEnv.observation_space,
        spaces.Dict({"a": spaces.Dict({"b": spaces.Discrete(2)}), "c": spaces.Box(-1, 1, (1,))}),
        gym.make("CartPole-v1").observation_space,
    ]
    for s in cases:
        text = json.dumps(space_to_json(s), allow_nan=False)  # strictly valid JSON
        back = space_from_json(json.loads(text))
        assert back == s, (s, back)
        assert space_to_json(back) == space_to_json(s)
    assert space_to_json(cases[0])["low"] == "-inf" and space_to_json(cases[1])["high"] == [1.0, "inf"]
    with pytest.raises(ValueError, match="no JSON description"):
        space_to_json(spaces.MultiBinary(3))


@pytest.mark.parametrize("argv", [["video", "episode=0"], ["export"], ["view"]])  # train-wm trains its vector model: test_vector_wm
def test_room_readers_refuse_a_gymnasium_dataset(tmp_path, capsys, argv):
    data = tmp_path / "cartpole"
    assert _collect(data, "env=CartPole-v1", "steps=20", "num_envs=2") == 0
    capsys.readouterr()
    where = [str(data)] if argv[0] in ("video", "view") else [f"data={data}"]
    out = [] if argv[0] == "view" else [f"out={tmp_path / ('o.mp4' if argv[0] == 'video' else 'o')}"]
    with pytest.raises(Refused):
        main([*argv, *where, *out])
    assert "holds episodes of the Gymnasium env CartPole-v1" in capsys.readouterr().err
