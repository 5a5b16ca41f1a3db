"""Policies: the Policy interface and loaders, evaluation with intervals, training in real and dream
envs through the same SB3 code, the DIAMOND loop.

World models here are tiny, randomly initialised and state-only (what state-based policies need);
every env has 8 worlds so that Warp compiles its kernels for one batch size only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamgym.policies.base import ExpertPolicy, Policy, RandomPolicy, SB3Policy, load_policy, register_policy_loader
from dreamgym.policies.evaluate import HELDOUT_ROOM_BASE, evaluate_policies, heldout_rooms, t_interval, wilson_interval
from dreamgym.worldmodel.sampling import network_dtype

torch.set_num_threads(1)  # the machine is shared

B = 8
OBS_KEYS = ["task_obs", "motion"]


@pytest.fixture(scope="module")
def tiny_wm(tmp_path_factory):
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(
        resolution=16,
        data_resolution=32,
        context=2,
        modalities=["motion", "partner_motion", "props"],
        ego_warp=False,  # no frames or grid to warp
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


def _train_cfg(env: str, out, algo: str = "ppo", checkpoint=None, steps: int = 64, init=None):
    from dreamgym.configs import compose

    return compose(
        "train_policy",
        [
            f"env={env}",
            f"algo={algo}",
            f"out={out}",
            f"steps={steps}",
            f"num_envs={B}",
            "progress=false",
            "stats_steps=2",
            "ppo.n_steps=8",
            "ppo.batch_size=32",
            "ppo.n_epochs=2",
            "sac.learning_starts=16",
            "sac.gradient_steps=1",
            "sac.batch_size=32",
            "num_threads=1",
            "checkpoint_every=1000000",
            "obs_keys=[task_obs,motion]",
            *([f"checkpoint={checkpoint}"] if checkpoint else []),
            *([f"init={init}"] if init else []),
        ],
    )


# ----------------------------------------------------------------------------- statistics and loaders
def test_intervals_match_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and 0.1 < wilson_interval(0, 20)[1] < 0.2
    lo, hi = t_interval([1.0, 2.0, 3.0, 4.0])
    assert (lo + hi) / 2 == pytest.approx(2.5) and hi - 2.5 == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-4)
    assert t_interval([5.0, 5.0, 5.0]) == (5.0, 5.0)


def test_heldout_rooms_are_above_every_training_draw():
    rooms = heldout_rooms(100, seed=3)
    assert min(rooms) >= HELDOUT_ROOM_BASE > 2**31 - 2 and len(set(rooms)) == 100
    assert set(rooms).isdisjoint(heldout_rooms(100, seed=4))
    with pytest.raises(ValueError, match="seed must be >= 0"):
        heldout_rooms(3, seed=-1)


def test_load_policy_builtins_registry_and_errors(tmp_path):
    assert isinstance(load_policy("expert"), ExpertPolicy) and isinstance(load_policy("random"), RandomPolicy)
    a = load_policy("random").act({"task_obs": torch.zeros(5, 8)})
    assert a.shape == (5, 6) and a.abs().max() <= 1
    with pytest.raises(RuntimeError, match="before bind"):
        ExpertPolicy().act({"task_obs": torch.zeros(2, 8)})
    with pytest.raises(FileNotFoundError, match="neither 'expert', 'random'"):
        load_policy(tmp_path / "nothing.zip")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="no policy loader recognises"):
        load_policy(tmp_path / "weights.bin")

    class Still:
        obs_keys = ("task_obs",)

        def act(self, obs, deterministic=True):
            return torch.zeros(obs["task_obs"].shape[0], 6)

    assert isinstance(Still(), Policy)
    d = tmp_path / "still"
    d.mkdir()
    (d / "policy.json").write_text(json.dumps({"family": "still-test"}))
    with pytest.raises(ValueError, match="'still-test' is not registered"):
        load_policy(d)
    register_policy_loader("still-test", matches=lambda p: False, load=lambda p, task=None, device="cpu": Still())
    assert isinstance(load_policy(d), Still)


# ----------------------------------------------------------------------------- evaluation
def test_eval_policy_expert_beats_random_with_intervals():
    res = evaluate_policies({"expert": "expert", "random": "random"}, task="reach", episodes=B // 2, seed=0, progress=False)
    ex, rnd = res["expert"], res["random"]
    for r in (ex, rnd):
        assert r["episodes"] == B // 2
        assert r["return_ci95"][0] <= r["mean_return"] <= r["return_ci95"][1]
        assert r["success_ci95"][0] <= r["success_rate"] <= r["success_ci95"][1]
    assert ex["success_rate"] >= 0.75 and rnd["success_rate"] <= 0.25
    assert ex["mean_return"] > rnd["return_ci95"][1] and ex["return_ci95"][0] > rnd["mean_return"]
    assert ex["mean_length"] < rnd["mean_length"]  # the expert's episodes end on success


def test_eval_policy_command_writes_json(tmp_path):
    from dreamgym.app.cli import main

    out = tmp_path / "eval.json"
    # positional form (policy= works too)
    assert main(["eval-policy", "expert", "episodes=8", "progress=false", "num_threads=1", f"out={out}"]) == 0
    r = json.loads(out.read_text())
    assert r["policy"] == "expert" and r["env"] == "real" and r["episodes"] == 8 and r["success_rate"] > 0.5
    assert {"mean_return", "return_ci95", "success_rate", "success_ci95"} <= set(r)


# ----------------------------------------------------------------------------- one SB3 policy, two envs
def _drive(venv, model, steps: int) -> tuple[np.ndarray, list]:
    """The policy loop of both envs (the same code): SB3 VecEnv API, SB3 predict."""
    obs = venv.reset()
    total = np.zeros(venv.num_envs)
    for _ in range(steps):
        act, _ = model.predict(obs, deterministic=True)
        obs, rew, done, infos = venv.step(act)
        total += rew
    return total, infos


def test_same_sb3_policy_runs_in_real_and_dream_envs(tiny_wm):
    from stable_baselines3 import PPO

    from dreamgym.envs.sb3 import SB3VecEnv
    from dreamgym.policies.train import make_env

    real = SB3VecEnv(make_env("real", "reach", B, OBS_KEYS, seed=0))
    dream = SB3VecEnv(make_env("dream", "reach", B, OBS_KEYS, seed=0, checkpoint=tiny_wm))
    assert real.observation_space == dream.observation_space and real.action_space == dream.action_space
    model = PPO("MultiInputPolicy", real, n_steps=8, batch_size=32, n_epochs=1, seed=0, device="cpu")
    for venv in (real, dream):
        model.set_env(venv)
        model.learn(16)  # SB3 collects and updates in either env
        total, infos = _drive(venv, model, 4)
        assert total.shape == (B,) and np.isfinite(total).all()
        assert len(infos) == B and all("is_success" in i for i in infos)
    # and through the Policy interface, on torch tensors
    pol = SB3Policy(model)
    for env in (real.env, dream.env):
        obs, _ = env.reset_tensors(seed=1)
        a = pol.act(obs)
        assert a.shape == (B, 6) and a.abs().max() <= 1
        env.step_tensors(a)


@pytest.mark.parametrize("env,algo", [("real", "ppo"), ("dream", "sac")])
def test_train_policy_gives_a_loadable_checkpoint(tmp_path, tiny_wm, env, algo):
    from dreamgym.policies.train import train_policy
    from dreamgym.worldmodel.model import WorldModel

    path = train_policy(_train_cfg(env, tmp_path / "run", algo, checkpoint=tiny_wm if env == "dream" else None))
    meta = json.loads((path.parent / "policy.json").read_text())
    assert meta["family"] == "sb3" and meta["algo"] == algo and meta["steps"] >= 64 and meta["obs_keys"] == OBS_KEYS
    if env == "real":
        assert meta["real_env_steps"] == meta["steps"] and meta["sampler"] is None
    else:  # every simulator step run for the dream's starts (K = 2: one per start), whole batches of B
        own = WorldModel.from_pretrained(tiny_wm).sampler  # the model's own: nothing overrode it
        assert meta["sampler"] == own.to_dict() | {"network_precision": network_dtype(own, "cpu")}
        assert meta["real_env_steps"] == meta["starts"]["real_steps"] >= B + meta["episodes"]
        assert meta["real_env_steps"] % B == 0 and meta["starts"]["kind"] == "simulator"
    assert list((tmp_path / "run" / "tb").iterdir())  # tensorboard logs
    assert path.name == "policy.safetensors" and json.loads((path.parent / "run.json").read_text())["status"] == "finished"
    for spec in (path, path.parent):  # the weights, or the run directory
        pol = load_policy(spec)
        assert isinstance(pol, SB3Policy) and pol.obs_keys == ("motion", "task_obs")  # the env's key order
        assert pol.algo == algo and type(pol.network).__module__.startswith("stable_baselines3")
        a = pol.act({"task_obs": torch.zeros(3, 8), "motion": torch.zeros(3, 227)})
        assert a.shape == (3, 6) and a.abs().max() <= 1


# ----------------------------------------------------------------------------- DIAMOND
def test_state_finetuning_changes_weights_and_loads(tmp_path, tiny_wm):
    """The DIAMOND-style loop's world-model update: the one trainer on collected episodes."""
    from dreamgym.policies.collect import collect_with_policy
    from dreamgym.worldmodel.dream_env import DreamVecEnv
    from dreamgym.worldmodel.model import WorldModel
    from dreamgym.worldmodel.trainer import TrainerOptions, state_finetune_config, train_world_model
    from dreamgym.worldmodel.windows import EpisodeSource

    eps, stats = collect_with_policy(RandomPolicy(), "reach", steps=4 * B, num_envs=B, seed=5, exploration_noise=0.0)
    assert stats["real_steps"] == 4 * B and sum(e["actions"].shape[0] for e in eps) == 4 * B
    keys = {"motion", "partner_motion", "props", "actions", "partner_actions", "rewards", "terminations", "instruction"}
    assert set(eps[0]) == keys
    opts = TrainerOptions(progress=False, eval_every=0, tensorboard=False)
    out = train_world_model(tiny_wm, EpisodeSource(eps), state_finetune_config(3, 4), tmp_path / "wm", options=opts)
    assert out == tmp_path / "wm" / "final"
    before, after = WorldModel.from_pretrained(tiny_wm).state_dict(), WorldModel.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    env = DreamVecEnv(out, num_envs=B, task="reach", obs_keys=OBS_KEYS, seed=0, return_tensors=True)
    env.reset_tensors(seed=0)
    obs, r, *_ = env.step_tensors(torch.zeros(B, 6))
    assert torch.isfinite(r).all()


def test_diamond_runs_on_the_shipped_default(tmp_path):
    """One iteration on the shipped world model (partner commands, state prior, props network):
    collection, its world-model update and a policy in its dream; a re-run continues, another
    configuration is refused."""
    from dreamgym.configs import compose
    from dreamgym.policies.diamond import diamond
    from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT, WorldModel

    over = [f"out={tmp_path / 'run'}", "budget=40", "collect_steps=24", f"collect_envs={B}", "wm.steps=1", "wm.batch_size=4"]
    over += ["policy_steps=64", f"num_envs={B}", "ppo.n_steps=8", "ppo.batch_size=32", "ppo.n_epochs=1", "eval_episodes=0"]
    over += ["progress=false", "num_threads=1", "stats_steps=2"]
    s = diamond(compose("diamond", over))
    assert s["iterations"] == 1 and s["real_steps_used"] <= 40
    wm = WorldModel.from_pretrained(s["world_model"])
    own = wm.sampler.to_dict() | {"network_precision": network_dtype(wm.sampler, "cpu")}
    assert s["sampler"] == own, "the policy dreamed with the updated model's own sampler"
    shipped = WorldModel.from_pretrained(DEFAULT_CHECKPOINT)
    assert wm.config == shipped.config and wm.config.partner_actions and wm.config.state_prior
    assert any(not torch.equal(v, shipped.state_dict()[k]) for k, v in wm.state_dict().items() if v.is_floating_point())
    (step,) = [json.loads(ln) for ln in (tmp_path / "run" / "iter_00" / "world_model" / "metrics.jsonl").read_text().splitlines()]
    assert step["branches"] == [] and np.isfinite(step["total"]) and {"prior_motion", "props_dynamics", "partner_motion"} <= set(step)
    again = diamond(compose("diamond", over))
    assert again["policy"] == s["policy"] and len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ValueError, match=r"another configuration \(budget: run 40, now 41\)"):
        diamond(compose("diamond", [*over, "budget=41"]))


@pytest.mark.slow
def test_diamond_loop_respects_the_budget(tmp_path, tiny_wm):
    from dreamgym.configs import compose
    from dreamgym.policies.diamond import diamond

    cfg = compose(
        "diamond",
        [
            f"out={tmp_path / 'run'}",
            f"checkpoint={tiny_wm}",
            "budget=200",
            "collect_steps=64",
            f"collect_envs={B}",
            "wm.steps=2",
            "wm.batch_size=4",
            "policy_steps=64",
            f"num_envs={B}",
            "ppo.n_steps=8",
            "ppo.batch_size=32",
            "ppo.n_epochs=1",
            "eval_episodes=0",
            "progress=false",
            "num_threads=1",
            "stats_steps=2",
        ],
    )
    s = diamond(cfg)
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert s["iterations"] == len(log) >= 2
    assert s["real_steps_used"] <= 200 and s["real_steps_used"] == log[-1]["real_steps_used"]
    assert log[1]["data_episodes"] >= log[0]["data_episodes"]
    assert isinstance(load_policy(s["policy"]), SB3Policy)


def test_runner_passes_the_infos_a_policy_asks_for(vec_env_factory):
    """``policy.info_inputs`` (argument -> info key): the runner hands each policy its own rows'
    utterances (strings) and scene objects (the props' xy, as in ``infos["objects"]``)."""
    from dreamgym.policies.evaluate import run_episodes

    env = vec_env_factory(num_envs=3, task="social", resolution=16, seed=0, obs_keys=["motion", "partner_motion"], return_tensors=True)
    seen = []

    class Listener:
        info_inputs = {"utterances": "utterance", "objects": "objects"}

        def act(self, obs, deterministic=True, utterances=None, objects=None):
            seen.append((list(utterances), objects.clone(), env.core.state.prop_pos[1:, :, :2].cpu().clone()))
            return torch.zeros(obs["motion"].shape[0], 6)

    env.core.task.max_steps, keep = 3, env.core.task.max_steps
    try:
        run_episodes(
            env, {"stand": (RandomPolicy(), torch.tensor([0])), "listen": (Listener(), torch.tensor([1, 2]))}, room_seeds=[5, 6, 7]
        )
    finally:
        env.core.task.max_steps = keep
    assert len(seen) >= 2
    utts, objects, props = seen[-1]
    assert len(utts) == 2 and all(isinstance(u, str) for u in utts)
    assert objects.shape == (2, 4, 2) and torch.allclose(objects.float(), props.float(), atol=1e-5)
