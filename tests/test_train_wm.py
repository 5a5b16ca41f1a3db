"""train-wm on datasets on disk: windows streamed through the loader under a memory cap, resumes that
check what they resume, and clear refusals of bad values, damaged shards and manifests that reach
outside their dataset.

The datasets are written with the real shard writer from synthetic episodes (no simulator), and
the model is tiny, so every test runs in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamgym.rollouts.dataset import Episode, Manifest, room_split, write_shard
from dreamgym.rollouts.episodes import EpisodeReader, index_dataset
from dreamgym.rollouts.loader import WindowDataset
from dreamgym.worldmodel.model import WorldModel
from dreamgym.worldmodel.train import run, train
from dreamgym.worldmodel.train_state import ResumeMismatchError
from dreamgym.worldmodel.windows import DatasetSource

torch.set_num_threads(1)

TINY_OVERRIDES = [
    "worldmodel.resolution=16",
    "worldmodel.context=2",
    "worldmodel.frame_channels=[8,16]",
    "worldmodel.occupancy_channels=[8,16]",
    "worldmodel.dim=32",
    "worldmodel.depth=1",
    "worldmodel.heads=2",
    "worldmodel.grid_tokens=2",
    "worldmodel.reward_hidden=32",
    "worldmodel.state_prior=32",
    "worldmodel.props_dynamics=16",
    "props_rollout_steps=3",
    "props_rollout_horizon=2",
    "props_rollout_batch=4",
    "prior_rollout=2",
    "prior_batch=8",
]
NQ, NV, RES, T = 74, 70, 32, 12


def _quat(shape, g):
    q = torch.randn(*shape, 4, generator=g) * 0.1
    q[..., 0] += 1.0
    return q / q.norm(dim=-1, keepdim=True)


def _episode(g: torch.Generator, room_seed: int) -> Episode:
    """An episode of T steps with the dataset's keys, dtypes and shapes, moving smoothly (not physics)."""
    n = T + 1
    m = torch.zeros(n, 227)
    m[:, 0:3] = torch.cumsum(torch.randn(n, 3, generator=g) * 0.05, 0)
    m[:, 3:7] = _quat((n,), g)
    m[:, 7:73] = torch.randn(n, 66, generator=g) * 0.3
    m[:, 73:161] = _quat((n, 22), g).reshape(n, 88)
    m[:, 161:227] = torch.randn(n, 66, generator=g) * 0.1
    p = m.clone()
    p[:, 0:3] += 1.5
    base = torch.randint(0, 255, (1, 3, RES, RES), generator=g, dtype=torch.uint8)
    occ = torch.zeros(n, 8, 32, 32, dtype=torch.uint8)
    occ[:, 0, :4] = 1
    obs = {
        "ego_rgb": (base.float() + torch.arange(n).view(n, 1, 1, 1) * 3).clamp(0, 255).to(torch.uint8).numpy(),
        "ego_depth": (torch.rand(n, 1, RES, RES, generator=g) * 5).numpy(),
        "motion": m.numpy(),
        "partner_motion": p.numpy(),
        "occupancy": occ.numpy(),
        "instruction": np.full(n, 3, np.int64),
    }
    split = room_split(room_seed, 0.3)
    attrs = {"key": f"r{room_seed}", "task": "reach", "room_seed": room_seed, "split": split, "behaviour": "expert", "instruction": 3}
    attrs |= {"success": False, "terminated": False, "truncated": True, "cut": False}
    return Episode(
        observations=obs,
        actions=(torch.rand(T, 6, generator=g) * 2 - 1).numpy(),
        rewards=(torch.randn(T, generator=g) * 0.1).numpy(),
        terminations=np.zeros(T, bool),
        truncations=np.eye(1, T, T - 1, dtype=bool)[0],
        qpos=torch.randn(n, NQ, generator=g).numpy(),
        qvel=torch.randn(n, NV, generator=g).numpy(),
        attrs=attrs,
    )


def write_dataset(root: Path, rooms: list[int], seed: int = 0, drop: tuple[str, ...] = ()) -> Path:
    """A dataset directory of one shard per two episodes, in ``dreamgym collect``'s format
    (without the observation keys ``drop``)."""
    g = torch.Generator().manual_seed(seed)
    space = {"ego_rgb": [3, RES, RES], "ego_depth": [1, RES, RES], "motion": [227], "partner_motion": [227], "occupancy": [8, 32, 32]}
    space = {k: v for k, v in space.items() if k not in drop}
    obs_space = {k: {"shape": s, "dtype": "uint8" if k in ("ego_rgb", "occupancy") else "float32"} for k, s in space.items()}
    obs_space["instruction"] = {"shape": [], "dtype": "int64"}
    env = {"task": "reach", "obs_keys": [*space, "instruction"], "observation_space": obs_space, "nq": NQ, "nv": NV, "control_dt": 0.05}
    root.mkdir(parents=True)
    m = Manifest.new(root, env, {"task": "reach"}, heldout_fraction=0.3)
    episodes = [(i, _episode(g, r)) for i, r in enumerate(rooms)]
    for _, ep in episodes:
        for k in drop:
            del ep.observations[k]
    for j in range(0, len(episodes), 2):
        m.shards.append(write_shard(root, m.next_shard_name(), episodes[j : j + 2], env))
    m.save()
    return root


TRAIN_ROOMS = [r for r in range(40) if room_split(r, 0.3) == "train"][:6]
HELD_ROOMS = [r for r in range(40) if room_split(r, 0.3) == "heldout"][:2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("wm") / "data", TRAIN_ROOMS + HELD_ROOMS)


def _cfg(data: Path, out: Path, *extra: str):
    from dreamgym.configs import compose

    base = ["batch_size=4", "num_threads=1", "progress=false", "stats_windows=16", "eval_every=2", "eval_batch=4", "ckpt_every=2"]
    return compose("train_wm", [f"data={data}", f"out={out}", *base, "warmup_steps=1", *TINY_OVERRIDES, *extra])


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- streaming
def test_windows_with_the_final_observation_and_derived_keys(dataset):
    src = DatasetSource(dataset, "train")
    ds = src.windows(3)
    assert len(ds) == len(TRAIN_ROOMS) * (T + 1 - 3 + 1), "windows may end at the final observation"
    last = ds[len(ds) - 1]
    assert last["actions"][-1].abs().sum() == 0 and last["rewards"][-1] == 0 and not last["terminations"][-1]
    assert last["partner_actions"].shape == (3, 6) and float(last["partner_actions"][-1].abs().sum()) == 0.0
    assert last["props"].shape == (3, 4, 3) and "qpos" not in last
    # the same rows as the whole episode, read by the one reader
    ref = index_dataset(dataset, "train").episodes[-1]
    whole = EpisodeReader([ref], ["motion", "partner_motion", "props", "partner_actions"]).episode(0)
    for k in ("motion", "props", "partner_actions", "actions"):
        assert np.array_equal(last[k].numpy(), whole[k][-3:]), k


def test_asking_for_a_key_the_data_lacks_names_it_and_asking_for_a_step_key_reads_it(dataset):
    from dreamgym.rollouts.episodes import MissingKeyError

    ref = index_dataset(dataset, "train").episodes[0]
    with pytest.raises(MissingKeyError, match=r"does not store \['speed'\]; it has \[.*'motion'"):
        EpisodeReader([ref], ["motion", "speed"]).episode(0)
    rows = EpisodeReader([ref], ["motion", "actions", "rewards"]).episode(0)  # the step keys are always read
    assert rows["actions"].shape == (ref.steps + 1, 6) and rows["motion"].shape[0] == ref.steps + 1


def test_capped_cache_reads_the_same_windows(dataset):
    keys = ["ego_rgb", "motion", "partner_motion", "props", "partner_actions"]
    full = WindowDataset(dataset, context=2, horizon=1, split="all", keys=keys, cache_bytes=None, include_final=True)
    size = sum(full.reader.episode_bytes(e) for e in range(len(full.refs)))
    cap = size // 4
    capped = WindowDataset(dataset, context=2, horizon=1, split="all", keys=keys, cache_bytes=cap, include_final=True)
    streamed = WindowDataset(dataset, context=2, horizon=1, split="all", keys=keys, cache_bytes=0, include_final=True)
    for i in range(len(full)):
        a, b, c = full[i], capped[i], streamed[i]
        assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a), i
    assert 0 < capped.reader.cached_bytes <= cap < full.reader.cached_bytes == size
    picks = [0, len(full) - 1, 5, 5, 17]
    for ds in (full, capped, streamed):  # a batch gathered key by key is the DataLoader's batch
        a, b = ds.batch(picks), torch.utils.data.default_collate([ds[i] for i in picks])
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert streamed.reader.cached_bytes == 0


def test_a_dataset_larger_than_the_cache_trains_as_the_uncapped_run(dataset, tmp_path, monkeypatch):
    full, capped = tmp_path / "full", tmp_path / "capped"
    train(_cfg(dataset, full, "steps=4", "cache_mb=null"))
    size = sum(DatasetSource(dataset, "train").windows(3).reader.episode_bytes(e) for e in range(len(TRAIN_ROOMS)))
    cap_mb = size / 3 / 2**20
    seen = []
    real = EpisodeReader.rows

    def spy(self, e, start=0, stop=None):
        if self.cache_bytes:
            seen.append((self.cached_bytes, e in self._cache))
        return real(self, e, start, stop)

    monkeypatch.setattr(EpisodeReader, "rows", spy)
    train(_cfg(dataset, capped, "steps=4", f"cache_mb={cap_mb}"))
    assert max(c for c, _ in seen) <= cap_mb * 2**20 < size, "the cache stays under the cap, below the data's size"
    assert not all(hit for _, hit in seen), "some windows were read from disk"
    assert _log(capped) == _log(full), "the same losses, step by step"
    assert all(np.isfinite(r["total"]) for r in _log(capped))
    wa, wb = WorldModel.from_pretrained(full / "final").state_dict(), WorldModel.from_pretrained(capped / "final").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (capped / "checkpoints" / "step_00000004").is_dir()
    assert json.loads((capped / "heldout.jsonl").read_text().splitlines()[-1])["step"] == 4


# ----------------------------------------------------------------------------- resumes
def test_a_resumed_run_shows_each_step_once_in_tensorboard(dataset, tmp_path):
    """A run killed after logging steps its last checkpoint does not hold re-logs them on resume;
    TensorBoard purges the first copies, so each step's loss appears once."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(_cfg(dataset, out, "steps=4", "log_every=1"))
    shutil.rmtree(out / "checkpoints" / "step_00000004")  # as if killed after step 4 was logged
    shutil.rmtree(out / "final")
    train(_cfg(dataset, out, "steps=4", "log_every=1"))
    acc = EventAccumulator(str(out / "tb"), purge_orphaned_data=True)
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2, 3, 4]


def test_resume_refuses_other_data_or_settings_and_continues_a_longer_run(dataset, tmp_path):
    out = tmp_path / "run"
    train(_cfg(dataset, out, "steps=2"))
    record = (out / "run.json").read_text()
    with pytest.raises(ResumeMismatchError, match=r"training\.lr: run 0\.001, now 0\.5.*resume=false"):
        train(_cfg(dataset, out, "steps=2", "lr=0.5"))
    other = write_dataset(tmp_path / "other", TRAIN_ROOMS, seed=1)
    with pytest.raises(ResumeMismatchError, match=r"data\.sha256: run [0-9a-f]{12}\.\.\., now [0-9a-f]{12}\.\.\."):
        train(_cfg(other, out, "steps=2"))
    with pytest.raises(
        SystemExit, match=r"^dreamgym train-wm: .*holds a run with other data, settings or code \(.*model\.depth: run 1, now 2"
    ):
        run(_cfg(dataset, out, "steps=2", "worldmodel.depth=2"))
    assert (out / "run.json").read_text() == record, "a refused re-run leaves the run's record alone"
    assert [r["step"] for r in _log(out)] == [1, 2]
    train(_cfg(dataset, out, "steps=3"))  # more steps continue the run
    assert [r["step"] for r in _log(out)] == [1, 2, 3]
    train(_cfg(dataset, out, "steps=3", "resume=false"))  # starting over is explicit
    assert [r["step"] for r in _log(out)] == [1, 2, 3]


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=-5", "steps = -5 is invalid (expected an integer >= 1)"),
        ("batch_size=0", "batch_size = 0 is invalid (expected an integer >= 1)"),
        ("noise.p_clean=1.5", "p_clean = 1.5 is invalid (expected a number in [0, 1])"),
        ("cache_mb=-1", "cache_mb=-1 is not allowed"),
    ],
)
def test_bad_values_are_refused_in_one_line_before_any_work(dataset, tmp_path, override, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run(_cfg(dataset, out, override))
    text = str(e.value)
    assert text.startswith("dreamgym train-wm: ") and message in text and "\n" not in text
    assert not out.exists(), "nothing written"


@pytest.mark.parametrize("drop", [("ego_rgb", "ego_depth"), ("occupancy",), ("ego_depth",)])
def test_data_without_a_modality_are_refused_naming_the_keys_and_the_fix(tmp_path, drop):
    data = write_dataset(tmp_path / "data", TRAIN_ROOMS[:3] + HELD_ROOMS[:1], drop=drop)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run(_cfg(data, out, "steps=1"))
    line = str(e.value)
    assert line.startswith(f"dreamgym train-wm: {data}: the data lack {list(drop)}") and "\n" not in line
    assert "collect with obs_keys=[ego_rgb,ego_depth,motion,partner_motion,occupancy]" in line
    assert not out.exists(), "nothing written"
    fix = line.split("train a model that needs none of them: ")[1].split()
    assert run(_cfg(data, out, "steps=1", *fix)) == 0, "the fix it names works"
    assert (out / "final").is_dir()


def test_a_damaged_shard_is_named(dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    shard = Manifest.load(bad).shards[0]["file"]
    with open(bad / shard, "r+b") as f:
        f.seek(4096)
        f.write(b"\x00\xff" * 64)
    with pytest.raises(SystemExit, match=rf"^dreamgym train-wm: shard .*{shard} is corrupt: sha256"):
        run(_cfg(bad, tmp_path / "run", "steps=1"))


def test_a_manifest_cannot_reach_outside_its_dataset(dataset, tmp_path):
    from dreamgym.app.cli import main

    bad = tmp_path / "data"
    shutil.copytree(dataset, bad)
    shutil.copytree(dataset, tmp_path / "other")
    m = json.loads((bad / "manifest.json").read_text())
    m["shards"][0]["file"] = "../other/" + m["shards"][0]["file"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"lists the shard '\.\./other/shard-000000\.h5', which is not a file of the dataset directory"):
        WindowDataset(bad, context=2, horizon=1, split="all")
    with pytest.raises(SystemExit, match=r"^dreamgym dataset verify: .*\.\./other/shard-000000\.h5"):
        main(["dataset", "verify", str(bad)])
    with pytest.raises(SystemExit, match=r"^dreamgym train-wm: .*\.\./other/shard-000000\.h5"):
        run(_cfg(bad, tmp_path / "run", "steps=1"))
    (bad / "manifest.json").write_text("[]")
    with pytest.raises(SystemExit, match=r"^dreamgym dataset verify: .*holds a JSON list, not a dataset manifest"):
        main(["dataset", "verify", str(bad)])
