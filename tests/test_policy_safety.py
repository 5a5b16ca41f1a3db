"""Policies on disk and train-policy runs, tried as a hostile but fair user would.

- dreamgym's SB3 policies are safetensors + JSON and load without unpickling; a loaded policy acts
  exactly as the one in memory;
- a Stable-Baselines3 ``.zip`` (which unpickles when loaded) is refused unless ``allow_pickle``,
  and a crafted one's payload never runs on the default path;
- ``train-policy`` killed with SIGKILL after a checkpoint and re-run with the same command ends
  with the parameters of an uninterrupted run, bit for bit (SAC too, replay buffer included);
- a run folder with other settings is refused with the differences listed, an unfinished or stale
  run is refused by name, an earlier result is moved aside before a new run can leave anything;
- bad values and damaged files give one line naming the key or the file, before any work.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from dreamgym.app.cli import main
from dreamgym.policies.base import SB3Policy, load_policy
from dreamgym.policies.errors import CheckpointError, RunMismatchError, UnsafeCheckpointError
from dreamgym.policies.sb3_format import save_sb3_policy, space_from_json, space_to_json

torch.set_num_threads(1)  # the machine is shared

B = 8
TRAIN = [
    "env=real",
    f"num_envs={B}",
    "stats_steps=2",
    "ppo.n_steps=8",
    "ppo.batch_size=32",
    "ppo.n_epochs=2",
    "sac.learning_starts=16",
    "sac.gradient_steps=1",
    "sac.batch_size=32",
    "num_threads=1",
    "obs_keys=[task_obs,motion]",
]


def _cfg(out, *more):
    from dreamgym.configs import compose

    return compose("train_policy", [*TRAIN, f"out={out}", "progress=false", *more])


def _tensors(path) -> dict[str, torch.Tensor]:
    from dreamgym.policies.weights import read_safetensors

    return read_safetensors(path)


def _assert_same_weights(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs by up to {(ta[k] - tb[k]).abs().max()}"


class _Interrupt(Exception):
    """Stands in for a kill inside the process, right after a checkpoint was written."""


def _interrupt_after_checkpoints(monkeypatch, n: int) -> None:
    from dreamgym.policies import train_callback

    real, done = train_callback.save_train_state, []

    def save_then_stop(*args, **kw):
        path = real(*args, **kw)
        done.append(path)
        if len(done) == n:
            raise _Interrupt
        return path

    monkeypatch.setattr(train_callback, "save_train_state", save_then_stop)


# ----------------------------------------------------------------------------- a policy in memory and on disk
class _DictEnv(gym.Env):
    """Random observations in dreamgym's Dict layout (an image, a discrete and a vector key)."""

    observation_space = spaces.Dict(
        {
            "ego_rgb": spaces.Box(0, 255, (3, 16, 16), np.uint8),
            "instruction": spaces.Discrete(5),
            "task_obs": spaces.Box(-np.inf, np.inf, (8,), np.float32),
        }
    )
    action_space = spaces.Box(-1.0, 1.0, (6,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), float(np.sum(action)), False, self.np_random.random() < 0.1, {}


def _sb3_model(algo: str):
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dreamgym.policies.networks import ObsExtractor

    env = DummyVecEnv([_DictEnv])
    stats = {"task_obs": ([0.5] * 8, [2.0] * 8)}
    kw = dict(net_arch=[16, 16], features_extractor_class=ObsExtractor, features_extractor_kwargs={"stats": stats}, normalize_images=False)
    if algo == "ppo":
        model = PPO("MultiInputPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, policy_kwargs=kw, device="cpu")
    else:
        model = SAC("MultiInputPolicy", env, learning_starts=8, batch_size=8, buffer_size=100, seed=0, policy_kwargs=kw, device="cpu")
    return model.learn(32)


def _obs(n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "ego_rgb": torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
        "instruction": torch.randint(0, 5, (n,), generator=g),
        "task_obs": torch.randn(n, 8, generator=g) * 3,
    }


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_a_loaded_policy_acts_exactly_as_the_one_in_memory(tmp_path, algo):
    model = _sb3_model(algo)
    save_sb3_policy(model.policy, algo, tmp_path / "pol", {"note": "kept"})
    cfg = json.loads((tmp_path / "pol" / "policy.json").read_text())
    assert cfg["family"] == "sb3" and cfg["algo"] == algo and cfg["note"] == "kept"
    assert cfg["policy_kwargs"]["net_arch"] == [16, 16] and cfg["policy_kwargs"]["features_extractor_class"] == {"class": "ObsExtractor"}
    loaded = load_policy(tmp_path / "pol")
    mem = SB3Policy(model)
    assert isinstance(loaded, SB3Policy) and loaded.algo == algo and loaded.obs_keys == mem.obs_keys
    assert loaded.network.observation_space == model.observation_space
    # the observation statistics travel in the weights
    fx = loaded.network.actor.features_extractor if algo == "sac" else loaded.network.features_extractor
    assert torch.equal(fx.mean_task_obs, torch.full((8,), 0.5)) and torch.equal(fx.std_task_obs, torch.full((8,), 2.0))
    obs = _obs()
    assert torch.equal(loaded.act(obs), mem.act(obs))
    torch.manual_seed(7)
    sampled = mem.act(obs, deterministic=False)
    torch.manual_seed(7)
    assert torch.equal(loaded.act(obs, deterministic=False), sampled)
    assert not torch.equal(sampled, mem.act(obs))  # sampling did sample


def test_spaces_round_trip_and_only_known_classes_are_built(tmp_path):
    space = spaces.Dict(
        {
            "b": spaces.Box(np.array([-np.inf, 0.0]), np.array([1.0, np.inf]), (2,), np.float64),
            "a": spaces.Box(0, 9, (2, 3), np.uint8),
            "c": spaces.Discrete(4, start=1),
        }
    )
    back = space_from_json(json.loads(json.dumps(space_to_json(space))))
    assert back == space and list(back.spaces) == list(space.spaces)
    model = _sb3_model("ppo")
    save_sb3_policy(model.policy, "ppo", tmp_path / "pol")
    cfg_file = tmp_path / "pol" / "policy.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["policy_kwargs"]["activation_fn"] = {"class": "posix.system"}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"policy\.json: cannot rebuild .*unknown class 'posix.system'"):
        load_policy(tmp_path / "pol")


# ----------------------------------------------------------------------------- pickles
def _crafted_zip(path: Path, marker: Path) -> Path:
    """An SB3-looking zip whose 'data' part runs code when unpickled (it writes ``marker``)."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    blob = base64.b64encode(pickle.dumps(Payload())).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": blob, "__module__": "stable_baselines3.common.policies"}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("_stable_baselines3_version", "2.9.2")
    return path


def test_a_crafted_sb3_zip_is_refused_and_its_payload_never_runs(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = _crafted_zip(tmp_path / "policy.zip", marker)
    legacy = tmp_path / "legacy_run"  # a run folder of an older dreamgym: policy.json beside policy.zip
    legacy.mkdir()
    shutil.copy(evil, legacy / "policy.zip")
    (legacy / "policy.json").write_text(json.dumps({"family": "sb3", "algo": "ppo"}))
    for spec in (evil, legacy):
        with pytest.raises(UnsafeCheckpointError, match="unpickles .* allow_pickle=true"):
            load_policy(spec)
    for cmd in (["eval-policy", f"policy={evil}", "episodes=2"], ["train-policy", *TRAIN, f"init={evil}", f"out={tmp_path / 'run'}"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        msg = str(e.value)
        assert "allow_pickle=true" in msg and str(evil) in msg and "\n" not in msg
    assert not marker.exists() and not (tmp_path / "run").exists()
    # the refusal is what stands between the file and its code: with the opt-in it runs
    with pytest.raises(KeyError):  # SB3 finds no spaces in it, after unpickling
        load_policy(evil, allow_pickle=True)
    assert marker.read_text() == "ran"


def test_a_real_sb3_zip_loads_with_the_opt_in(tmp_path):
    model = _sb3_model("ppo")
    model.save(tmp_path / "m.zip")
    with pytest.raises(UnsafeCheckpointError):
        load_policy(tmp_path / "m.zip")
    pol = load_policy(tmp_path / "m.zip", allow_pickle=True)
    assert torch.equal(pol.act(_obs()), SB3Policy(model).act(_obs()))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "cmd,says",
    [
        (["train-policy", "steps=-5"], "steps=-5 is out of range"),
        (["train-policy", "steps=2.5"], "give steps a whole number"),
        (["train-policy", "num_envs=0"], "num_envs=0"),
        (["train-policy", "algo=dqn"], "algo=dqn is not one of the choices; choose from ppo, sac"),
        (["train-policy", "ppo.learning_rate=-1"], "ppo.learning_rate=-1"),
        (["train-policy", "obs_keys=[task_obs,bogus]"], "obs_keys=[task_obs,bogus] is not one of the choices"),
        (["train-policy", "init=/nonexistent/policy"], "init=/nonexistent/policy: no such file or directory"),
        (["train-policy", "+bogus_key=1"], "unknown key 'bogus_key'"),
        (["eval-policy", "policy=expert", "+bogus_key=1"], "unknown key 'bogus_key'"),
        (["eval-policy", "policy=expert", "episodes=0"], "episodes=0 is out of range"),
        (["eval-policy", "policy=expert", "env=sim"], "env=sim is not one of the choices"),
    ],
)
def test_bad_values_are_refused_before_any_work(tmp_path, cmd, says):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main([*cmd, f"out={out}"])
    msg = str(e.value)
    assert says in msg and "\n" not in msg
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("cmd", [["train-policy"], ["eval-policy", "policy=expert"]])
def test_cuda_without_cuda_is_refused(tmp_path, cmd):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "device=cuda", f"out={tmp_path / 'run'}"])
    assert "device=cuda but this machine has no CUDA device" in str(e.value) and not (tmp_path / "run").exists()


def test_damaged_policies_name_the_file_and_what_is_missing(tmp_path):
    model = _sb3_model("ppo")
    pol = tmp_path / "pol"
    save_sb3_policy(model.policy, "ppo", pol)
    weights, cfg_file = pol / "policy.safetensors", pol / "policy.json"
    good_weights, good_cfg = weights.read_bytes(), cfg_file.read_text()
    weights.write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(SystemExit) as e:
        main(["eval-policy", f"policy={pol}", "episodes=2"])
    assert f"{weights}: truncated" in str(e.value)
    weights.write_bytes(good_weights)
    cfg_file.unlink()
    for spec in (pol, weights):
        with pytest.raises(CheckpointError, match=r"policy\.json: missing: policy\.safetensors needs it"):
            load_policy(spec)
    cfg_file.write_text(good_cfg.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(CheckpointError, match="format_version 99 is newer"):
        load_policy(pol)
    cfg_file.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"policy\.json: not valid JSON"):
        load_policy(pol)
    cfg_file.write_text(json.dumps({"family": "sb3", "format_version": 1}))
    with pytest.raises(CheckpointError, match=r"missing \['algo', 'policy_kwargs'\]"):
        load_policy(pol)


def test_a_truncated_vla_checkpoint_names_the_file(tmp_path):
    src = Path(__file__).resolve().parents[1] / "policies" / "checkpoints" / "vla" / "final"
    ckpt = tmp_path / "vla"
    shutil.copytree(src, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10_000])
    with pytest.raises(CheckpointError, match=f"{weights}: (truncated|not a safetensors file)"):
        load_policy(ckpt)


# ----------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from dreamgym.policies.train import train_policy

    out = tmp_path_factory.mktemp("runs") / "finished"
    train_policy(_cfg(out, "steps=64", "checkpoint_every=1000"))
    return out


def test_a_run_folder_resumes_only_what_it_recorded(tmp_path, finished_run, monkeypatch, capsys):
    from dreamgym.policies.train import train_policy

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "finished" and not (run / "checkpoints").exists()
    assert json.loads((run / "policy.json").read_text())["run_id"] == rec["run_id"]
    # the same command again: nothing to do
    assert train_policy(_cfg(run, "steps=64", "checkpoint_every=1000")) == run / "policy.safetensors"
    assert "finished in an earlier run" in capsys.readouterr().out
    # other settings: refused, listing what differs, before anything is touched
    with pytest.raises(RunMismatchError) as e:
        train_policy(_cfg(run, "steps=128", "checkpoint_every=1000", "ppo.learning_rate=0.1"))
    assert "ppo.learning_rate: run 0.0003, now 0.1" in str(e.value) and "steps: run 64, now 128" in str(e.value)
    assert json.loads((run / "run.json").read_text()) == rec
    # restart=true starts afresh: the old result is moved aside first, so a run killed early leaves none
    _interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(_Interrupt):
        train_policy(_cfg(run, "steps=128", "checkpoint_every=64", "ppo.learning_rate=0.1", "restart=true"))
    assert not (run / "policy.safetensors").exists() and not (run / "policy.json").exists()
    (aside,) = run.glob("replaced-*")
    _assert_same_weights(aside / "policy.safetensors", finished_run / "policy.safetensors")
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    with pytest.raises(SystemExit) as e:
        main(["eval-policy", f"policy={run}", "episodes=2"])
    assert f"{run}: unfinished train-policy run" in str(e.value)
    # a policy that is not the one run.json records is stale
    shutil.copy(aside / "policy.safetensors", run / "policy.safetensors")
    shutil.copy(aside / "policy.json", run / "policy.json")
    rec = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**rec, "status": "finished"}))
    with pytest.raises(CheckpointError, match="stale policy"):
        load_policy(run)


def test_an_init_policy_must_fit_the_config(tmp_path, finished_run):
    for more, says in (
        (["algo=sac", "obs_keys=[task_obs,motion]"], "a ppo policy, but algo=sac"),
        (["obs_keys=[task_obs]"], "the policy reads ['motion', 'task_obs'], but obs_keys=['task_obs']"),
        (["ppo.net_arch=[32]", "obs_keys=[task_obs,motion]"], "its layers are net_arch=[128, 128], but ppo.net_arch=[32]"),
    ):
        out = tmp_path / "run"
        with pytest.raises(SystemExit) as e:
            main(
                [
                    "train-policy",
                    *[a for a in TRAIN if not a.startswith("obs_keys")],
                    f"out={out}",
                    f"init={finished_run}",
                    "steps=64",
                    *more,
                ]
            )
        assert says in str(e.value), str(e.value)
        assert not out.exists()
    # continuing a run in its own folder would move the init policy aside
    before = sorted(p.name for p in finished_run.iterdir())
    with pytest.raises(SystemExit) as e:
        main(["train-policy", *TRAIN, f"out={finished_run}", f"init={finished_run / 'policy.safetensors'}", "steps=64"])
    assert "lies inside out=" in str(e.value) and sorted(p.name for p in finished_run.iterdir()) == before
    # a fitting one is continued: its weights are the start, its steps count on
    from dreamgym.policies.train import train_policy

    got = train_policy(_cfg(tmp_path / "cont", "steps=64", "checkpoint_every=1000", f"init={finished_run}"))
    meta = json.loads((got.parent / "policy.json").read_text())
    assert (meta["steps"], meta["total_steps"], meta["init"]) == (64, 128, str(finished_run))


def test_an_older_dreamgym_result_is_moved_aside_by_a_new_run(tmp_path, finished_run, monkeypatch):
    from dreamgym.policies.train import train_policy

    run = tmp_path / "run"
    run.mkdir()
    (run / "policy.zip").write_bytes(b"an older result")
    (run / "policy.json").write_text(json.dumps({"family": "sb3"}))
    _interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(_Interrupt):
        train_policy(_cfg(run, "steps=128", "checkpoint_every=64"))
    assert not (run / "policy.zip").exists() and not (run / "policy.json").exists()
    (aside,) = run.glob("replaced-*")
    assert (aside / "policy.zip").read_bytes() == b"an older result"
    with pytest.raises(CheckpointError, match="unfinished"):
        load_policy(run)


def test_an_interrupted_sac_run_resumes_exactly_and_reports_progress(tmp_path, monkeypatch, capsys):
    """SAC keeps a replay buffer: the resumed run must carry it over (and the RNG) to end equal."""
    from dreamgym.policies.train import train_policy

    more = ("algo=sac", "steps=128", "checkpoint_every=32")
    ref = train_policy(_cfg(tmp_path / "ref", *more))
    _interrupt_after_checkpoints(monkeypatch, 2)
    with pytest.raises(_Interrupt):
        train_policy(_cfg(tmp_path / "run", *more, "progress=true", "log_every=32"))
    err = capsys.readouterr().err  # not a terminal: progress comes as lines
    assert "train-policy: 32/128 steps" in err and "steps/s" in err
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("step-*")
    assert ckpt.name == "step-000000064" and (ckpt / "replay.safetensors").is_file()
    monkeypatch.undo()
    got = train_policy(_cfg(tmp_path / "run", *more))
    assert "resuming" in capsys.readouterr().out
    _assert_same_weights(got, ref)
    a, b = (json.loads((p.parent / "policy.json").read_text()) for p in (ref, got))
    for key in ("steps", "episodes", "real_env_steps", "train_return_recent", "train_success_recent"):
        assert a[key] == b[key], key


def test_killed_train_policy_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL after the first checkpoint, the same command again: the parameters of an uninterrupted run."""
    from dreamgym.policies.train import train_policy

    more = ["steps=512", "checkpoint_every=64"]
    ref = train_policy(_cfg(tmp_path / "ref", *more))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dreamgym.app.cli", "train-policy", *TRAIN, *more, f"out={out}", "progress=false"]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    while proc.poll() is None and not list(out.glob("checkpoints/step-*")) and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, (
        f"train-policy ended before it could be killed (rc {proc.returncode}): {(tmp_path / 'killed.log').read_text()[-2000:]}"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / "policy.safetensors").exists()
    (ckpt,) = out.glob("checkpoints/step-*")
    assert 64 <= int(ckpt.name.split("-")[1]) < 512
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {out} from its checkpoint at" in done.stdout
    _assert_same_weights(out / "policy.safetensors", ref)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    a, b = (json.loads((d / "policy.json").read_text()) for d in (ref.parent, out))
    assert (a["steps"], a["episodes"], a["real_env_steps"]) == (b["steps"], b["episodes"], b["real_env_steps"])
