"""Every path that dreams samples with the world model's own sampler (its ``sampler.json``, the one
``eval-wm`` scores) unless the user overrides it, and records the sampler it used.

The shipped model is given a noisy few-step sampler here, so that a path forcing its own step
count or noise would dream something else and fail."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

# helpers shared with the viewer's tests (pytest puts tests/ on sys.path)
from test_viewer import PROP_QPOS, save_tiny_world_model, synthetic_episode, write_run, write_tiny_dataset

from dreamgym.app.cli import Refused, main
from dreamgym.configs import compose
from dreamgym.worldmodel.config import SamplerConfig
from dreamgym.worldmodel.model import WorldModel, load_default

STATE = ["motion", "partner_motion", "props"]
# explicit steps or noise set every pass's: the frame pass's own settings are cleared
NO_FRAME_PASS = {"frame_num_steps": None, "frame_init_noise": None}


def noisy(sampler: SamplerConfig) -> SamplerConfig:
    """A few-step sampler with noise, as a shipped model may carry."""
    return dataclasses.replace(sampler, num_steps=2, init_noise=1.0, sigma_min=0.5)


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.set_num_threads(1)
    m = load_default()
    m.sampler = noisy(m.sampler)
    return m


@pytest.fixture
def calls(model, monkeypatch) -> list[dict]:
    """Each ``model.imagine`` call: the sampler it used, its (cloned) inputs and its output."""
    seen: list[dict] = []
    inner = model.imagine

    def imagine(context, actions, num_steps=None, init_noise=None, sampler=None, **kw):
        out = inner(context, actions, num_steps=num_steps, init_noise=init_noise, sampler=sampler, **kw)
        used = model.sampler_for(sampler, num_steps, init_noise)
        seen.append(
            {"sampler": used, "context": {k: v.clone() for k, v in context.items()}, "actions": actions.clone(), "kw": kw, "out": out}
        )
        return out

    monkeypatch.setattr(model, "imagine", imagine)
    return seen


def _again(model: WorldModel, call: dict, seed: int, **sampling) -> dict[str, torch.Tensor]:
    """The recorded call repeated with another noise seed (and ``sampling`` overrides)."""
    kw = {k: v for k, v in call["kw"].items() if k != "generator"}
    return WorldModel.imagine(model, call["context"], call["actions"], generator=torch.Generator().manual_seed(seed), **kw, **sampling)


# ------------------------------------------------------------------------------ the dream env
def test_the_dream_env_dreams_with_the_models_own_sampler(model, calls):
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    env = DreamVecEnv(model, num_envs=2, task="reach", obs_keys=["motion", "task_obs"], seed=0, return_tensors=True)
    from dreamgym.worldmodel.sampling import network_dtype

    assert env.sampler == model.sampler
    assert env.sampler_info == model.sampler.to_dict() | {"network_precision": network_dtype(model.sampler, "cpu")}
    env.reset_tensors(seed=0)
    obs, *_ = env.step_tensors(torch.zeros(2, 6))
    assert [c["sampler"] for c in calls] == [model.sampler]
    assert torch.equal(obs["motion"], calls[0]["out"]["motion"])
    # the noise is real: another seed dreams another step
    # (the partner's body is sampled; the agent's follows its action when sample_agent is false)
    assert not torch.equal(_again(model, calls[0], seed=7, sampler=model.sampler)["partner_motion"], calls[0]["out"]["partner_motion"])
    env.close()


def test_one_step_from_no_noise_is_the_conditional_mean(model, calls):
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    env = DreamVecEnv(
        model, num_envs=2, task="reach", obs_keys=["motion", "task_obs"], seed=0, return_tensors=True, num_denoising_steps=1, init_noise=0
    )
    mean = dataclasses.replace(model.sampler, num_steps=1, init_noise=0.0, **NO_FRAME_PASS)
    assert env.sampler == mean and model.sampler.num_steps == 2, "the override is the env's, not the model's"
    env.reset_tensors(seed=0)
    env.step_tensors(torch.zeros(2, 6))
    assert [c["sampler"] for c in calls] == [mean]
    for seed in (1, 2):  # the mean does not depend on the noise
        again = _again(model, calls[0], seed, num_steps=1, init_noise=0.0)
        assert all(torch.equal(again[k], calls[0]["out"][k]) for k in ("motion", "partner_motion"))
    env.close()


def test_the_dream_env_refuses_bad_overrides_in_one_line(model):
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    for kw, named in (({"num_denoising_steps": 0}, "num_denoising_steps=0"), ({"init_noise": -1.0}, "init_noise=-1.0")):
        with pytest.raises(ValueError, match=named) as e:
            DreamVecEnv(model, num_envs=1, obs_keys=["motion"], **kw)
        assert "\n" not in str(e.value)


def test_the_policy_paths_dream_with_the_models_own_sampler(model, calls):
    from dreamgym.policies.evaluate import evaluate_in_dream
    from dreamgym.policies.train import make_env

    env = make_env("dream", "reach", 2, ("task_obs",), checkpoint=model)
    assert env.sampler == model.sampler
    env.close()
    r = evaluate_in_dream("expert", world_model=model, task="reach", episodes=2, horizon=2, progress=False)
    from dreamgym.worldmodel.sampling import network_dtype

    assert (
        r["sampler"] == model.sampler.to_dict() | {"network_precision": network_dtype(model.sampler, "cpu")}
        and calls
        and all(c["sampler"] == model.sampler for c in calls)
    )


# ------------------------------------------------------------------------------ viewer and export
def _state_episode(index: int):
    """A synthetic recorded episode with the state the shipped model dreams from (bodies, props)."""
    from dreamgym.avatars.episodes import DatasetEpisode

    ep = synthetic_episode(1 + 2 * index, index)
    props = np.stack([ep.qpos[:, a : a + 3] for a in PROP_QPOS], 1)
    obs = {"motion": ep.observations["motion"], "partner_motion": ep.observations["partner_motion"], "props": props}
    return DatasetEpisode(f"episode_{index:06d}", index, dict(ep.attrs), obs, ep.actions, ep.qpos)


def test_the_viewers_dream_uses_the_models_own_sampler(model, calls):
    from dreamgym.avatars.viewer.bundle import BundleSettings, dream_episodes, dream_sampler

    episodes = [_state_episode(0), _state_episode(1)]
    dreams = dream_episodes(model, episodes, steps=2, modalities=STATE)
    assert len(calls) == 2 and all(c["sampler"] == model.sampler for c in calls)
    assert all(np.isfinite(d.obs["motion"]).all() for d in dreams)
    assert dream_sampler(model, BundleSettings("data")) == model.sampler.to_dict()
    calls.clear()
    dream_episodes(model, episodes, steps=1, modalities=STATE, num_steps=1, init_noise=0.0)
    assert [c["sampler"] for c in calls] == [dataclasses.replace(model.sampler, num_steps=1, init_noise=0.0, **NO_FRAME_PASS)]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory) -> tuple[Path, SamplerConfig]:
    """An eval-wm run whose (tiny) checkpoint carries a noisy sampler in its sampler.json."""
    base = tmp_path_factory.mktemp("sampler")
    data = write_tiny_dataset(base / "data")
    ckpt = save_tiny_world_model(base / "wm", data)
    wm = WorldModel.from_pretrained(ckpt)
    wm.sampler = noisy(wm.sampler)
    wm.save_pretrained(ckpt)
    return write_run(base / "run", data, ckpt), wm.sampler


def test_view_and_export_default_to_the_models_own_sampler(noisy_run, tmp_path, monkeypatch):
    import dreamgym.avatars.viewer.bundle as bundle

    run, sampler = noisy_run
    assert compose("view", []).num_steps is None and compose("export", []).num_steps is None
    out = tmp_path / "out"
    assert main(["export", f"data={run}", f"out={out}", "progress=false", "dream_steps=2"]) == 0
    assert json.loads((out / "export.json").read_text())["sampler"] == sampler.to_dict()
    assert bundle.Bundle.load(run / "viewer").index["sampler"] == sampler.to_dict()
    # an override is a new bundle, recorded as such
    mean = tmp_path / "mean"
    assert main(["export", f"data={run}", f"out={mean}", "progress=false", "dream_steps=2", "num_steps=1", "init_noise=0"]) == 0
    assert json.loads((mean / "export.json").read_text())["sampler"] == dataclasses.asdict(
        dataclasses.replace(sampler, num_steps=1, init_noise=0.0, **NO_FRAME_PASS)
    )
    # the viewer passes its null defaults through (its bundle is the one above)
    seen = {}

    def resolve(path, **kw):
        seen.update(kw)
        raise ValueError("stopped here")

    monkeypatch.setattr(bundle, "resolve_bundle", resolve)
    with pytest.raises(SystemExit, match="stopped here"):
        main(["view", str(run), "port=0"])
    assert seen["num_steps"] is None and seen["init_noise"] is None


# ------------------------------------------------------------------------------ configs
SAMPLER_KEYS = {
    "train_policy": ("num_denoising_steps", "init_noise"),
    "eval_policy": ("num_denoising_steps", "init_noise"),
    "diamond": ("num_denoising_steps", "init_noise"),
    "bench/dream": ("num_denoising_steps", "init_noise"),
    "bench/transfer": ("num_denoising_steps", "init_noise"),
    "view": ("num_steps", "init_noise"),
    "export": ("num_steps", "init_noise"),
    "train_vla": ("dream_denoising_steps", "dream_init_noise"),
}


@pytest.mark.parametrize("config_name", sorted(SAMPLER_KEYS))
def test_every_dreaming_config_defaults_to_the_models_own_sampler(config_name):
    cfg = compose(config_name, [])
    assert [cfg[k] for k in SAMPLER_KEYS[config_name]] == [None, None]


COMMANDS = {
    "train_policy": ["train-policy"],
    "eval_policy": ["eval-policy", "expert", "env=dream"],
    "diamond": ["diamond"],
    "bench/dream": ["bench", "dream"],
    "bench/transfer": ["bench", "transfer"],
    "view": ["view"],
    "export": ["export"],
    "train_vla": ["train-vla"],
}


@pytest.mark.parametrize("config_name", sorted(SAMPLER_KEYS))
def test_a_bad_step_count_or_noise_is_refused_in_one_line(capsys, tmp_path, config_name):
    steps, noise = SAMPLER_KEYS[config_name]
    for override, expect in (
        (f"{steps}=0", f"{steps}=0 is out of range; {steps} must be > 0"),
        (f"{noise}=-1", f"{noise}=-1.0 is out of range; {noise} must be >= 0"),
    ):
        capsys.readouterr()
        with pytest.raises(Refused) as e:
            main([*COMMANDS[config_name], override, f"out={tmp_path / 'out'}"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("dreamgym")]
        assert e.value.code == 2 and err == [str(e.value)] and expect in err[0]
    assert not (tmp_path / "out").exists()
