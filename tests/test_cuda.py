"""CUDA paths against the CPU: the batched env, the dream env and a training step on ``cuda``.

Tests marked ``cuda`` skip where torch sees no CUDA GPU (``conftest.py``); ``benchmarks/gpu_check.sh``
runs them (``pytest -m cuda``) on a GPU machine. The tests at the end run everywhere else: a CUDA
device asked for on a machine without one is refused in one line.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

# CUDA against CPU: the same kernels, float32 on both; what differs is the order of floating
# point reductions (and TF32 convolutions in the world model), so trajectories agree closely for
# the first tens of steps of contact-rich physics and a few dreamed steps.
MOTION_TOL_M = 1e-3  # the backends' stated agreement (C MuJoCo vs MuJoCo Warp, tests/test_envs.py)
RGB_TOL = 2.0  # mean absolute difference of the ego frames, 0..255
DEPTH_TOL_M = 0.01  # median absolute depth difference
DREAM_MOTION_TOL_M = 5e-3  # dreamed joint positions after a few autoregressive steps
LOSS_RTOL = 2e-2  # the first training step's loss


def _same_actions(B: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """The same uniform random actions on every device."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(B, 6, generator=g) * 2 - 1 for _ in range(steps)]


def _run_vec(device: str, steps: int, actions=None, **kw):
    """Observations (on the CPU) and rewards of a reach episode in 4 rooms: driven by ``actions``
    (a list of (4, 6)), or by the env's own expert when None; returns them and the actions used."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    B = 4
    env = EgoRoomVecEnv(num_envs=B, task="reach", resolution=32, device=device, seed=7, return_tensors=True, **kw)
    obs, _ = env.reset_tensors(seed=7)
    rec, rewards, used = [{k: v.cpu() for k, v in obs.items()}], [], []
    for t in range(steps):
        a = env.expert_actions().cpu() if actions is None else actions[t]
        obs, r, *_ = env.step_tensors(a.to(device))
        rec.append({k: v.cpu() for k, v in obs.items()})
        rewards.append(r.cpu())
        used.append(a)
    graph = env.cuda_graph
    env.close()
    return rec, torch.stack(rewards), used, graph


def _assert_close(a: list[dict], b: list[dict], what: str) -> None:
    worst = max(float((x[k][:, :73] - y[k][:, :73]).abs().max()) for x, y in zip(a, b) for k in ("motion", "partner_motion"))
    assert worst < MOTION_TOL_M, f"{what}: motion differs by {worst:.2e} m"
    rgb = np.mean([float((x["ego_rgb"].float() - y["ego_rgb"].float()).abs().mean()) for x, y in zip(a, b)])
    depth = np.mean([float((x["ego_depth"] - y["ego_depth"]).abs().median()) for x, y in zip(a, b)])
    assert rgb < RGB_TOL, f"{what}: mean absolute RGB difference {rgb:.2f}"
    assert depth < DEPTH_TOL_M, f"{what}: median depth difference {depth:.4f} m"
    assert np.mean([float((x["occupancy"] == y["occupancy"]).float().mean()) for x, y in zip(a, b)]) > 0.99, what


@pytest.mark.cuda
def test_vec_env_on_cuda_agrees_with_cpu():
    """Same rooms, same actions (the CPU run's expert's): the same worlds on cuda."""
    cpu, r_cpu, actions, _ = _run_vec("cpu", 30)
    gpu, r_gpu, _, _ = _run_vec("cuda", 30, actions, cuda_graph=False)
    _assert_close(cpu, gpu, "cpu vs cuda")
    assert torch.allclose(r_cpu, r_gpu, atol=1e-3)


@pytest.mark.cuda
def test_cuda_graph_replay_steps_the_same_worlds():
    """Replaying the recorded physics and render graphs steps the worlds that launching the
    kernels one by one steps (up to the order of atomic additions)."""
    direct, _, actions, _ = _run_vec("cuda", 20, cuda_graph=False)
    replay, _, _, graph = _run_vec("cuda", 20, actions, cuda_graph=True)
    assert graph, "CUDA graph capture failed and the env fell back to direct launches"
    _assert_close(direct, replay, "kernels vs cuda graph")


@pytest.mark.cuda
def test_vec_env_cuda_step_waits_for_the_gpu_at_most_once_per_step():
    """CUDA's own detector: one synchronising call per step (the host snapshot), with the
    actions already on the GPU and their NaN check there (a second one)."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    B, steps = 8, 5
    env = EgoRoomVecEnv(num_envs=B, task="reach", resolution=32, device="cuda", seed=0, return_tensors=True)
    env.reset_tensors(seed=0)
    actions = torch.zeros(B, 6, device="cuda")
    env.step_tensors(actions)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                env.step_tensors(actions)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2 * steps, [str(w.message) for w in syncs[:6]]


@pytest.mark.cuda
def test_dream_env_on_cuda_agrees_with_cpu():
    """The shipped world model dreams the same steps on cuda as on cpu from the same real
    starts (drawn by the CPU simulator), with the sampler's initial noise at 0 so that the
    prediction does not depend on the device's random stream."""
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    B, steps = 4, 4
    runs = {}
    for device in ("cpu", "cuda"):
        env = DreamVecEnv(None, num_envs=B, task="reach", device=device, seed=3, return_tensors=True, init_noise=0.0)
        obs, _ = env.reset_tensors(seed=3)
        rec = [obs["motion"].cpu()]
        for a in _same_actions(B, steps, seed=4):
            obs, *_ = env.step_tensors(a.to(device))
            rec.append(obs["motion"].cpu())
        runs[device] = torch.stack(rec)
        env.close()
    assert torch.equal(runs["cpu"][0], runs["cuda"][0]), "the real starts differ"
    worst = float((runs["cpu"][:, :, :73] - runs["cuda"][:, :, :73]).abs().max())
    assert worst < DREAM_MOTION_TOL_M, f"dreamed motion differs by {worst:.2e} between cpu and cuda"


@pytest.mark.cuda
def test_train_wm_step_on_cuda_matches_cpu(tmp_path):
    import json

    from test_worldmodel import TINY_OVERRIDES, synthetic_episodes

    from dreamgym.configs import compose
    from dreamgym.worldmodel.train import save_episodes, train

    data = save_episodes(synthetic_episodes(n=3, T=10), tmp_path / "episodes.safetensors")
    first = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        cfg = compose(
            "train_wm",
            [f"data={data}", f"out={out}", f"device={device}", "batch_size=4", "steps=3", "progress=false", "stats_windows=16"]
            + ["eval_every=0", "ckpt_every=3", "warmup_steps=1", "prior_rollout=0", *TINY_OVERRIDES],
        )
        train(cfg)
        log = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(log) == 3 and all(np.isfinite(r["total"]) for r in log)
        assert (out / "final" / "model.safetensors").exists()
        first[device] = log[0]["total"]
    assert abs(first["cuda"] - first["cpu"]) <= LOSS_RTOL * abs(first["cpu"]), first


# ------------------------------------------------------------------------------ no CUDA here
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@no_cuda
def test_vec_env_refuses_cuda_in_one_line_where_there_is_none():
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    with pytest.raises(ValueError, match=r"device='cuda' asks for CUDA, but torch sees no CUDA GPU here") as e:
        EgoRoomVecEnv(num_envs=2, device="cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"device='mps' is not supported"):
        EgoRoomVecEnv(num_envs=2, device="mps")
    with pytest.raises(ValueError, match=r"device='gpu' is not a device"):
        EgoRoomVecEnv(num_envs=2, device="gpu")


@no_cuda
def test_dream_env_refuses_cuda_in_one_line_where_there_is_none():
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    with pytest.raises(ValueError, match="CUDA"):
        DreamVecEnv(None, num_envs=2, device="cuda")
