"""eval-wm's baselines: shapes, constant velocity on a constant-velocity body, and the geometric
baselines as the world model's own warp bases (reproject-only, analytic grid)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_eval_wm import CopyLast, Kinematic, synthetic_episodes, yaw_quat

from dreamgym.envs.motion import JOINT_POS, ROOT_POS, ROOT_QUAT
from dreamgym.worldmodel import data as D
from dreamgym.worldmodel.baselines import (
    MODALITIES,
    ConstantVelocityBaseline,
    GeometricBaseline,
    HoldLastBaseline,
    constant_velocity_step,
    reproject_frame,
)
from dreamgym.worldmodel.eval_replay import evaluate_replay
from dreamgym.worldmodel.eval_tasks import sample_starts
from dreamgym.worldmodel.evaluate import simulate_episodes
from dreamgym.worldmodel.warp import warp_frame


def _context(ep, t0: int, K: int, B: int = 2) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ctx = {k: torch.as_tensor(ep.obs[k][t0 - K + 1 : t0 + 1])[None].repeat(B, *([1] * ep.obs[k].ndim)) for k in MODALITIES}
    return ctx, torch.as_tensor(ep.actions[t0 - K + 1 : t0 + 1])[None].repeat(B, 1, 1)


@pytest.mark.parametrize("make", [HoldLastBaseline, ConstantVelocityBaseline, lambda: GeometricBaseline(Kinematic(3, 16))])
def test_every_baseline_returns_the_next_step_in_env_shapes_and_dtypes(make):
    ep = synthetic_episodes((20,))[0]
    ctx, acts = _context(ep, 10, 3)
    baseline = make()
    ctx |= getattr(baseline, "scene_memory", lambda c: {})(ctx)
    out = baseline.imagine(ctx, acts, modalities=list(MODALITIES))
    for k in MODALITIES:
        assert out[k].shape == ctx[k][:, -1].shape and out[k].dtype == ctx[k].dtype, k
    assert out["reward"].shape == (2,) and out["terminated"].dtype == torch.bool
    assert set(baseline.imagine(ctx, acts, modalities=["motion"])) == {"motion", "reward", "terminated"}


def _constant_velocity_episode(T: int = 40) -> list:
    """Both bodies at constant velocity: root 0.05 m/step along x and -0.02 along y, heading +0.07
    rad/step (crossing +-pi), every joint position drifting 1 mm/step in the root frame."""
    ep = synthetic_episodes((T,))[0]
    t = torch.arange(T, dtype=torch.float32)
    for k, (y0, w) in (("motion", (2.5, 0.07)), ("partner_motion", (-1.0, -0.05))):
        m = torch.as_tensor(ep.obs[k]).clone()
        m[:, ROOT_POS] = torch.stack((0.05 * t, -0.02 * t, torch.full_like(t, 0.9)), 1)
        m[:, ROOT_QUAT] = yaw_quat(torch.remainder(y0 + w * t + math.pi, 2 * math.pi) - math.pi)
        m[:, JOINT_POS] = m[0, JOINT_POS] + 0.001 * t[:, None]
        ep.obs[k] = m.numpy()
    return [ep]


def test_constant_velocity_is_exact_on_a_constant_velocity_body():
    eps = _constant_velocity_episode()
    starts = sample_starts(eps, [0], 3, 16, None)
    mods = ["motion", "partner_motion", "props"]
    cv = evaluate_replay(ConstantVelocityBaseline(), eps, starts, 3, [1, 4, 16], mods, progress=False)["model"].values
    hold = evaluate_replay(HoldLastBaseline(), eps, starts, 3, [1, 4, 16], mods, progress=False)["model"].values
    for name, tol in (("root_trans_err_m", 1e-5), ("root_rot_err_rad", 2e-3), ("mpjpe_mm", 1e-2), ("partner_mpjpe_mm", 1e-2)):
        assert np.nanmax(cv[name]) < tol, name
        assert np.nanmean(hold[name][:, 2]) > 100 * tol, name
    assert np.nanmax(cv["partner_root_trans_err_m"]) < 1e-5
    np.testing.assert_array_equal(cv["props_err_m"], hold["props_err_m"])  # props held


def test_constant_velocity_step_extrapolates_position_heading_and_joints_only():
    prev, last = torch.randn(3, 227), torch.randn(3, 227)
    for m, yaw in ((prev, 0.3), (last, 0.5)):
        m[:, ROOT_QUAT] = yaw_quat(torch.full((3,), yaw))
    nxt = constant_velocity_step(prev, last)
    assert torch.allclose(nxt[:, ROOT_POS], 2 * last[:, ROOT_POS] - prev[:, ROOT_POS])
    assert torch.allclose(nxt[:, ROOT_QUAT], yaw_quat(torch.full((3,), 0.7)), atol=1e-6)
    assert torch.allclose(nxt[:, JOINT_POS], 2 * last[:, JOINT_POS] - prev[:, JOINT_POS])
    assert torch.equal(nxt[:, JOINT_POS.stop :], last[:, JOINT_POS.stop :])


@pytest.fixture(scope="module")
def walking_episode():
    return simulate_episodes("reach", [5101], steps=10, resolution=16, policy="expert", seed=0)[0]


def test_geometric_baselines_are_the_world_models_own_warp_bases(walking_episode, tmp_path):
    """Step 1 (memory = the last real frame): reproject-only is exactly the frame the model's
    ``frame_base`` builds from the same dreamed motion, and the analytic grid its ``occupancy_base``."""
    from test_eval_wm import _tiny_world_model

    from dreamgym.worldmodel.model import WorldModel

    model = WorldModel.from_pretrained(_tiny_world_model(tmp_path / "ck", 16))
    ctx, acts = _context(walking_episode, 4, 2)
    geo = GeometricBaseline(model)
    full = ctx | geo.scene_memory(ctx)
    out = geo.imagine(full, acts, modalities=list(MODALITIES))
    state = model.imagine(ctx, acts, num_steps=1, init_noise=0.0, modalities=["motion", "partner_motion", "props"])
    assert torch.equal(out["motion"], state["motion"]) and torch.equal(out["partner_motion"], state["partner_motion"])
    enc = model.encode_context(full, acts, ["ego", "occupancy"])
    model.frame_base(enc, out["motion"])
    assert torch.equal(out["ego_rgb"], enc["ego_base_rgb"].round().clamp(0, 255).to(torch.uint8))
    assert torch.allclose(out["ego_depth"], enc["ego_base_depth"])
    model.occupancy_base(enc, out["motion"], out["partner_motion"])
    assert torch.equal(D.occupancy_to_model(out["occupancy"]), enc["occupancy_base_model"])


def test_reproject_only_shows_the_warped_start_frame_wherever_it_covers(walking_episode):
    """Step 2 on: the last (dreamed) frame gives way to the real start frame (the memory)
    reprojected to the dreamed head pose, wherever that covers."""
    ctx, acts = _context(walking_episode, 4, 3)
    geo = GeometricBaseline(Kinematic(3, 16))
    full = ctx | geo.scene_memory(ctx)
    step = geo.imagine(full, acts, modalities=list(MODALITIES))
    nxt = {k: torch.cat((full[k][:, 1:], step[k][:, None]), 1) for k in MODALITIES} | geo.scene_memory(ctx)
    acts2 = torch.cat((acts[:, 1:], acts[:, -1:]), 1)
    out = geo.imagine(nxt, acts2, modalities=list(MODALITIES))
    mr, md, mv = warp_frame(ctx["ego_rgb"][:, -1], ctx["ego_depth"][:, -1], ctx["motion"][:, -1], out["motion"])
    assert float(mv.float().mean()) > 0.5
    m3 = mv.expand_as(mr)
    assert torch.equal(out["ego_rgb"][m3], mr.round().clamp(0, 255).to(torch.uint8)[m3])
    rgb, _, valid = reproject_frame(nxt["ego_rgb"][:, -1], nxt["ego_depth"][:, -1], nxt["motion"][:, -1], out["motion"], nxt)
    assert torch.equal(out["ego_rgb"], rgb.round().clamp(0, 255).to(torch.uint8)) and bool((valid | ~mv).all())


def test_the_geometric_baseline_uses_the_models_conditional_mean_motion():
    class RecordsSampler(CopyLast):
        calls: list = []

        def imagine(self, context, actions, num_steps=1, modalities=None, generator=None, **sampler):
            self.calls.append((num_steps, sampler.get("init_noise"), tuple(modalities)))
            return super().imagine(context, actions, num_steps, modalities, generator)

    ep = synthetic_episodes((20,))[0]
    ctx, acts = _context(ep, 10, 3)
    model = RecordsSampler(3, 16)
    GeometricBaseline(model).imagine(ctx, acts, modalities=list(MODALITIES))
    assert model.calls == [(1, 0.0, ("motion", "partner_motion", "props"))]


def test_following_the_conditional_mean_dreams_what_the_standalone_baseline_dreams(walking_episode, tmp_path):
    """The evaluation rolls the geometric baselines out in the conditional-mean arm's pass (the
    model dreams its state first): the same values as rolling them out on their own."""
    from test_eval_wm import _tiny_world_model

    from dreamgym.worldmodel.baselines import state_pass_first
    from dreamgym.worldmodel.model import WorldModel

    model = WorldModel.from_pretrained(_tiny_world_model(tmp_path / "ck", 16))
    eps = [walking_episode]
    mods = list(MODALITIES)
    assert state_pass_first(model, mods) and not state_pass_first(CopyLast(2, 16), mods)
    starts = sample_starts(eps, [0], 2, 6, None)
    common = dict(context=2, horizons=[1, 3, 6], modalities=mods, batch_size=4, progress=False, stop_after={"ego_rgb": 3, "ego_depth": 3})
    mean = {"num_steps": 1, "init_noise": 0.0}
    ridden = evaluate_replay(model, eps, starts, imagine_kwargs=mean, riders={"geo": GeometricBaseline(model)}, **common)["geo"]
    alone = evaluate_replay(GeometricBaseline(model), eps, starts, **common)["model"]
    assert set(ridden.values) == set(alone.values) and {"psnr_db", "occ_counts", "mpjpe_mm"} <= set(alone.values)
    for name, v in alone.values.items():
        np.testing.assert_allclose(ridden.values[name], v, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.isnan(alone.values["psnr_db"][:, 2]).all() and np.isfinite(alone.values["mpjpe_mm"][:, 0]).all()
