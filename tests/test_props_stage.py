"""The props network's rollout stage (``worldmodel/props_stage.py``): it learns from its own
multi-step rollouts, writes what it learned into the raw and the EMA weights, repeats exactly, and
runs after the main steps of a ``train-wm`` run, also when the run is resumed."""

from __future__ import annotations

import json

import torch
from test_worldmodel import synthetic_episodes, tiny_model

from dreamgym.worldmodel import data as D
from dreamgym.worldmodel.config import TrainingConfig
from dreamgym.worldmodel.props_stage import rollout_props, train_props_rollouts
from dreamgym.worldmodel.train_state import EMA
from dreamgym.worldmodel.trainer import TrainerOptions, state_finetune_config, train_world_model
from dreamgym.worldmodel.windows import EpisodeSource


def pushed_episodes(n: int = 4, T: int = 24) -> list[dict[str, torch.Tensor]]:
    """Synthetic episodes whose prop 0 slides 1 cm per step from step 8 on (a push), the rest at rest."""
    eps = synthetic_episodes(n=n, T=T)
    for e in eps:
        p = torch.zeros(T, 4, 3)
        p[:, :, 0] = torch.arange(4.0) * 2.0
        p[:, :, 2] = 0.19
        p[8:, 0, 0] += 0.01 * torch.arange(1, T - 7)
        e["props"] = p
        e.pop("qpos", None)
    return eps


def _stage_loss(m, eps, H: int) -> float:
    ds = EpisodeSource(eps).windows(2 + H, ("motion", "partner_motion", "props"))
    b = {k: torch.stack([ds[i][k] for i in range(len(ds))]).float() for k in ("motion", "partner_motion", "props")}
    with torch.no_grad():
        dream = rollout_props(m._props_net, b["motion"], b["partner_motion"], b["props"], H)
    return float((dream - b["props"][:, 2:]).abs().mean())


def test_the_stage_learns_from_its_rollouts_into_the_raw_and_the_ema_weights_and_repeats_exactly():
    eps = pushed_episodes()
    src = EpisodeSource(eps, name="pushes")
    tc = TrainingConfig(props_rollout_steps=60, props_rollout_horizon=6, props_rollout_batch=16, props_rollout_lr=3e-3)
    results = []
    for _ in range(2):
        m = tiny_model(state_prior=16, props_dynamics=16)
        m.fit_props_features([D.collate([D.EpisodeWindows(eps, 3)[i] for i in range(32)])])
        before = _stage_loss(m, eps, 6)
        ema = EMA(m, 0.99)
        logged = []
        summary = train_props_rollouts(m, ema.shadow, src, tc, logged.append, heldout=src)
        results.append((m, ema, before, summary, logged))
    (m, ema, before, summary, logged), (m2, *_rest) = results
    after = _stage_loss(m, eps, 6)
    assert after < 0.5 * before, f"the rollout error should fall: {before:.4f} -> {after:.4f}"
    assert summary["steps"] == 60 and summary["push_windows"] > 0 and summary["windows"] == 4 * (24 - 8 + 1)
    assert [e["props_rollout_step"] for e in logged] == [60] and logged[0]["props_rollout_loss"] > 0
    # the pushed prop slides 0.09-0.16 m over a window: the stage carries it further than before
    held = summary["heldout_rollouts"]
    assert held["before"]["n_moved"] == held["after"]["n_moved"] > 0
    assert abs(held["after"]["ratio"] - 1) < abs(held["before"]["ratio"] - 1), held
    for k, v in m.props_net.state_dict().items():
        assert torch.equal(ema.shadow[f"props_net.{k}"], v), "the EMA weights hold the stage's result"
        assert torch.equal(m2.props_net.state_dict()[k], v), "the stage is a pure function of its seed"


def test_train_wm_runs_the_stage_after_the_main_steps_and_again_when_resumed(tmp_path):
    eps = pushed_episodes(n=3, T=20)
    src = EpisodeSource(eps, name="pushes")
    tc = TrainingConfig(
        steps=2, batch_size=4, prior_batch=8, prior_rollout=0, warmup_steps=0, stats_windows=16,
        props_rollout_steps=20, props_rollout_horizon=4, props_rollout_batch=8,
    )  # fmt: skip
    opts = TrainerOptions(eval_every=0, ckpt_every=1, progress=False, tensorboard=False)
    m = tiny_model(state_prior=16, props_dynamics=16)
    final = train_world_model(m, src, tc, tmp_path / "run", options=opts)
    lines = [json.loads(s) for s in (tmp_path / "run" / "props_stage.jsonl").read_text().splitlines()]
    assert [e.get("props_rollout_step") for e in lines] == [20, None] and lines[-1]["summary"]["steps"] == 20
    from dreamgym.worldmodel.model import WorldModel

    first = WorldModel.from_pretrained(final).props_net.state_dict()
    # re-running resumes after the main steps and redoes the stage: the same weights, one log
    final = train_world_model(tiny_model(state_prior=16, props_dynamics=16), src, tc, tmp_path / "run", options=opts)
    again = WorldModel.from_pretrained(final).props_net.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert len((tmp_path / "run" / "props_stage.jsonl").read_text().splitlines()) == 2
    # the short state-only fine-tunings of the DIAMOND-style loop have no stage
    assert state_finetune_config(10, 4).props_rollout_steps == 0
