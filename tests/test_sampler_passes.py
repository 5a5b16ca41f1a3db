"""The sampler's two passes: the state (bodies, props) and, given it, the frames and the grid, each
with its own steps and initial noise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dreamgym.worldmodel.config import ConfigError, SamplerConfig

torch.set_num_threads(1)


def _inputs():
    from safetensors.torch import load_file

    ref = load_file(str(Path(__file__).parent / "data" / "wm_default_reference.safetensors"))
    return {k.split(".", 1)[1]: v for k, v in ref.items() if k.startswith("input.")}


def test_the_frame_pass_has_its_own_steps_and_noise_and_explicit_arguments_set_both():
    from dreamgym.worldmodel.model import load_default

    m = load_default()
    s = SamplerConfig(num_steps=2, init_noise=1.0, sigma_min=0.5, frame_num_steps=1, frame_init_noise=0.0)
    f = m.frame_sampler(s)
    assert (f.num_steps, f.init_noise, f.sigma_min) == (1, 0.0, 0.5)
    unset = SamplerConfig(frame_num_steps=None, frame_init_noise=None)
    assert m.frame_sampler(unset) == unset  # unset: the state pass's settings
    m.sampler = s
    assert m.sampler_for() is s
    mean = m.sampler_for(num_steps=1, init_noise=0.0)
    assert (mean.num_steps, mean.init_noise, mean.frame_num_steps, mean.frame_init_noise) == (1, 0.0, None, None)


def test_frame_pass_settings_are_checked():
    with pytest.raises(ConfigError, match="frame_num_steps"):
        SamplerConfig(frame_num_steps=0)
    with pytest.raises(ConfigError, match="frame_init_noise"):
        SamplerConfig(frame_init_noise=-0.5)
    assert SamplerConfig.from_dict({"frame_num_steps": None, "frame_init_noise": None}).frame_num_steps is None


def test_a_sampled_step_differs_by_its_noise_in_the_bodies_and_frames_follow_the_frame_pass():
    """Noise in the state pass makes two samples' bodies differ; with a zero-noise one-step frame
    pass, a sample's frame equals the conditional-mean frame given that sample's bodies."""
    from dreamgym.worldmodel.model import load_default

    m = load_default()
    inp = _inputs()
    ctx = {k: inp[k] for k in ("ego_rgb", "ego_depth", "motion", "partner_motion", "props", "occupancy", "instruction")}
    a, pa = inp["actions"][:, :2], inp["partner_actions"][:, :2]
    s = SamplerConfig(num_steps=2, init_noise=1.0, sigma_min=0.5, frame_num_steps=1, frame_init_noise=0.0)
    one = m.imagine(ctx, a, partner_actions=pa, sampler=s, generator=torch.Generator().manual_seed(0))
    two = m.imagine(ctx, a, partner_actions=pa, sampler=s, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(one["partner_motion"], two["partner_motion"])
    given = {k: one[k] for k in ("motion", "partner_motion", "props")}
    frame = m.imagine(ctx, a, partner_actions=pa, given=given, num_steps=1, init_noise=0.0, modalities=["ego_rgb", "ego_depth"])
    # (the given bodies go through the normalisation once more: a few grey levels apart at most)
    diff = (frame["ego_rgb"].int() - one["ego_rgb"].int()).abs()
    assert float(diff.float().mean()) < 0.5 and int(diff.max()) <= 8
    # one step from any noise: the bodies are the prior's estimate, as in the conditional mean
    mean = m.imagine(ctx, a, partner_actions=pa, num_steps=1, init_noise=0.0, modalities=["motion", "partner_motion"])
    noisy = m.imagine(ctx, a, partner_actions=pa, sampler=dataclasses.replace(s, num_steps=1), modalities=["motion", "partner_motion"])
    for k in ("motion", "partner_motion"):
        assert torch.allclose(noisy[k], mean[k], atol=1e-5), k


def test_sample_agent_false_keeps_the_agent_at_its_mean_and_samples_the_partner():
    from dreamgym.worldmodel.model import load_default

    m = load_default()
    inp = _inputs()
    state = {k: inp[k] for k in ("motion", "partner_motion", "props", "instruction")}
    a, pa = inp["actions"][:, :2], inp["partner_actions"][:, :2]
    s = SamplerConfig(num_steps=2, init_noise=1.0, sigma_min=0.5, sample_agent=False)
    keys = ["motion", "partner_motion", "props"]
    one, two = (
        m.imagine(state, a, partner_actions=pa, sampler=s, modalities=keys, generator=torch.Generator().manual_seed(i)) for i in (0, 1)
    )
    mean = m.imagine(state, a, partner_actions=pa, num_steps=1, init_noise=0.0, modalities=keys)
    assert torch.allclose(one["motion"], mean["motion"], atol=1e-5) and torch.allclose(two["motion"], mean["motion"], atol=1e-5)
    assert not torch.allclose(one["partner_motion"], two["partner_motion"])


def test_an_older_sampler_json_samples_as_it_did(tmp_path):
    """A format-3 sampler.json predates the frame pass's settings and sample_agent: it loads with
    one schedule for every modality, the agent sampled too, whatever the current defaults are."""
    import json
    import shutil

    from dreamgym.worldmodel.checkpoint import read_configs
    from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT

    shutil.copy(DEFAULT_CHECKPOINT / "config.json", tmp_path / "config.json")
    old = {"format_version": 3, "num_steps": 3, "init_noise": 1.0, "sigma_min": 0.002, "rho": 7.0}
    (tmp_path / "sampler.json").write_text(json.dumps(old))
    _, s = read_configs(tmp_path / "config.json")
    assert (s.num_steps, s.frame_num_steps, s.frame_init_noise, s.sample_agent) == (3, None, None, True)
    assert s.precision == "float32"  # its network ran in full precision
    # a format-4 file written before ``precision`` existed samples in float32 too
    (tmp_path / "sampler.json").write_text(json.dumps(old | {"format_version": 4}))
    assert read_configs(tmp_path / "config.json")[1].precision == "float32"
