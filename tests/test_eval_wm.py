"""World-model evaluation: metrics against hand-computed values, the replay evaluation end to end
with stand-in models, and counterfactual controllability (the baselines: test_eval_baselines.py;
the statistics and the sampling plan: test_eval_stats.py; the speed benchmark: test_benchmarks.py)."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch

from dreamgym.envs.motion import JOINT_POS, ROOT_POS, ROOT_QUAT, quat_mul
from dreamgym.worldmodel import metrics as M
from dreamgym.worldmodel.baselines import HoldLastBaseline
from dreamgym.worldmodel.eval_tasks import task_seed
from dreamgym.worldmodel.evaluate import (
    Episode,
    action_sequences,
    check_compatible,
    counterfactual_scores,
    evaluate,
    model_spec,
    sample_starts,
    simulate_branches,
    simulate_episodes,
)

DT = 0.05  # control step, s


# ------------------------------------------------------------------------------------ stand-ins
def yaw_quat(yaw: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z) of rotations by ``yaw`` about z."""
    return torch.stack((torch.cos(yaw / 2), torch.zeros_like(yaw), torch.zeros_like(yaw), torch.sin(yaw / 2)), -1)


class CopyLast(HoldLastBaseline):
    """A stand-in world model: the copy-last baseline behind the WorldModel interface."""

    def __init__(self, context: int = 3, resolution: int = 16, modalities=None):
        super().__init__(modalities)
        self.config = types.SimpleNamespace(context=context, data_resolution=resolution, modalities=modalities)


class Kinematic(CopyLast):
    """Follows its actions: the root walks and turns at the controller's commanded rates."""

    def imagine(self, context, actions, num_steps=1, modalities=None, generator=None, **sampler):
        out = super().imagine(context, actions, num_steps, modalities, generator)
        m = out["motion"].clone()
        a = actions[:, -1].float()
        q = m[:, ROOT_QUAT]
        yaw = torch.atan2(2 * (q[:, 0] * q[:, 3] + q[:, 1] * q[:, 2]), 1 - 2 * (q[:, 2] ** 2 + q[:, 3] ** 2))
        fwd, lat = a[:, 0] * 1.2 * DT, a[:, 1] * 0.6 * DT
        m[:, 0] += torch.cos(yaw) * fwd - torch.sin(yaw) * lat
        m[:, 1] += torch.sin(yaw) * fwd + torch.cos(yaw) * lat
        m[:, ROOT_QUAT] = quat_mul(yaw_quat(a[:, 2] * 2.0 * DT), q)
        out["motion"] = m
        return out


class IgnoresActions(CopyLast):
    """Moves its root at random, whatever the action: no controllability."""

    def imagine(self, context, actions, num_steps=1, modalities=None, generator=None, **sampler):
        out = super().imagine(context, actions, num_steps, modalities, generator)
        step = torch.randn(actions.shape[0], 2, generator=generator) * 0.05
        out["motion"][:, :2] += step
        return out


# ------------------------------------------------------------------------------------ metrics
def test_psnr_of_a_known_noise_level():
    target = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    sign = torch.where(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5, -10, 10)
    pred = (target.int() + sign).to(torch.uint8)  # every pixel off by 10: MSE = 100
    expected = 10 * math.log10(255**2 / 100)
    assert torch.allclose(M.psnr(pred, target), torch.full((2,), expected), atol=1e-4)
    assert torch.allclose(M.psnr(target, target), torch.full((2,), M.PSNR_MAX_DB))
    with pytest.raises(ValueError, match=r"prediction has shape \(2, 3, 8, 8\), ground truth \(1, 3, 8, 8\)"):
        M.psnr(pred, target[:1])


def test_ssim_identical_constant_and_noisy_images():
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    assert torch.allclose(M.ssim(img, img), torch.ones(2), atol=1e-6)
    # Two flat images a and b: no variance, so SSIM is the luminance term (2ab + c1) / (a^2 + b^2 + c1).
    a, b = 100.0, 140.0
    c1 = (0.01 * 255) ** 2
    flat_a, flat_b = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    assert M.ssim(flat_a, flat_b).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    noisy = (img.float() + 40 * torch.randn(img.shape, generator=g)).clamp(0, 255)
    s = M.ssim(noisy, img.float())
    assert bool((s < 0.9).all()) and bool((s > 0).all())
    assert torch.allclose(s, M.ssim(img.float(), noisy), atol=1e-6), "SSIM is symmetric"


def test_depth_error_in_metres():
    d = torch.rand(3, 1, 8, 8) * 5
    assert torch.allclose(M.depth_abs_error(d + 0.5, d), torch.full((3,), 0.5), atol=1e-6)


def _motion(B: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    m = torch.randn(B, 227, generator=g)
    m[:, ROOT_QUAT] = yaw_quat(torch.tensor([0.2] * B))
    return m


def test_mpjpe_in_mm_ignores_the_root_position():
    t = _motion()
    p = t.clone()
    p[:, JOINT_POS] += torch.tensor([0.003, 0.004, 0.0]).repeat(22)  # every joint off by 5 mm
    p[:, ROOT_POS] += 10.0  # a root offset is not a pose error
    assert torch.allclose(M.mpjpe_mm(p, t), torch.full((2,), 5.0), atol=1e-3)
    # One joint off by 22 mm: the mean over 22 joints is 1 mm.
    p = t.clone()
    p[:, 7] += 0.022
    assert torch.allclose(M.mpjpe_mm(p, t), torch.full((2,), 1.0), atol=1e-3)


def test_root_translation_and_rotation_errors():
    t = _motion()
    p = t.clone()
    p[:, ROOT_POS] += torch.tensor([1.0, 2.0, 2.0])
    assert torch.allclose(M.root_translation_error(p, t), torch.full((2,), 3.0))
    p = t.clone()
    p[:, ROOT_QUAT] = yaw_quat(torch.tensor([0.2 + 0.3, 0.2 - 1.0]))
    assert torch.allclose(M.root_rotation_error(p, t), torch.tensor([0.3, 1.0]), atol=1e-5)
    # -q is the same rotation; an unnormalised prediction is normalised first.
    p[:, ROOT_QUAT] = -3.0 * t[:, ROOT_QUAT]
    assert torch.allclose(M.root_rotation_error(p, t), torch.zeros(2), atol=1e-3)


def test_occupancy_iou_and_miou_on_known_grids():
    target = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    pred = torch.zeros_like(target)
    target[0, 0, 0, :4] = 1  # 4 static voxels
    target[0, 1, 1, :2] = 3  # 2 partner voxels
    pred[0, 0, 0, :2] = 1  # 2 of the static voxels right
    pred[0, 0, 0, 2] = 2  # one static voxel called movable
    pred[0, 1, 1, :2] = 3  # the partner right
    pred[0, 1, 3, 3] = 4  # an agent voxel where there is none
    # occupied: target 6 voxels, pred 6 voxels, 5 in common (3 static cells + 2 partner) -> 5 / 7
    assert M.occupancy_iou(pred, target).item() == pytest.approx(5 / 7)
    c = M.occupancy_counts(pred, target)
    r = M.iou_from_counts(c)
    # classes: static 2/4, movable 0/1, partner 2/2, agent 0/1 -> mIoU = (0.5 + 0 + 1 + 0) / 4
    assert r["occ_iou"] == pytest.approx(5 / 7)
    assert r["occ_miou"] == pytest.approx(1.5 / 4)
    # Classes absent from both grids are left out of the mean.
    r = M.iou_from_counts(M.occupancy_counts(target, target))
    assert r == {"occ_iou": 1.0, "occ_miou": 1.0}
    # Dataset level: counts are summed over samples, not per-sample IoUs averaged.
    empty_hit = torch.zeros_like(target)
    empty_hit[0, 0, 0, 0] = 1
    both = M.occupancy_counts(torch.cat([pred, empty_hit]), torch.cat([target, empty_hit]))
    assert M.iou_from_counts(both)["occ_iou"] == pytest.approx(6 / 8)


# ------------------------------------------------------------------------------------ replay
def synthetic_episodes(lengths=(40, 12, 70), res: int = 16, tasks=None) -> list[Episode]:
    """Episodes whose copy-last errors are known in closed form: frame t is flat grey level t
    (PSNR at horizon h = 10 log10(255^2 / h^2)), the root walks 0.1 m and turns 0.01 rad per step,
    the props drift 0.02 m per step along each axis. Rooms unknown (no target object)."""
    g = np.random.default_rng(0)
    eps = []
    for n, T in enumerate(lengths):
        t = np.arange(T)
        motion = g.normal(size=(T, 227)).astype(np.float32)
        motion[:, 0:3] = np.stack([0.1 * t, np.zeros(T), np.full(T, 0.9)], 1)
        motion[:, 3:7] = yaw_quat(torch.as_tensor(0.01 * t, dtype=torch.float32)).numpy()
        occ = (g.random((T, 8, 32, 32)) < 0.05) * g.integers(1, 5, (T, 8, 32, 32))
        obs = {
            "ego_rgb": np.broadcast_to(t[:, None, None, None], (T, 3, res, res)).astype(np.uint8).copy(),
            "ego_depth": np.broadcast_to(1 + 0.01 * t[:, None, None, None], (T, 1, res, res)).astype(np.float32).copy(),
            "motion": motion,
            "partner_motion": g.normal(size=(T, 227)).astype(np.float32),
            "props": np.broadcast_to(0.02 * t[:, None, None], (T, 4, 3)).astype(np.float32).copy(),
            "occupancy": occ.astype(np.uint8),
        }
        actions = g.uniform(-1, 1, (T, 6)).astype(np.float32)
        task = "reach" if tasks is None else tasks[n]
        eps.append(
            Episode(obs, actions, room_seed=-1, task=task, name=f"synthetic{n}", instruction=n, rewards=(0.1 * t).astype(np.float32))
        )
    return eps


def test_eval_with_copy_last_stand_in_matches_the_baselines_and_closed_form(tmp_path):
    lengths = (40, 12, 70)
    eps = synthetic_episodes(lengths)
    model = CopyLast(context=3, resolution=16)
    horizons = [1, 4, 16, 64]
    res = evaluate(
        model,
        eps,
        tmp_path,
        horizons=horizons,
        frame_horizon=16,
        grid_horizon=16,
        starts_per_task=40,
        num_videos=2,
        counterfactual=None,
        resamples=200,
    )
    assert set(res) == {"horizons", "frame_horizon", "grid_horizon", "tasks", "network_precision", "counterfactual", "notes"}
    assert res["horizons"] == horizons and list(res["tasks"]) == ["reach"]
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    sec = res["tasks"]["reach"]
    m, b = sec["model"]["sampler"], sec["baselines"]
    assert sec["sampler_is_mean"] and sec["model"]["mean"] == m  # a stand-in without a sampler: one rollout
    assert set(b) == {"copy_last_frame", "hold_pose", "static_occupancy", "constant_velocity", "reproject_only", "analytic_grid"}
    # 40 of the 37 + 9 + 67 valid rows; horizon h is scored on the starts that last h steps
    starts = sample_starts(eps, range(3), 3, 64, 40, task_seed(0, "reach"))
    assert sec["num_starts"] == 40 and sec["num_samples"] == [sum(s.length >= h for s in starts) for h in horizons]
    for name in ("copy_last_frame", "hold_pose", "static_occupancy"):
        for metric, s in b[name].items():
            assert s == m[metric], f"{name} {metric}: the copy-last stand-in must score exactly as the baseline"
    assert set(b["copy_last_frame"]) == {"psnr_db", "ssim", "depth_abs_err_m"}
    assert m["psnr_db"]["value"][3] is None and m["psnr_db"]["n"][3] == 0, "frames are dreamed up to frame_horizon=16 only"
    assert m["occ_iou"]["value"][3] is None and m["mpjpe_mm"]["n"][3] == sec["num_samples"][3] > 0
    for j, h in enumerate(horizons):
        if h <= 16:
            assert m["psnr_db"]["value"][j] == pytest.approx(10 * math.log10(255**2 / h**2), rel=1e-5)
            assert m["psnr_db"]["n"][j] == sec["num_samples"][j]
            # the camera does not move under a held pose: reprojecting the flat frame gives it back
            assert b["reproject_only"]["psnr_db"]["value"][j] == pytest.approx(m["psnr_db"]["value"][j], rel=1e-5)
            assert m["depth_abs_err_m"]["value"][j] == pytest.approx(0.01 * h, rel=1e-3)
        assert m["root_trans_err_m"]["value"][j] == pytest.approx(0.1 * h, rel=1e-4)
        assert m["root_rot_err_rad"]["value"][j] == pytest.approx(0.01 * h, rel=1e-3)
        assert m["props_err_m"]["value"][j] == pytest.approx(0.02 * h * math.sqrt(3), rel=1e-4)
        for metric, s in m.items():
            lo, hi = s["ci"][j]
            if s["value"][j] is not None:
                assert lo - 1e-9 <= s["value"][j] <= hi + 1e-9, (metric, h)
    # The stand-in predicts reward 0; the reward of the transition into row t0 + h is 0.1 (t0 + h - 1).
    for j, h in enumerate(horizons):
        want = [0.1 * (s.t0 + h - 1) for s in starts if s.length >= h]
        assert m["reward_abs_err"]["value"][j] == pytest.approx(np.mean(want), rel=1e-5)
    # Occupancy IoU at h=1 from summed counts over all starts, computed independently; the per-start mean beside it.
    pred = torch.as_tensor(np.stack([eps[s.episode].obs["occupancy"][s.t0] for s in starts]))
    real = torch.as_tensor(np.stack([eps[s.episode].obs["occupancy"][s.t0 + 1] for s in starts]))
    assert m["occ_iou"]["value"][0] == pytest.approx(M.iou_from_counts(M.occupancy_counts(pred, real))["occ_iou"])
    assert m["occ_iou_start"]["value"][0] == pytest.approx(float(M.occupancy_iou(pred, real).mean()), rel=1e-5)
    # the model is a baseline here: it cannot beat the strongest one anywhere
    cmp = sec["comparison"]["sampler"]
    assert {"psnr_db", "mpjpe_mm", "partner_mpjpe_mm", "occ_iou", "occ_iou_start"} <= set(cmp)
    assert not any(c["won"] for per_h in cmp.values() for c in per_h if c is not None)
    assert cmp["psnr_db"][0]["diff"] == pytest.approx(0.0, abs=1e-9)
    assert res["counterfactual"] == {}
    assert (tmp_path / "plots_reach.png").stat().st_size > 1000
    videos = sorted((tmp_path / "videos" / "reach").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 1000 for v in videos)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["tasks"]["reach"]["num_samples_per_horizon"] == dict(zip(map(str, horizons), sec["num_samples"]))
    assert any("deterministic_mse" in n for n in info["notes"]) and any("video-object metrics" in n for n in info["notes"])
    per_start = np.load(tmp_path / "per_start" / "reach.npz")
    assert per_start["t0"].shape == (40,) and list(per_start["horizons"]) == horizons
    assert float(np.nanmean(per_start["sampler/psnr_db"][:, 1])) == pytest.approx(m["psnr_db"]["value"][1], rel=1e-5)
    assert per_start["geometric/occ_counts"].shape[:2] == (40, 4)
    tables = (tmp_path / "tables.md").read_text()
    assert "### reach" in tables and "| ego RGB PSNR (dB) ↑ | sampler = mean |" in tables and "strongest baseline" in tables


def test_eval_reports_each_task_on_its_own_starts(tmp_path):
    eps = synthetic_episodes((30, 20, 40, 25), tasks=["social", "reach", "social", "reach"])
    res = evaluate(
        CopyLast(3),
        eps,
        tmp_path,
        horizons=[1, 8],
        modalities=["motion", "partner_motion"],
        starts_per_task=10,
        counterfactual=None,
        num_videos=0,
        resamples=50,
    )
    assert list(res["tasks"]) == ["reach", "social"]
    for task, lengths in (("reach", (20, 25)), ("social", (30, 40))):
        sec = res["tasks"][task]
        assert sec["num_episodes"] == 2 and sec["num_starts"] == 10
        assert sec["num_samples"][0] == 10 and sec["num_samples"][1] <= 10
        assert set(sec["baselines"]) == {"hold_pose", "constant_velocity"}
    assert res["tasks"]["reach"]["model"] != res["tasks"]["social"]["model"]
    assert "### reach" in (tmp_path / "tables.md").read_text() and "### social" in (tmp_path / "tables.md").read_text()


def test_eval_reports_an_mse_model_and_state_only_modalities(tmp_path):
    eps = synthetic_episodes(lengths=(30, 30))
    state = ["motion", "partner_motion", "props", "occupancy"]
    res = evaluate(
        CopyLast(3),
        eps,
        tmp_path,
        horizons=[1, 8],
        mse_model=Kinematic(3),
        modalities=state,
        num_videos=1,
        counterfactual=None,
        resamples=50,
    )
    sec = res["tasks"]["reach"]
    assert "psnr_db" not in sec["model"]["sampler"] and "mpjpe_mm" in sec["model"]["sampler"]
    assert set(sec["baselines"]) == {"hold_pose", "static_occupancy", "constant_velocity", "analytic_grid", "deterministic_mse"}
    assert sec["baselines"]["deterministic_mse"]["root_trans_err_m"] != sec["model"]["sampler"]["root_trans_err_m"]
    assert list((tmp_path / "videos" / "reach").glob("*.mp4")), "state-only runs still show occupancy videos"


class NoisySampler(CopyLast):
    """A stand-in with a sampler: its frames and partner get noise scaled by ``init_noise``."""

    sampler = types.SimpleNamespace(num_steps=2, init_noise=1.0)

    def imagine(self, context, actions, num_steps=None, modalities=None, generator=None, init_noise=None, **other):
        out = super().imagine(context, actions, 1, modalities, generator)
        noise = self.sampler.init_noise if init_noise is None else init_noise
        if "ego_rgb" in out:
            out["ego_rgb"] = (
                (out["ego_rgb"].float() + 20 * noise * torch.randn(out["ego_rgb"].shape, generator=generator)).clamp(0, 255).to(torch.uint8)
            )
        if "partner_motion" in out:
            out["partner_motion"] = out["partner_motion"] + 0.01 * noise * torch.randn(out["partner_motion"].shape, generator=generator)
        return out


def test_a_stochastic_sampler_is_reported_beside_the_conditional_mean_with_best_of_n(tmp_path):
    eps = synthetic_episodes((30, 40))
    res = evaluate(
        NoisySampler(3),
        eps,
        tmp_path,
        horizons=[1, 4, 8],
        frame_horizon=4,
        starts_per_task=12,
        best_of=4,
        best_of_starts=5,
        best_of_batch=2,
        counterfactual=None,
        num_videos=0,
        resamples=100,
    )
    sec = res["tasks"]["reach"]
    assert not sec["sampler_is_mean"] and set(sec["model"]) == {"sampler", "mean"}
    # the conditional mean is copy-last here: noise only costs the sampler PSNR
    assert sec["model"]["mean"]["psnr_db"] == sec["baselines"]["copy_last_frame"]["psnr_db"]
    assert sec["model"]["sampler"]["psnr_db"]["value"][0] < sec["model"]["mean"]["psnr_db"]["value"][0]
    gen = sec["generative"]
    assert gen["best_of"] == 4 and gen["num_starts"] == 5
    assert gen["frame_spread"]["value"][2] is None and gen["partner_spread_mm"]["value"][2] > 1  # frames up to h = 4
    for j in range(2):
        assert gen["best_psnr_db"]["value"][j] >= gen["sample_psnr_db"]["value"][j]
        assert gen["best_partner_mpjpe_mm"]["value"][j] <= gen["sample_partner_mpjpe_mm"]["value"][j]
        assert gen["frame_spread"]["value"][j] > 5 and gen["partner_spread_mm"]["value"][j] > 1
        assert gen["mean_psnr_db"]["n"][j] == gen["best_psnr_db"]["n"][j] == 5
    assert "best-of-4" in (tmp_path / "tables.md").read_text()


def test_mismatched_checkpoint_and_dataset_name_both():
    eps = synthetic_episodes(lengths=(20,), res=16)
    with pytest.raises(ValueError, match=r"checkpoint ck\.safetensors expects ego_rgb at 32x32 but dataset data/heldout holds 16x16"):
        check_compatible(model_spec(CopyLast(3, resolution=32)), eps, "ck.safetensors", "data/heldout")
    del eps[0].obs["occupancy"]
    with pytest.raises(ValueError, match=r"checkpoint ck models .*'occupancy'.* but dataset d lacks \['occupancy'\]"):
        check_compatible(model_spec(CopyLast(3, resolution=16)), eps, "ck", "d")
    with pytest.raises(ValueError, match="needs a context of 30 steps"):
        check_compatible(model_spec(CopyLast(30, resolution=16, modalities=["motion"])), eps, "ck", "d")


def test_counterfactual_scores_without_the_simulator():
    """Correlations on hand-made branches: a model that follows its actions correlates, one that
    holds still has no spread (null), one that moves at random does not correlate."""
    from dreamgym.worldmodel.evaluate import SimBranches

    names, seqs = action_sequences(
        {"fwd": [1, 0, 0, 0, 0, 0], "back": [-1, 0, 0, 0, 0, 0], "left": [0, 0, 1, 0, 0, 0], "stand": [0] * 6, "rnd": "random"}, horizon=10
    )
    N, S, K = 4, len(names), 3
    g = torch.Generator().manual_seed(0)
    motion = torch.randn(N, K, 227, generator=g)
    yaw0 = torch.rand(N, generator=g) * 6
    motion[:, :, ROOT_QUAT] = yaw_quat(yaw0)[:, None]
    ctx = {"motion": motion.repeat_interleave(S, 0)}
    acts = seqs.repeat(N, 1, 1)
    # "Simulated" roots: exactly the kinematic rule (so Kinematic matches it perfectly).
    kin = Kinematic(K, modalities=["motion"])
    roots = [ctx["motion"][:, -1, :7]]
    c = dict(ctx)
    allacts = torch.cat((torch.zeros(N * S, K - 1, 6), acts), 1)
    for h in range(10):
        p = kin.imagine(c, allacts[:, h : h + K])
        c["motion"] = torch.cat((c["motion"][:, 1:], p["motion"][:, None]), 1)
        roots.append(p["motion"][:, :7])
    sim = SimBranches(
        ctx, torch.zeros(N * S, K - 1, 6), acts, torch.stack(roots, 1), torch.ones(N * S, dtype=torch.bool), 0.0, list(range(N))
    )
    good = counterfactual_scores(sim, kin, names, ["motion"], 1, 0, "cpu")
    assert good["disp_corr_within_context"] == pytest.approx(1.0, abs=1e-6)
    assert good["dyaw_corr"] == pytest.approx(1.0, abs=1e-6)
    assert good["disp_err_m"] < 1e-5
    assert good["per_sequence"]["fwd"]["sim_disp_m"][0] == pytest.approx(0.6, abs=1e-4)  # 10 steps at 1.2 m/s
    held = counterfactual_scores(sim, CopyLast(K, modalities=["motion"]), names, ["motion"], 1, 0, "cpu")
    assert held["disp_corr"] is None and held["disp_corr_within_context"] is None and held["dream_spread_m"] == 0
    assert held["per_sequence"]["fwd"]["disp_err_m"] == pytest.approx(0.6, abs=1e-4)
    rnd = counterfactual_scores(sim, IgnoresActions(K, modalities=["motion"]), names, ["motion"], 1, 0, "cpu")
    assert abs(rnd["disp_corr_within_context"]) < 0.5
    json.dumps(good), json.dumps(held), json.dumps(rnd)  # JSON-safe: no NaN


def fake_video_metrics() -> tuple[types.ModuleType, types.ModuleType]:
    """Test doubles of ``video_metrics`` and ``frame_probe`` for the synthetic episodes: the truth
    sees every object while the real depth is under 1.5 m (frame t < 50); the probe sees them while
    the frame is darker than grey level 50 -- on real frames the two agree."""
    vm = types.ModuleType("dreamgym.worldmodel.video_metrics")
    vm.OBJECT_NAMES = ("prop0", "prop1", "prop2", "prop3", "partner")

    def probe_objects(probe, rgb, prop_colours):
        assert prop_colours.shape == (rgb.shape[0], 4)
        level = rgb[:, 0, 0, 0].float()
        vis = (level < 50)[:, None].expand(-1, 5)
        pos = torch.stack((level, level), -1)[:, None].expand(-1, 5, 2)
        return {"vis": vis, "pos": pos, "feats": torch.stack((level / 10, torch.ones_like(level)), -1)}

    def object_truth(depth, motion, partner_motion, props):
        d = depth[:, 0, 0, 0].float()
        vis = (d < 1.5)[:, None].expand(-1, 5)
        level = (d - 1) * 100
        return {"labels": None, "vis": vis, "pos": torch.stack((level, level), -1)[:, None].expand(-1, 5, 2)}

    def object_scores(seen, truth):
        both = seen["vis"] & truth["vis"]
        err = torch.where(both, (seen["pos"] - truth["pos"]).norm(dim=-1), torch.full(both.shape, float("nan")))
        return {"tp": both, "fp": seen["vis"] & ~truth["vis"], "fn": ~seen["vis"] & truth["vis"], "pos_err_px": err}

    vm.probe_objects, vm.object_truth, vm.object_scores = probe_objects, object_truth, object_scores
    vm.room_prop_colours = lambda seeds: torch.zeros(len(seeds), 4, dtype=torch.long)
    vm.frechet_distance = lambda a, b: float(((np.asarray(a).mean(0) - np.asarray(b).mean(0)) ** 2).sum())
    fp = types.ModuleType("dreamgym.worldmodel.frame_probe")
    fp.load_probe = lambda path=None: "probe"
    return vm, fp


def test_video_object_metrics_through_the_video_metrics_interface(tmp_path, monkeypatch):
    import sys

    vm, fp = fake_video_metrics()
    monkeypatch.setitem(sys.modules, vm.__name__, vm)
    monkeypatch.setitem(sys.modules, fp.__name__, fp)
    eps = synthetic_episodes((40, 70), tasks=["social", "social"])
    for i, e in enumerate(eps):
        e.room_seed = 900 + i  # the probe reads a room's prop colours
    res = evaluate(
        CopyLast(3),
        eps,
        tmp_path,
        horizons=[1, 16],
        starts_per_task=30,
        counterfactual=None,
        num_videos=0,
        resamples=100,
        frechet_resamples=20,
    )
    sec = res["tasks"]["social"]
    assert sec["target_object"] == ["partner"]
    real, model = sec["real_frames"], sec["model"]["sampler"]
    assert real["vis_f_target"]["value"] == [1.0, 1.0] and real["pos_err_px_prop0"]["value"] == pytest.approx([0.0, 0.0], abs=1e-4)
    for name in ("copy_last_frame", "reproject_only"):
        b = sec["baselines"][name]
        assert {"vis_f_target", "vis_f_partner", "pos_err_px_prop2", "frame_fd"} <= set(b)
    assert "vis_f_target" not in sec["baselines"]["hold_pose"]
    assert model["vis_f_partner"] == sec["baselines"]["copy_last_frame"]["vis_f_partner"]
    # copy-last is one grey level darker per step: it shows objects the truth lost at t = 50
    assert model["vis_f_partner"]["value"][1] < 1.0 and model["pos_err_px_partner"]["value"][1] == pytest.approx(
        16 * math.sqrt(2), rel=1e-4
    )
    assert (
        model["frame_fd"]["value"][1] == pytest.approx(1.6**2, rel=1e-5) and model["frame_fd"]["value"][0] < model["frame_fd"]["value"][1]
    )
    tables = (tmp_path / "tables.md").read_text()
    assert "visibility F-score, target object" in tables and "| | real frames (probe) | 1 [1, 1] |" in tables
    assert not any("video-object" in n for n in res["notes"])
    for e in eps:
        e.room_seed = -1
    notes = evaluate(
        CopyLast(3), eps, tmp_path / "unknown", horizons=[1], starts_per_task=4, counterfactual=None, num_videos=0, resamples=10
    )["notes"]
    assert any("rooms are unknown" in n for n in notes)


# ------------------------------------------------------------------------------------ with the simulator
@pytest.fixture(scope="module")
def sim_episodes():
    return simulate_episodes("reach", [5001, 5002], steps=14, resolution=16, policy="noisy", seed=0)


def test_simulated_branches_replay_exactly_and_diverge_with_actions(sim_episodes):
    eps = sim_episodes
    assert all(e.length == 15 and e.first_step == 0 for e in eps)
    names, seqs = action_sequences(
        {"forward": [1, 0, 0, 0, 0, 0], "backward": [-1, 0, 0, 0, 0, 0], "turn_left": [0, 0, 1, 0, 0, 0], "stand": [0] * 6}, horizon=8
    )
    K, t0 = 3, 5
    mods = ["motion", "partner_motion", "props", "occupancy"]
    sim = simulate_branches(eps, [0, 1], t0, K, seqs, (16, 16), mods)
    assert sim.replay_dev_m < 1e-4, "replaying the recorded actions from the reset must reproduce the recording"
    for k in ("motion", "occupancy", "props"):
        want = np.stack([eps[i].obs[k][t0 - K + 1 : t0 + 1] for i in (0, 1)]).repeat(len(names), 0)
        if k == "occupancy":  # a voxel on a boundary may flip with float noise
            assert (sim.context[k].numpy() == want).mean() > 0.999
        else:
            np.testing.assert_allclose(sim.context[k].numpy(), want, atol=1e-4, err_msg=k)
    kin = counterfactual_scores(sim, Kinematic(K, 16, mods), names, mods, 1, 0, "cpu")
    per = kin["per_sequence"]
    assert per["forward"]["sim_disp_m"][0] > 0.2 > per["stand"]["sim_disp_m"][0]
    assert per["backward"]["sim_disp_m"][0] < per["stand"]["sim_disp_m"][0]
    assert per["turn_left"]["sim_dyaw_rad"] > 0.4 > abs(per["forward"]["sim_dyaw_rad"])
    assert kin["sim_spread_m"] > 0.1
    assert kin["disp_corr_within_context"] > 0.8 and kin["dyaw_corr_within_context"] > 0.8
    held = counterfactual_scores(sim, CopyLast(K, 16, mods), names, mods, 1, 0, "cpu")
    assert held["disp_corr_within_context"] is None


@pytest.mark.slow
def test_eval_end_to_end_on_simulated_episodes_with_counterfactuals(tmp_path):
    eps = simulate_episodes("reach", [6001, 6002, 6003], steps=40, resolution=16, policy="noisy", seed=1)
    cf = {
        "num_contexts": 2,
        "start": None,
        "horizon": 8,
        "sequences": {"forward": [1, 0, 0, 0, 0, 0], "turn_left": [0, 0, 1, 0, 0, 0], "stand": [0] * 6, "random": "random"},
    }
    res = evaluate(Kinematic(3, 16), eps, tmp_path, horizons=[1, 4, 16], counterfactual=cf, starts_per_task=24, num_videos=1, resamples=100)
    c = res["counterfactual"]
    assert c["num_contexts"] == 2 and c["sequences"] == ["forward", "turn_left", "stand", "random"]
    assert c["replay_max_root_dev_m"] < 1e-4
    assert c["model"]["disp_corr_within_context"] > 0.5
    assert c["baselines"]["hold_pose"]["disp_corr_within_context"] is None
    assert (tmp_path / "counterfactual.png").exists()
    # The kinematic model moves the root the way the actions say: closer to the sim than holding still.
    sec = res["tasks"]["reach"]
    assert sec["model"]["sampler"]["root_trans_err_m"]["value"][1] < sec["baselines"]["hold_pose"]["root_trans_err_m"]["value"][1]
    assert sec["comparison"]["sampler"]["root_trans_err_m"][1]["baseline"] in ("hold_pose", "constant_velocity")
    assert len(sec["target_object"]) >= 1 and all(t.startswith("prop") for t in sec["target_object"])


# ------------------------------------------------------------------------------------ command line
def _tiny_world_model(directory, data_resolution: int):
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(
        resolution=16,
        data_resolution=data_resolution,
        context=2,
        frame_channels=[8, 16],
        occupancy_channels=[8, 16],
        groups=4,
        dim=32,
        depth=1,
        heads=2,
        grid_tokens=2,
        reward_hidden=32,
    )
    WorldModel(cfg).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A few short reach episodes at 16x16, nearly every room held out."""
    from dreamgym.app.cli import main

    out = tmp_path_factory.mktemp("dataset")
    main(
        [
            "collect",
            "task=reach",
            "steps=96",
            "num_envs=4",
            "round_steps=24",
            "resolution=16",
            "heldout_fraction=0.99",
            f"out={out}",
            "progress=false",
        ]
    )
    return out


@pytest.mark.slow
def test_eval_wm_command_on_a_collected_dataset(tiny_dataset, tmp_path):
    from dreamgym.app.cli import main
    from dreamgym.worldmodel.evaluate import load_episodes

    eps = load_episodes(tiny_dataset, split="heldout")
    assert eps and all(e.first_step == 0 and e.obs["ego_rgb"].shape[-1] == 16 for e in eps)
    ck = _tiny_world_model(tmp_path / "ck", 16)
    out = tmp_path / "eval"
    main(
        [
            "eval-wm",
            f"checkpoint={ck}",
            f"data={tiny_dataset}",
            f"out={out}",
            "horizons=[1,4,8]",
            "frame_horizon=4",
            "grid_horizon=4",
            "counterfactual.enabled=false",
            "starts_per_task=6",
            "num_videos=1",
            "resamples=100",
            "progress=false",
        ]
    )
    res = json.loads((out / "metrics.json").read_text())
    assert list(res) == ["horizons", "frame_horizon", "grid_horizon", "tasks", "counterfactual", "notes"] and res["horizons"] == [1, 4, 8]
    sec = res["tasks"]["reach"]
    model = sec["model"]["sampler"]
    for metric in (
        "psnr_db",
        "ssim",
        "depth_abs_err_m",
        "mpjpe_mm",
        "root_trans_err_m",
        "root_rot_err_rad",
        "occ_iou",
        "occ_miou",
        "reward_abs_err",
    ):
        assert len(model[metric]["value"]) == 3, metric
    assert model["psnr_db"]["value"][2] is None and model["occ_iou"]["value"][2] is None  # frames and grid up to h = 4
    assert model["mpjpe_mm"]["value"][2] is not None
    want = {"copy_last_frame", "hold_pose", "static_occupancy", "constant_velocity", "reproject_only", "analytic_grid"}
    assert set(sec["baselines"]) == want
    assert sec["num_starts"] == 6 and sec["num_samples"][0] == 6 and sec["target_object"]
    assert (out / "plots_reach.png").exists() and list((out / "videos" / "reach").glob("*.mp4"))
    assert json.loads((out / "run_info.json").read_text())["data"] == str(tiny_dataset)
    # the targets' check on this output: the paired tests against reproject-only read its per-start records
    from dreamgym.benchmarks.wm_targets import check

    t = check(out, mid=1, long=4)["tasks"]["reach"]
    psnr = t["psnr_db_vs_reproject_only"]["tests"]["h4"]
    got = model["psnr_db"]["value"][1] - sec["baselines"]["reproject_only"]["psnr_db"]["value"][1]
    assert psnr["n"] == sec["num_samples"][1] and psnr["diff"] == pytest.approx(got)
    assert isinstance(t["occupancy_iou_h16"]["met"], bool) and "push_displacement" not in t
    with pytest.raises(ValueError, match=r"the eval has horizons \[1, 4, 8\], not \[16\]"):
        check(out)
    # A checkpoint for 32x32 frames on 16x16 data: a clear error naming both.
    bad = _tiny_world_model(tmp_path / "ck32", 32)
    with pytest.raises(SystemExit, match=rf"checkpoint {bad} expects ego_rgb at 32x32 but dataset {tiny_dataset} holds 16x16"):
        main(["eval-wm", f"checkpoint={bad}", f"data={tiny_dataset}", f"out={tmp_path / 'bad'}"])
    with pytest.raises(SystemExit, match="is not a dreamgym dataset"):
        main(["eval-wm", f"checkpoint={ck}", f"data=[{tiny_dataset},{tmp_path}]", f"out={tmp_path / 'bad'}"])


@pytest.mark.slow
def test_the_shipped_default_evaluates_with_its_sampler_and_a_generative_one(tmp_path):
    """The embedded default on a few 32x32 push episodes: every arm runs; with a sampler that
    starts from noise, the sampler and the conditional mean differ and best-of-N has a spread."""
    import dataclasses

    from dreamgym.app.cli import main
    from dreamgym.worldmodel.evaluate import load_episodes
    from dreamgym.worldmodel.model import load_default

    data = tmp_path / "push32"
    main(
        [
            "collect",
            "task=push",
            "steps=48",
            "num_envs=2",
            "round_steps=24",
            "resolution=32",
            "heldout_fraction=0.99",
            f"out={data}",
            "progress=false",
        ]
    )
    eps = load_episodes(data, split="heldout")
    model = load_default()
    common = dict(horizons=[1, 2], starts_per_task=2, counterfactual=None, num_videos=0, resamples=50)
    shipped = evaluate(model, eps, tmp_path / "shipped", **common)["tasks"]["push"]
    assert {"reproject_only", "analytic_grid", "constant_velocity"} <= set(shipped["baselines"])
    assert shipped["model"]["sampler"]["psnr_db"]["value"][0] > 10 and shipped["target_object"]
    model.sampler = dataclasses.replace(model.sampler, num_steps=2, init_noise=1.0)
    sec = evaluate(model, eps, tmp_path / "sampled", best_of=2, best_of_starts=1, best_of_batch=1, **common)["tasks"]["push"]
    assert not sec["sampler_is_mean"] and sec["model"]["mean"] == shipped["model"]["mean"]
    assert sec["model"]["sampler"]["psnr_db"] != sec["model"]["mean"]["psnr_db"]
    assert sec["generative"]["frame_spread"]["value"][0] > 0 and sec["generative"]["num_starts"] == 1
