"""Image observations: ``dreamgym/Pixels-v0`` (any rendering env through its frames) and the
vector world model's U-Net branch, from collection to a dream env with the env's image space."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import dreamgym.envs  # noqa: F401  (registers dreamgym/Pixels-v0 and dreamgym/Dream-v0)
from dreamgym.app.cli import main
from dreamgym.worldmodel.vector import VectorWorldModel
from dreamgym.worldmodel.vector_dream import VectorDreamVecEnv
from dreamgym.worldmodel.windows import DatasetSource

QUIET = ["progress=false", "num_threads=1"]
PIXELS = "env_kwargs={env:InvertedPendulum-v5,size:16,stack:2,env_kwargs:{width:16,height:16}}"


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixels")
    args = ["collect", "env=dreamgym/Pixels-v0", PIXELS, "steps=600", "num_envs=4", f"out={root / 'data'}", "progress=false"]
    assert main(args) == 0
    run = root / "wm"
    args = ["train-wm", f"data={root / 'data'}", f"out={run}", "steps=60", "eval_every=30", "ckpt_every=30"]
    assert main([*args, "vector.frame_channels=8", "vector.image_batch_size=8", "vector.width=64", *QUIET]) == 0
    return root, run / "final"


def test_pixels_env_shows_frames_only_stacked_oldest_first():
    env = gym.make("dreamgym/Pixels-v0", env="InvertedPendulum-v5", size=16, stack=2, env_kwargs={"width": 16, "height": 16})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 16, 6) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    assert np.array_equal(obs[..., :3], obs[..., 3:])  # a reset fills the stack with the first frame
    nxt, *_ = env.step(env.action_space.sample())
    assert np.array_equal(nxt[..., :3], obs[..., 3:])  # the newest frame moves one slot older
    assert obs[..., 3:].std() > 0  # the pendulum is drawn
    with pytest.raises(ValueError, match="size=4"):
        gym.make("dreamgym/Pixels-v0", env="InvertedPendulum-v5", size=4)
    env.close()


def test_the_image_branch_trains_and_its_checkpoint_dreams_the_envs_image_space(pixels):
    root, final = pixels
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    assert manifest["env"]["max_episode_steps"] == 1000 and manifest["env"]["observations"]["obs"]["image"]
    steps = [json.loads(x) for x in (final.parent / "metrics.jsonl").read_text().splitlines() if '"frame"' in x]
    assert steps and all(np.isfinite(s["frame"]) for s in steps)
    model = VectorWorldModel.from_pretrained(final)
    assert model.image is not None and model.obs_dim == 0 and model.output_keys() == ["obs"]
    w = DatasetSource(root / "data", "all", 0, True).windows(3)
    batch = {k: torch.stack([w[i][k] for i in range(8)]) for k in ("obs", "actions", "rewards", "terminations")}
    mets, _ = model.heldout_metrics(batch, 2, 0)
    assert set(mets) >= {"frame_psnr/model", "frame_psnr/copy_last", "reward_mae", "termination_accuracy"}
    out = model.imagine({"obs": batch["obs"][:, :2]}, batch["actions"][:, :2], generator=torch.Generator().manual_seed(0))
    assert out["obs"].shape == (8, 16, 16, 6) and out["obs"].dtype == torch.uint8
    assert out["reward"].shape == (8,) and out["terminated"].dtype == torch.bool


def test_a_dream_of_pixels_has_the_envs_spaces_and_passes_check_env(pixels):
    root, final = pixels
    env = VectorDreamVecEnv(checkpoint=final, num_envs=3, starts=f"dataset:{root / 'data'}:all")
    assert env.single_observation_space == gym.spaces.Box(0, 255, (16, 16, 6), np.uint8)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (3, 16, 16, 6) and obs.dtype == np.uint8
    for _ in range(3):
        obs, r, term, trunc, _ = env.step(env.action_space.sample())
    assert obs.shape == (3, 16, 16, 6) and env.real_steps == 0
    one = gym.make("dreamgym/Dream-v0", source_env="dreamgym/Pixels-v0", checkpoint=str(final), starts=f"dataset:{root / 'data'}:all")
    check_env(one.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("algo,env", [("ppo", "dream"), ("sac", "real")])
def test_a_pixel_policy_is_convolutional_and_scores_in_the_pixel_env(pixels, tmp_path, algo, env):
    from dreamgym.policies.gym_eval import evaluate_gym_policy
    from dreamgym.policies.sb3_format import load_sb3_network

    root, final = pixels
    out = tmp_path / f"{algo}_{env}"
    args = ["train-policy", "source_env=dreamgym/Pixels-v0", PIXELS, f"env={env}", f"algo={algo}", f"out={out}", "num_envs=2"]
    if env == "dream":
        args += [f"checkpoint={final}", f"starts=dataset:{root / 'data'}:all", "steps=128", "ppo.n_steps=32", "ppo.batch_size=32"]
    else:
        args += ["steps=200", "sac.learning_starts=50", "sac.buffer_size=1000", "sac.batch_size=32"]
    assert main([*args, *QUIET]) == 0
    network, cfg = load_sb3_network(out)
    fx = network.actor.features_extractor if algo == "sac" else network.features_extractor
    assert type(fx).__name__ == "PixelExtractor"  # SB3's NatureCNN cannot take 16x16
    assert network.observation_space.shape == (6, 16, 16)  # channels first, as SB3 transposes images
    kw = {"env": "InvertedPendulum-v5", "size": 16, "stack": 2, "env_kwargs": {"width": 16, "height": 16}}
    r = evaluate_gym_policy(out, "dreamgym/Pixels-v0", kw, episodes=4, seed=0)
    assert r["episodes"] == 4 and np.isfinite(r["mean_return"]) and r["mean_return"] >= 1


def test_eval_wm_scores_an_image_model_by_frame_psnr_beside_the_held_frame(pixels, tmp_path):
    root, wm = pixels
    out = tmp_path / "eval"
    args = ["eval-wm", f"checkpoint={wm}", f"data={root / 'data'}", "split=all", f"out={out}", "horizons=[1,4]", "starts_per_task=16"]
    assert main([*args, "resamples=100", "threads=1", "progress=false"]) == 0
    r = json.loads((out / "eval.json").read_text())
    assert "obs_nrmse" not in r["metrics"]  # frames only: no vector to score or fit baselines on
    psnr = r["metrics"]["frame_psnr_db"]
    assert set(psnr) == {"sampler", "mean", "copy_last"} and r["best_of"] is None
    assert all(c["value"] is not None and c["n"] > 0 for cells in psnr.values() for c in cells)
    assert r["strongest_baseline"]["frame_psnr_db"][0]["arm"] == "copy_last"
