"""Runs killed with SIGKILL and run again with the same command.

- ``train-wm`` killed after its first checkpoint resumes from it (not from step 0) and ends with
  the weights, losses and held-out metrics of an uninterrupted run, bit for bit; until it ends, the
  run folder holds no ``final/`` that a later command could take for its result (an earlier, shorter
  run's result and a started-over run's checkpoints are moved into ``replaced-<time>/``);
- the DIAMOND-style loop killed in its policy stage resumes that stage from its checkpoint (or,
  killed before the stage's first checkpoint, restarts it), says which in ``log.jsonl``, and ends
  with the policy of an uninterrupted run.

The data are synthetic and the models tiny; the subprocesses are the real CLI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_wm import HELD_ROOMS, TINY_OVERRIDES, TRAIN_ROOMS, write_dataset

from dreamgym.worldmodel.model import WorldModel
from dreamgym.worldmodel.train import run, train

torch.set_num_threads(1)  # the machine is shared

WM_ARGS = ["batch_size=4", "num_threads=1", "progress=false", "stats_windows=16", "eval_batch=4", "warmup_steps=1", *TINY_OVERRIDES]
WM_RUN = ["steps=16", "ckpt_every=4", "eval_every=8"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("kill") / "data", TRAIN_ROOMS + HELD_ROOMS)


def _wm_cfg(data: Path, out: Path, *extra: str):
    from dreamgym.configs import compose

    return compose("train_wm", [f"data={data}", f"out={out}", *WM_ARGS, *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return WorldModel.from_pretrained(path).state_dict()


def _assert_same_model(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs by up to {(wa[k].float() - wb[k].float()).abs().max()}"


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _kill_after(cmd: list[str], ready, log: Path, timeout_s: float = 600) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; fail if it ends first."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while proc.poll() is None and not ready() and time.time() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"{cmd[3]} ended before it could be killed (rc {proc.returncode}): {log.read_text()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "checkpoints").glob("step_*") if (p / "trainer_state.json").is_file())


def _fork_and_kill(command, ready, timeout_s: float = 600) -> None:
    """Run ``command()`` in a forked process (the imports are already done) and SIGKILL it as
    soon as ``ready()`` holds; fail if it ends first."""
    proc = multiprocessing.get_context("fork").Process(target=command)
    proc.start()
    deadline = time.time() + timeout_s
    while proc.is_alive() and not ready() and time.time() < deadline:
        time.sleep(0.005)
    assert proc.is_alive(), f"the run ended before it could be killed (exit code {proc.exitcode})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[1])


def _has_checkpoint_after(out: Path, step: int):
    return lambda: any(_step_of(p) > step for p in _checkpoints(out))


def _assert_no_result(out: Path) -> None:
    assert not (out / "final").exists() and not (out / "final_raw").exists(), "a killed run leaves no result"
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")], "nor a half-written checkpoint"


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted run of WM_RUN."""
    return train(_wm_cfg(dataset, tmp_path_factory.mktemp("ref") / "run", *WM_RUN)).parent


def _assert_same_run(out: Path, ref: Path) -> None:
    _assert_same_model(out / "final", ref / "final")
    _assert_same_model(out / "final_raw", ref / "final_raw")
    assert _lines(out / "metrics.jsonl") == _lines(ref / "metrics.jsonl"), "the same losses, step by step"
    assert _lines(out / "heldout.jsonl") == _lines(ref / "heldout.jsonl")


# ----------------------------------------------------------------------------- train-wm
def test_killed_train_wm_resumes_to_the_uninterrupted_result(dataset, reference, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = _wm_cfg(dataset, out, *WM_RUN)
    _fork_and_kill(lambda: run(cfg), lambda: bool(_checkpoints(out)))
    _assert_no_result(out)
    step = _step_of(_checkpoints(out)[-1])
    assert 4 <= step < 16
    capsys.readouterr()
    assert run(cfg) == 0
    assert f"resuming from {out / 'checkpoints'}" in capsys.readouterr().out
    _assert_same_run(out, reference)


def test_a_longer_run_killed_leaves_no_stale_result(dataset, reference, tmp_path):
    """A finished 8-step run continued to 16 steps and killed: its 8-step result is moved aside, not
    left as ``final/``; the re-run ends as the uninterrupted 16-step run."""
    out = tmp_path / "run"
    train(_wm_cfg(dataset, out, "steps=8", *WM_RUN[1:]))
    short = WorldModel.from_pretrained(out / "final").state_dict()
    cfg = _wm_cfg(dataset, out, *WM_RUN)
    _fork_and_kill(lambda: run(cfg), _has_checkpoint_after(out, 8))
    _assert_no_result(out)
    (aside,) = out.glob("replaced-*")
    assert all(torch.equal(v, short[k]) for k, v in _weights(aside / "final").items())
    assert run(cfg) == 0
    _assert_same_run(out, reference)


def test_a_run_started_over_never_resumes_the_earlier_runs_checkpoints(dataset, tmp_path):
    """``resume=false`` with other settings, killed after its first checkpoint: the earlier run's
    newer checkpoints are gone from ``checkpoints/`` (moved aside), so the next resume continues
    the new run, and ends as the new run uninterrupted."""
    other = ["steps=8", "ckpt_every=4", "eval_every=8", "lr=0.002"]
    ref = train(_wm_cfg(dataset, tmp_path / "ref", *other)).parent
    out = tmp_path / "run"
    train(_wm_cfg(dataset, out, "steps=12", *WM_RUN[1:]))
    restart = _wm_cfg(dataset, out, *other, "resume=false")
    _fork_and_kill(lambda: run(restart), lambda: any(_step_of(p) == 4 for p in _checkpoints(out)))
    _assert_no_result(out)
    assert [_step_of(p) for p in _checkpoints(out)] == [4]
    (aside,) = out.glob("replaced-*")
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["step_00000008", "step_00000012"]
    assert json.loads((aside / "run.json").read_text())["training"]["lr"] == 0.001, "the earlier run's record goes with it"
    assert run(_wm_cfg(dataset, out, *other)) == 0
    _assert_same_run(out, ref)


@pytest.mark.slow
def test_killed_train_wm_command_resumes_to_the_uninterrupted_result(dataset, reference, tmp_path):
    """The same through the CLI in a subprocess: SIGKILL after its first checkpoint, the same command again."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dreamgym.app.cli", "train-wm", f"data={dataset}", f"out={out}", *WM_ARGS, *WM_RUN]
    _kill_after(cmd, lambda: bool(_checkpoints(out)), tmp_path / "killed.log")
    _assert_no_result(out)
    step = _step_of(_checkpoints(out)[-1])
    assert 4 <= step < 16
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {out / 'checkpoints'}" in done.stdout and f"at step {step}" in done.stdout, done.stdout
    _assert_same_run(out, reference)


# ----------------------------------------------------------------------------- the DIAMOND-style loop
B = 8


@pytest.fixture(scope="module")
def tiny_wm(tmp_path_factory):
    """A tiny, randomly initialised state-only world model (what the loop's state policies need)."""
    from dreamgym.worldmodel.model import WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(
        resolution=16,
        data_resolution=32,
        context=2,
        modalities=["motion", "partner_motion", "props"],
        ego_warp=False,
        ego_render=False,
        occupancy_warp=False,
        state_prior=0,
        props_dynamics=0,
        partner_actions=False,
        dim=32,
        depth=1,
        heads=2,
        reward_hidden=32,
    )
    path = tmp_path_factory.mktemp("wm") / "tiny"
    WorldModel(cfg).save_pretrained(path)
    return path


def _diamond_cfg(out: Path, wm: Path, checkpoint_every: int = 64):
    from dreamgym.configs import compose

    over = [f"out={out}", f"checkpoint={wm}", "budget=200", "collect_steps=64", f"collect_envs={B}", "wm.steps=2", "wm.batch_size=4"]
    over += ["policy_steps=256", f"checkpoint_every={checkpoint_every}", f"num_envs={B}", "ppo.n_steps=8", "ppo.batch_size=32"]
    return compose("diamond", [*over, "ppo.n_epochs=1", "eval_episodes=0", "progress=false", "num_threads=1", "stats_steps=2"])


def _policy_weights(path: Path) -> dict[str, torch.Tensor]:
    from dreamgym.policies.weights import read_safetensors

    return read_safetensors(path)


SAME = ("real_steps_used", "collected", "data_episodes", "dream_start_steps", "dream_train_return", "dream_train_success")


def _assert_same_loop(got: dict, ref: dict, out: Path, ref_out: Path) -> None:
    a, b = _policy_weights(Path(got["policy"])), _policy_weights(Path(ref["policy"]))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), "the policy of the uninterrupted run"
    log, ref_log = _lines(out / "log.jsonl"), _lines(ref_out / "log.jsonl")
    assert [{k: r[k] for k in SAME} for r in log] == [{k: r[k] for k in SAME} for r in ref_log]
    assert got["real_steps_used"] == ref["real_steps_used"] and got["iterations"] == ref["iterations"]


@pytest.mark.slow
def test_diamond_killed_in_a_policy_stage_resumes_it_and_says_so(tmp_path, tiny_wm):
    """SIGKILL in the second iteration's policy stage, after its first checkpoint; the re-run takes
    the first iteration from the log, resumes that stage from its checkpoint, and ends with the
    policy and the log of an uninterrupted run."""
    from dreamgym.policies.diamond import diamond, run

    ref = diamond(_diamond_cfg(tmp_path / "ref", tiny_wm))
    ref_log = _lines(tmp_path / "ref" / "log.jsonl")
    assert ref["iterations"] == len(ref_log) >= 2
    assert all(r["stages"] == {"collect": "new", "world_model": "new", "policy": "new"} for r in ref_log)
    out = tmp_path / "run"
    cfg = _diamond_cfg(out, tiny_wm)
    stage = out / "iter_01" / "policy"
    _fork_and_kill(lambda: run(cfg), lambda: bool(list(stage.glob("checkpoints/step-*/state.json"))))
    assert len(_lines(out / "log.jsonl")) == 1 and not (out / "summary.json").exists()
    assert not (stage / "policy.safetensors").exists(), "a killed stage leaves no policy"
    got = diamond(cfg)
    log = _lines(out / "log.jsonl")
    assert log[1]["stages"]["collect"] == "stored" and log[1]["stages"]["world_model"] == "done earlier"
    assert log[1]["stages"]["policy"].startswith("resumed from step ")
    assert 64 <= int(log[1]["stages"]["policy"].split()[-1]) < 256
    _assert_same_loop(got, ref, out, tmp_path / "ref")


@pytest.mark.slow
def test_diamond_killed_in_a_policy_stage_before_its_checkpoint_restarts_it(tmp_path, tiny_wm):
    """With no policy checkpoint yet (the default: checkpoint_every > policy_steps) the killed
    stage starts again from its beginning, says so, and the loop ends as an uninterrupted one."""
    from dreamgym.policies.diamond import diamond, run

    ref = diamond(_diamond_cfg(tmp_path / "ref", tiny_wm, checkpoint_every=100_000))
    out = tmp_path / "run"
    cfg = _diamond_cfg(out, tiny_wm, checkpoint_every=100_000)
    _fork_and_kill(lambda: run(cfg), lambda: (out / "iter_01" / "policy" / "run.json").exists())
    assert not list(out.glob("iter_01/policy/checkpoints/step-*")) and not (out / "iter_01" / "policy" / "policy.safetensors").exists()
    got = diamond(cfg)
    assert _lines(out / "log.jsonl")[1]["stages"] == {"collect": "stored", "world_model": "done earlier", "policy": "restarted"}
    _assert_same_loop(got, ref, out, tmp_path / "ref")
