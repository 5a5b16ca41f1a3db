"""The sampler's ``precision``: the denoiser network under bfloat16 autocast, what it changes,
"auto" choosing it only where the device multiplies bfloat16 natively, and eval-wm scoring a
reduced precision beside the same sampler in float32."""

from __future__ import annotations

import dataclasses

import pytest
import torch

# helpers shared with the eval-wm tests (pytest puts tests/ on sys.path)
from test_eval_wm import CopyLast, synthetic_episodes

from dreamgym.worldmodel.config import ConfigError, SamplerConfig
from dreamgym.worldmodel.evaluate import FLOAT32_ARM, evaluate
from dreamgym.worldmodel.sampling import native_bfloat16, network_dtype, network_precision


def test_an_unknown_precision_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"precision = 'float16' is invalid \(expected one of \['auto', 'float32', 'bfloat16'\]\)") as e:
        SamplerConfig(precision="float16")
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def shipped():
    from dreamgym.worldmodel.model import load_default

    torch.set_num_threads(1)
    return load_default()


def _one_frame_step(model, sampler: SamplerConfig, seen: list) -> dict[str, torch.Tensor]:
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    model.sampler = sampler
    keys = ["ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy"]
    env = DreamVecEnv(model, num_envs=2, task="push", obs_keys=keys, seed=3, return_tensors=True)
    env.reset_tensors(seed=3)
    hook = model.transformer.blocks[0].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        obs, *_ = env.step_tensors(torch.tensor([[0.8, 0.0, 0.3, 0.0, 0.0, 0.0], [0.0, 0.5, -0.4, 0.0, 0.0, 0.0]]))
    finally:
        hook.remove()
        env.close()
    return obs


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether the CPU "has" native bfloat16 (``set(True)``), whatever this machine's is."""

    def set_native(flag: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: flag, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)

    return set_native


def test_auto_precision_is_bfloat16_only_where_the_device_multiplies_it_natively(cpu_bf16):
    auto = SamplerConfig(precision="auto")
    assert SamplerConfig().precision == "auto"
    cpu_bf16(True)
    assert native_bfloat16("cpu") and network_dtype(auto, "cpu") == "bfloat16"
    with network_precision(auto, torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    cpu_bf16(False)  # AVX2 only: bfloat16 would be emulated, several times slower than float32
    assert not native_bfloat16("cpu") and network_dtype(auto, "cpu") == "float32"
    with network_precision(auto, torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    # a fixed setting is what it says on any device
    assert network_dtype(SamplerConfig(precision="bfloat16"), "cpu") == "bfloat16"
    assert network_dtype(SamplerConfig(precision="float32"), "cpu") == "float32"


def test_the_dream_env_records_the_precision_its_network_ran_in(shipped, cpu_bf16):
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    for native, want in ((True, "bfloat16"), (False, "float32")):
        cpu_bf16(native)
        env = DreamVecEnv(shipped, num_envs=1, task="reach", obs_keys=["motion"], seed=0, return_tensors=True)
        try:
            assert env.sampler_info["precision"] == "auto" and env.sampler_info["network_precision"] == want
        finally:
            env.close()


def test_the_shipped_sampler_runs_its_network_in_bfloat16_close_to_float32(shipped, cpu_bf16):
    ship = shipped.sampler
    assert ship.precision == "auto", "the shipped sampler.json (the one eval-wm scored) picks bfloat16 where it is native"
    cpu_bf16(True)
    try:
        seen_low, seen_full = [], []
        low = _one_frame_step(shipped, ship, seen_low)
        full = _one_frame_step(shipped, dataclasses.replace(ship, precision="float32"), seen_full)
    finally:
        shipped.sampler = ship
    assert seen_low and set(seen_low) == {torch.bfloat16} and set(seen_full) == {torch.float32}
    # the same dtypes come out, and the same step to within what bfloat16's 8-bit mantissa allows
    assert all(low[k].dtype == full[k].dtype and low[k].shape == full[k].shape for k in full)
    assert torch.equal(low["motion"], full["motion"])  # the agent's body is the state prior's (float32)
    partner = (low["partner_motion"] - full["partner_motion"]).abs()
    assert 0 < partner.max() < 0.05
    rgb = (low["ego_rgb"].float() - full["ego_rgb"].float()).abs()
    assert rgb.mean() < 2.0 and rgb.max() < 64
    assert (low["occupancy"] != full["occupancy"]).float().mean() < 0.01


class LowPrecision(CopyLast):
    """A stand-in whose sampler says bfloat16: its dreamed partner is rounded to bfloat16 unless
    the call's sampler asks for float32."""

    sampler = SamplerConfig(num_steps=2, init_noise=1.0, precision="bfloat16")
    calls: list[str]

    def imagine(self, context, actions, num_steps=None, modalities=None, generator=None, sampler=None, **other):
        out = super().imagine(context, actions, 1, modalities, generator)
        s = sampler or self.sampler
        self.calls.append(s.precision)
        if s.precision == "bfloat16" and "partner_motion" in out:
            out["partner_motion"] = (out["partner_motion"] + 3e-3).bfloat16().float()
        return out


def test_eval_wm_scores_the_shipped_precision_beside_float32(tmp_path):
    model = LowPrecision(3)
    model.calls = []
    res = evaluate(model, synthetic_episodes((30, 40)), tmp_path, horizons=[1, 4], frame_horizon=4, starts_per_task=12, best_of=2,
                   best_of_starts=3, best_of_batch=2, counterfactual=None, num_videos=0, resamples=100)  # fmt: skip
    sec = res["tasks"]["reach"]
    assert set(sec["model"]) == {"sampler", FLOAT32_ARM, "mean"}
    assert {"bfloat16", "float32"} <= set(model.calls)
    prec = sec["precision"]
    assert prec["sampler"] == "bfloat16" and prec["against"] == FLOAT32_ARM
    t = prec["tests"]["partner_mpjpe_mm"][0]
    assert t["n"] == 12 and t["diff"] > 0  # the rounded partner is further from the truth
    assert "Precision: the sampler's network in bfloat16 against the same sampler in float32" in (tmp_path / "tables.md").read_text()


def test_eval_wm_adds_no_float32_arm_where_auto_resolves_to_float32(tmp_path, cpu_bf16):
    cpu_bf16(False)
    model = LowPrecision(3)
    model.sampler = dataclasses.replace(LowPrecision.sampler, precision="auto")
    model.calls = []
    res = evaluate(model, synthetic_episodes((30, 40)), tmp_path, horizons=[1, 4], frame_horizon=4, starts_per_task=6, best_of=2,
                   best_of_starts=3, best_of_batch=2, counterfactual=None, num_videos=0, resamples=50)  # fmt: skip
    assert set(res["tasks"]["reach"]["model"]) == {"sampler", "mean"} and "precision" not in res["tasks"]["reach"]
    assert res["network_precision"] == "float32"
