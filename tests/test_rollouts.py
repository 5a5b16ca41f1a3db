"""Rollouts: collection, the dataset format, crash safety, the window loader and video export.

The collections are tiny (4 worlds, 32-pixel ego camera, 40 steps per world) and the env's episodes
are cut to 12 steps, so that a 20-step round holds both natural episode ends (auto-resets) and
episodes cut by the round's end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamgym.rollouts.collect import BEHAVIOURS, collect, parse_policy
from dreamgym.rollouts.dataset import CorruptShardError, Manifest, read_episode, room_split, verify
from dreamgym.rollouts.loader import WindowDataset, make_loader

EPISODE_STEPS = 12  # the env's max_steps in these tests
SMALL = dict(
    task="reach",
    steps=4 * 40,
    num_envs=4,
    resolution=32,
    policy="expert:0.5,noisy:0.25,random:0.25",
    noise=0.3,
    seed=7,
    round_steps=20,
    shard_episodes=2,
    heldout_fraction=0.3,
    progress=False,
)


def _make_env():
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=4, task="reach", resolution=32, seed=7, return_tensors=True)
    env.core.task.max_steps = EPISODE_STEPS  # an instance attribute: other envs keep the class's
    return env


@pytest.fixture(scope="module")
def env():
    return _make_env()


@pytest.fixture(scope="module")
def dataset(env, tmp_path_factory):
    """An uninterrupted collection: the reference the interrupted ones must equal."""
    out = tmp_path_factory.mktemp("rollouts") / "base"
    result = collect(out, env=env, **SMALL)
    assert result.complete and result.steps == SMALL["steps"]
    return out


def _episodes(root) -> list[tuple[str, int]]:
    return [(e["key"], e["steps"]) for _, e in Manifest.load(root).episodes()]


# ---------------------------------------------------------------------------------------- format
def test_dataset_contents_and_layout(dataset):
    m = Manifest.load(dataset)
    eps = [e for _, e in m.episodes()]
    assert m.num_steps == SMALL["steps"] == sum(e["steps"] for e in eps)
    assert [e["id"] for e in eps] == list(range(len(eps)))
    assert any(e["cut"] for e in eps) and any(not e["cut"] for e in eps), "both natural ends and round cuts"
    assert {e["behaviour"] for e in eps} <= set(BEHAVIOURS)
    assert len({e["room_seed"] for e in eps}) == len(eps), "every episode gets its own room"
    assert all(e["split"] == room_split(e["room_seed"], 0.3) for e in eps)
    for shard, e in m.episodes():
        ep = read_episode(dataset / shard["file"], e["group"])
        T = ep.steps
        assert T == e["steps"] and 1 <= T <= EPISODE_STEPS
        assert ep.observations["ego_rgb"].shape == (T + 1, 3, 32, 32) and ep.observations["ego_rgb"].dtype == np.uint8
        assert ep.observations["ego_depth"].shape == (T + 1, 1, 32, 32) and ep.observations["ego_depth"].dtype == np.float32
        assert ep.observations["motion"].shape == (T + 1, 227)
        assert ep.observations["occupancy"].shape == (T + 1, 8, 32, 32)
        assert ep.actions.shape == (T, 6) and np.abs(ep.actions).max() <= 1.0
        assert ep.qpos.shape[0] == T + 1 and ep.qvel.shape[0] == T + 1
        ends = ep.terminations | ep.truncations
        assert ends[-1] and not ends[:-1].any(), "an episode ends at its last step and only there"
        if not ep.attrs["cut"]:
            assert ep.attrs["terminated"] or T == EPISODE_STEPS
            # The final observation is the last of this episode, not the first of the next one.
            assert ep.observations["task_obs"][-1, 6] == pytest.approx(T / EPISODE_STEPS, abs=1e-6)
        assert ep.observations["task_obs"][0, 6] == 0.0
        assert (ep.observations["instruction"] == ep.attrs["instruction"]).all()
        assert ep.attrs["instruction_text"] and ep.attrs["room_seed"] == e["room_seed"]


# A reader that knows nothing of dreamgym: json + h5py + numpy (the README shows the same code).
H5PY_ONLY_READER = textwrap.dedent("""
    import json, sys, h5py, numpy as np
    root = sys.argv[1]
    manifest = json.load(open(f"{root}/manifest.json"))
    out = {"episodes": 0, "steps": 0, "shapes": {}, "dtypes": {}}
    for shard in manifest["shards"]:
        with h5py.File(f"{root}/{shard['file']}", "r") as f:
            out["env"] = json.loads(f.attrs["env"])["observation_space"]
            for entry in shard["episodes"]:
                ep = f[entry["group"]]
                T = len(ep["actions"])
                assert ep["observations/ego_rgb"].shape[0] == T + 1
                out["episodes"] += 1
                out["steps"] += T
                for name, ds in [*ep["observations"].items(), *((k, ep[k]) for k in ("actions", "rewards", "terminations", "truncations", "qpos", "qvel"))]:
                    out["shapes"][name] = list(ds.shape[1:])
                    out["dtypes"][name] = str(ds.dtype)
                out["room_seed"] = int(ep.attrs["room_seed"])
                out["instruction_text"] = str(ep.attrs["instruction_text"])
    out["imported_dreamgym"] = any(m.startswith("dreamgym") for m in sys.modules)
    print(json.dumps(out))
""")


def test_loads_with_h5py_alone(dataset):
    proc = subprocess.run([sys.executable, "-c", H5PY_ONLY_READER, str(dataset)], capture_output=True, text=True, timeout=120, cwd=dataset)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert not out["imported_dreamgym"]
    assert out["episodes"] == Manifest.load(dataset).num_episodes and out["steps"] == SMALL["steps"]
    assert out["shapes"]["ego_rgb"] == [3, 32, 32] and out["dtypes"]["ego_rgb"] == "uint8"
    assert out["shapes"]["ego_depth"] == [1, 32, 32] and out["dtypes"]["ego_depth"] == "float32"
    assert out["shapes"]["occupancy"] == [8, 32, 32] and out["shapes"]["motion"] == [227]
    assert out["shapes"]["actions"] == [6] and out["dtypes"]["terminations"] == "bool"
    assert out["env"]["ego_rgb"]["shape"] == [3, 32, 32]


def test_stored_actions_replay_to_the_stored_motion(dataset):
    """Replaying an episode's actions in the C MuJoCo env from its room seed gives its motion."""
    from dreamgym.envs.ego_room_env import EgoRoomEnv

    m = Manifest.load(dataset)
    shard, e = max(m.episodes(), key=lambda se: se[1]["steps"])
    ep = read_episode(dataset / shard["file"], e["group"], ["motion"])
    ref = EgoRoomEnv(task="reach", resolution=32, obs_keys=["motion"])
    obs, info = ref.reset(seed=e["room_seed"])
    assert info["room_seed"] == e["room_seed"]
    worst = float(np.abs(obs["motion"][:73] - ep.observations["motion"][0, :73]).max())
    for t in range(ep.steps):
        obs, *_ = ref.step(ep.actions[t])
        worst = max(worst, float(np.abs(obs["motion"][:73] - ep.observations["motion"][t + 1, :73]).max()))
    assert worst < 2e-3, f"replayed motion differs from the stored one by {worst:.2e} m"


# ---------------------------------------------------------------------------------------- nothing lost
def test_resume_after_a_stop_equals_an_uninterrupted_run(env, dataset, tmp_path):
    out = tmp_path / "resumed"
    first = collect(out, env=env, stop_after_steps=4 * 15, **SMALL)
    assert not first.complete and first.stopped == "budget"
    assert 0 < first.episodes < len(_episodes(dataset))
    second = collect(out, env=env, **SMALL)
    assert second.complete
    assert _episodes(out) == _episodes(dataset)
    # Same episodes, same data: the seeds continue deterministically across the stop.
    a, b = Manifest.load(out), Manifest.load(dataset)
    (sa, ea), (sb, eb) = list(a.episodes())[-1], list(b.episodes())[-1]
    ra, rb = read_episode(out / sa["file"], ea["group"], ["ego_rgb"]), read_episode(dataset / sb["file"], eb["group"], ["ego_rgb"])
    assert np.array_equal(ra.actions, rb.actions) and np.array_equal(ra.observations["ego_rgb"], rb.observations["ego_rgb"])
    # A third run has nothing left to do.
    third = collect(out, env=env, **SMALL)
    assert third.complete and third.new_episodes == 0 and third.simulated_steps == 0


def test_the_progress_bar_counts_the_stored_steps(env, tmp_path, monkeypatch):
    """The bar moves when a shard is listed, by the steps it holds (what a kill would keep), starts
    a resumed run at what is stored, and ends at the dataset's steps."""
    import tqdm

    bars = []

    class Bar:
        def __init__(self, total, initial, **kw):
            self.total, self.n, self.values, self.postfix = total, initial, [initial], ""
            bars.append(self)

        def update(self, k):
            self.n += k
            self.values.append(self.n)

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    out = tmp_path / "bar"
    collect(out, env=env, **{**SMALL, "progress": True, "stop_after_steps": 4 * 15})
    collect(out, env=env, **{**SMALL, "progress": True})
    m = Manifest.load(out)
    stored = np.cumsum([0] + [s["steps"] for s in m.shards]).tolist()
    first, second = bars
    assert set(first.values + second.values) <= set(stored), "only sums of whole shards"
    assert second.values[0] == first.n > 0, "a resumed run starts at what is stored"
    assert second.n == second.total == m.num_steps == SMALL["steps"]
    assert second.postfix == f"{m.num_episodes} episodes stored"


def test_resume_refuses_other_settings(dataset):
    with pytest.raises(SystemExit, match="seed: dataset 7, now 8"):
        collect(dataset, **{**SMALL, "seed": 8})


def test_sigkill_mid_collection_keeps_every_listed_shard(env, dataset, tmp_path):
    out = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import os; os.environ.setdefault("MUJOCO_GL", "egl")
        from dreamgym.envs.vec_env import EgoRoomVecEnv
        from dreamgym.rollouts.collect import collect
        env = EgoRoomVecEnv(num_envs=4, task="reach", resolution=32, seed=7, return_tensors=True)
        env.core.task.max_steps = {EPISODE_STEPS}
        collect({str(out)!r}, env=env, **{SMALL!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                if Manifest.load(out).shards:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        assert proc.poll() is None, f"collection ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert Manifest.load(out).shards, "no shard landed in time"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    report = verify(out)
    assert report.ok, report.summary()
    m = Manifest.load(out)
    assert 0 < m.num_episodes < len(_episodes(dataset))
    for shard, e in m.episodes():
        assert read_episode(out / shard["file"], e["group"]).steps == e["steps"]
    assert all(name.startswith(".") or name.startswith("shard-") for name in report.ignored)

    # Re-running the same collection finishes it, with the uninterrupted run's episodes.
    result = collect(out, env=env, **SMALL)
    assert result.complete
    assert _episodes(out) == _episodes(dataset)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name], "temporary files were cleaned up"
    assert verify(out).ok


def _damage(dataset, tmp_path) -> tuple[Path, str, str]:
    """A copy of the dataset with one shard's bytes flipped and another truncated."""
    bad = tmp_path / "damaged"
    shutil.copytree(dataset, bad)
    shards = [s["file"] for s in Manifest.load(bad).shards]
    flipped, truncated = shards[1], shards[-1]
    with open(bad / flipped, "r+b") as f:
        f.seek(os.path.getsize(bad / flipped) // 2)
        chunk = f.read(64)
        f.seek(-64, os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with open(bad / truncated, "r+b") as f:
        f.truncate(os.path.getsize(bad / truncated) // 3)
    return bad, flipped, truncated


def test_corrupt_shards_are_named_and_can_be_skipped(dataset, tmp_path):
    from dreamgym.app.cli import main

    bad, flipped, truncated = _damage(dataset, tmp_path)
    report = verify(bad)
    assert set(report.bad) == {flipped, truncated}
    assert "sha256" in report.bad[flipped] and "truncated" in report.bad[truncated]
    assert main(["dataset", "verify", str(bad)]) == 1
    assert main(["dataset", "verify", str(dataset)]) == 0

    with pytest.raises(CorruptShardError, match=flipped):
        WindowDataset(bad, context=2, horizon=2, split="all")
    with pytest.warns(UserWarning, match="skipping shard"):
        ds = WindowDataset(bad, context=2, horizon=2, split="all", skip_bad=True)
    assert set(Path(p).name for p in ds.skipped) == {flipped, truncated}
    m = Manifest.load(bad)
    good = [e["group"] for s in m.shards if s["file"] not in (flipped, truncated) for e in s["episodes"]]
    assert [ep["group"] for ep in ds.episodes] == good
    assert len(ds) > 0 and ds[len(ds) - 1]["actions"].shape == (4, 6)


def test_a_damaged_chunk_fails_on_read_even_without_the_checksum_pass(dataset, tmp_path):
    """HDF5's per-chunk Fletcher-32 catches damage the cheap (size-only) open cannot see."""
    import h5py

    bad = tmp_path / "chunk"
    shutil.copytree(dataset, bad)
    shard = Manifest.load(bad).shards[0]
    group = shard["episodes"][0]["group"]
    with h5py.File(bad / shard["file"], "r") as f:
        info = f[group]["observations/ego_rgb"].id.get_chunk_info(0)
    with open(bad / shard["file"], "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\x00\xff" * 4)
    ds = WindowDataset(bad, context=2, horizon=2, split="all", verify="size")
    with pytest.raises(CorruptShardError, match=shard["file"]):
        ds[0]


# ---------------------------------------------------------------------------------------- loader
def test_windows_stay_inside_episodes_and_splits_are_disjoint(dataset):
    K, H = 3, 2
    train = WindowDataset(dataset, context=K, horizon=H, split="train")
    held = WindowDataset(dataset, context=K, horizon=H, split="heldout")
    assert len(train) > 0 and len(held) > 0
    assert not train.room_seeds & held.room_seeds
    assert all(room_split(s, 0.3) == "heldout" for s in held.room_seeds)
    total = sum(max(0, e["steps"] - K - H + 1) for _, e in Manifest.load(dataset).episodes())
    assert len(train) + len(held) == total, "every window start of every episode, once"

    bounds = train.window_bounds()
    steps = np.array([ep["steps"] for ep in train.episodes])
    assert (bounds[:, 2] <= steps[bounds[:, 0]]).all(), "no window runs past its episode's last action"
    for i in range(len(train)):
        w = train[i]
        ends = (w["terminations"] | w["truncations"]).numpy()
        assert not ends[:-1].any(), f"window {i} crosses an episode end"
    w = train[len(train) // 2]
    assert w["ego_rgb"].shape == (K + H, 3, 32, 32) and w["ego_depth"].shape == (K + H, 1, 32, 32)
    assert w["motion"].shape == (K + H, 227) and w["occupancy"].shape == (K + H, 8, 32, 32)
    assert w["actions"].shape == (K + H, 6) and w["rewards"].shape == (K + H,)
    assert w["instruction"].shape == () and w["room_seed"].shape == ()
    # The window is the episode's slice, action t after observation t.
    ep = train.episodes[int(w["episode"])]
    ref = read_episode(ep["shard"], ep["group"], ["motion"])
    t0 = int(w["t0"])
    assert np.array_equal(w["motion"].numpy(), ref.observations["motion"][t0 : t0 + K + H])
    assert np.array_equal(w["actions"].numpy(), ref.actions[t0 : t0 + K + H])
    assert int(w["room_seed"]) == ep["room_seed"]


def test_dataloader_batches_with_workers_and_in_memory(dataset):
    ds = WindowDataset(dataset, context=2, horizon=2, split="all", keys=["ego_rgb", "motion", "qpos"])
    batch = next(iter(make_loader(ds, batch_size=8, num_workers=2)))
    assert batch["ego_rgb"].shape == (8, 4, 3, 32, 32) and batch["qpos"].shape[:2] == (8, 4)
    assert "ego_depth" not in batch
    mem = WindowDataset(dataset, context=2, horizon=2, split="all", keys=["ego_rgb", "motion", "qpos"], in_memory=True)
    for i in (0, len(ds) // 2, len(ds) - 1):
        a, b = ds[i], mem[i]
        assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_room_split_is_a_deterministic_hash_of_the_seed():
    sides = [room_split(s, 0.1) for s in range(20000)]
    assert sides == [room_split(s, 0.1) for s in range(20000)]
    assert 0.09 < sides.count("heldout") / len(sides) < 0.11
    # Held-out sets are nested: a room held out at 10 % is held out at 30 %.
    assert all(room_split(s, 0.3) == "heldout" for s, side in enumerate(sides) if side == "heldout")


def test_policy_mix_parsing():
    assert parse_policy("expert:0.5,noisy:0.3,random:0.2") == {"expert": 0.5, "noisy": 0.3, "random": 0.2}
    assert parse_policy({"expert": 1, "random": 3}) == {"expert": 0.25, "random": 0.75}
    assert parse_policy("random") == {"random": 1.0}
    with pytest.raises(ValueError, match="unknown behaviour 'greedy'"):
        parse_policy("greedy:1")
    with pytest.raises(ValueError, match="positive weight"):
        parse_policy("expert:0")


# ---------------------------------------------------------------------------------------- video
def test_video_has_one_frame_per_observation(dataset, tmp_path):
    import imageio.v2 as imageio

    from dreamgym.rollouts.video import write_video

    m = Manifest.load(dataset)
    _, e = list(m.episodes())[1]
    out = tmp_path / "ep.mp4"
    n = write_video(dataset, e["id"], out, size=64)
    assert n == e["steps"] + 1
    frames = [f for f in imageio.get_reader(out)]  # list() would ask the reader its (infinite) length
    assert len(frames) == e["steps"] + 1
    assert frames[0].shape == (64, 192, 3)
    overhead = frames[0][:, 64:128].astype(float)
    assert overhead.std() > 5, "the overhead panel shows a room, not a blank"


def test_held_random_actions_are_held_for_4_to_20_steps():
    from dreamgym.rollouts.collect import HOLD_STEPS, BehaviourMix

    class Env:
        def expert_actions(self):
            return torch.zeros(3, 6)

    mix = BehaviourMix(parse_policy("held"), noise=0.3, seed=0, round_index=0, num_envs=3)
    mix.draw(np.arange(3))
    acts = torch.stack([mix.actions(Env()) for _ in range(200)])  # (T, B, 6)
    assert acts.abs().max() <= 1 and acts.abs().min() > 0
    for w in range(3):
        change = (acts[1:, w] != acts[:-1, w]).any(-1).nonzero()[:, 0].tolist()
        runs = np.diff([-1] + change)
        assert len(runs) >= 5 and runs.min() >= HOLD_STEPS[0] and runs.max() <= HOLD_STEPS[1], runs
    # a new episode draws a new action at once
    mix.draw(np.array([0]))
    assert not torch.equal(mix.actions(Env())[0], acts[-1, 0])
