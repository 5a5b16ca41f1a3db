"""The social avatar's dream stage (``policies.social_dream``) and ``dreamgym bench social``, on tiny budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamgym.app.cli import Refused, main
from dreamgym.envs import partner as P

CKPT = "policies/checkpoints/social"
WM = "worldmodel/default"


def _refused_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(Refused) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("dreamgym")]
    assert len(lines) == 1, err
    return lines[0]


def test_window_rewards_and_group_advantages():
    from dreamgym.policies.social_dream import discounted, group_advantages, window_rewards

    T, B = 16, 4
    beh = np.full((T, B), P.IDLE)
    beh[8:] = P.WAVE
    checks = {k: np.zeros((T, B), dtype=bool) for k in ("wave", "approach", "point", "turn_away")}
    checks["wave"][8:, 0] = True  # world 0 waves back through the second window
    checks["wave"][12:, 1] = True  # world 1 for half of it
    checks["approach"][:] = True  # not the partner's behaviour: counts nothing
    R = window_rewards(beh, checks)
    assert R.shape == (2, B)
    assert R[0].tolist() == [0, 0, 0, 0] and R[1].tolist() == [1.0, 0.5, 0, 0]
    credit = discounted(R, 0.5)
    assert credit[0].tolist() == [0.5, 0.25, 0, 0]
    adv = group_advantages(credit, 2)  # groups {0, 1} and {2, 3}
    assert adv[1, 0] > 0 > adv[1, 1] and adv[1, 2] == adv[1, 3] == 0
    assert np.allclose(adv.reshape(2, 2, 2).sum(2), 0)
    with pytest.raises(ValueError, match="not a whole number of groups"):
        group_advantages(credit, 3)


def test_exploring_avatar_samples_and_records():
    from dreamgym.envs.motion import ROOT_QUAT
    from dreamgym.policies.social import SocialAvatarPolicy
    from dreamgym.policies.social_dream import ExploringAvatar

    pol = ExploringAvatar.of(SocialAvatarPolicy.from_pretrained(CKPT))
    pol.explore = {"temperature": 1.0, "heading_noise": 0.3, "pointer_temperature": 1.0}
    pol.gen_noise = torch.Generator().manual_seed(0)
    m = torch.zeros(3, 227)
    m[:, ROOT_QUAT.start] = 1.0
    pm = m.clone()
    pm[:, 0] = 2.0
    objects = torch.tensor([[[1.0, 1.0], [-1.0, 2.0]]]).expand(3, -1, -1)
    for _ in range(16):
        pol.act({"motion": m, "partner_motion": pm}, objects=objects)
    assert len(pol.records) == 2  # one decision per world and window
    r = pol.records[-1]
    assert r["token"].shape == (3,) and r["pick"].shape == (3,) and r["objf"].shape == (3, 2, 5)
    assert r["partner"].shape == (3, pol.config.context) and r["t"].tolist() == [15, 15, 15]


def test_bad_dream_settings_are_refused_in_one_line(capsys, tmp_path):
    out = f"out={tmp_path / 'o'}"
    line = _refused_line(capsys, ["train-social", out, f"world_model={WM}", "dream_envs=6", "dream_group=4"])
    assert "dream_envs=6 is not a multiple of dream_group=4" in line
    line = _refused_line(capsys, ["train-social", out, f"world_model={WM}", "dream_seed_base=899999"])
    assert "reaches the held-out rooms" in line
    line = _refused_line(capsys, ["train-social", out, "dream_checks=gaze"])
    assert "dream_checks=gaze is not one of the choices" in line
    line = _refused_line(capsys, ["train-social", out, "init=no/such/dir"])
    assert "init" in line and "no/such/dir" in line
    line = _refused_line(capsys, ["bench", "social", "checkpoint=no/such/dir"])
    assert "no/such/dir" in line
    assert not (tmp_path / "o").exists()


def test_check_dream_config_names_the_key():
    from dreamgym.policies.social_dream import check_dream_config

    cfg = OmegaConf.load("configs/train_social.yaml")
    check_dream_config(cfg)
    for key, bad, msg in (
        ("dream_temperature", 0.0, "dream_temperature=0.0"),
        ("dream_gamma", 1.5, "dream_gamma=1.5"),
        ("dream_checks", "gaze", "dream_checks='gaze'"),
        ("dream_batch", 0, "dream_batch=0"),
    ):
        c = cfg.copy()
        c[key] = bad
        with pytest.raises(ValueError, match=msg):
            check_dream_config(c)


def test_bench_social_statistics():
    from dreamgym.benchmarks.social import correctness, paired, scene_segments

    T = 60
    beh = np.full((T, 3), P.IDLE)
    beh[10:40] = P.WAVE
    beh[40:60, 2] = P.POINT
    hit = {k: np.zeros((T, 3), dtype=bool) for k in ("wave", "approach", "point", "turn_away")}
    a_hit = {k: v.copy() for k, v in hit.items()}
    a_hit["wave"][:, :2] = True  # arm a: waves in scenes 0 and 1, misses the point of scene 2
    b_hit = {k: v.copy() for k, v in hit.items()}
    b_hit["point"][:, 2] = True  # arm b: only the point of scene 2
    a, b = scene_segments(beh, a_hit), scene_segments(beh, b_hit)
    assert a == [[("wave", 1)], [("wave", 1)], [("wave", 0), ("point", 0)]]
    c = correctness(a)
    assert c["overall"]["correct"] == 2 and c["overall"]["segments"] == 4 and c["wave"]["rate"] == 2 / 3
    assert c["overall"]["ci95"][0] < 0.5 < c["overall"]["ci95"][1]
    g = paired(a, b, resamples=500, seed=0)
    assert g["overall"]["gain"] == pytest.approx((2 - 1) / 4)
    assert g["overall"]["discordant"] == {"a_only": 2, "b_only": 1}
    assert g["overall"]["mcnemar_p"] == pytest.approx(1.0)  # 2 vs 1 discordant: binomial p = 1
    assert g["point"]["gain"] == -1.0 and g["wave"]["gain"] == pytest.approx(2 / 3)
    lo, hi = g["overall"]["gain_ci95"]
    assert lo <= g["overall"]["gain"] <= hi
    with pytest.raises(ValueError, match="same response segments"):
        paired(a, a[:2] + [[("wave", 0)]], 10, 0)


@pytest.mark.slow
def test_dream_stage_tiny_end_to_end(tmp_path):
    """``train-social init=... world_model=...`` on a tiny budget: a loadable avatar and experience.json."""
    from dreamgym.policies.social import SocialAvatarPolicy

    out = tmp_path / "tuned"
    argv = ["train-social", f"out={out}", f"init={CKPT}", f"world_model={WM}", "dream_iterations=1", "dream_envs=4"]
    assert main([*argv, "dream_group=2", "dream_updates=2", "dream_batch=16", "eval_scenes=1", "dream_checks=body"]) == 0
    pol = SocialAvatarPolicy.from_pretrained(out)
    base = SocialAvatarPolicy.from_pretrained(CKPT)
    assert pol.config.info["dream_stage"]["dreamed_transitions"] > 0
    changed = any(not torch.equal(p, q) for p, q in zip(pol.gen.parameters(), base.gen.parameters()))
    assert changed and all(torch.equal(p, q) for p, q in zip(pol.inv.parameters(), base.inv.parameters()))
    exp = json.loads((out / "experience.json").read_text())
    assert exp["real_steps"] >= 2 and exp["dreamed_transitions"] == 4 * (240 - 2)
    assert exp["starts"]["kind"] == "simulator" and exp["decisions"] > 0 and len(exp["iterations"]) == 1
    rooms = json.loads((out / "train_rooms.json").read_text())
    assert rooms and max(rooms) < 900000
    assert (out / "motion_encoder.safetensors").exists() and (out / "metrics.json").exists()


@pytest.mark.slow
def test_bench_social_tiny_end_to_end(tmp_path):
    """``dreamgym bench social`` on two scenes (the shipped avatar against itself): every arm measured, a JSON."""
    out = tmp_path / "social.json"
    assert (
        main(
            [
                "bench",
                "social",
                f"checkpoint={CKPT}",
                "scenes=2",
                "max_worlds=2",
                "bootstrap_resamples=50",
                f"out={out}",
                "dream_judge=[]",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert set(r["arms"]) == {"dream_tuned", "simulator_only", "scripted"}
    assert r["summary"]["gain"] == 0.0 and r["summary"]["mcnemar_p"] == 1.0  # the same avatar twice: no discordant segment
    assert r["arms"]["scripted"]["correctness"]["overall"]["segments"] == r["summary"]["segments"] > 0
    assert np.isfinite(r["arms"]["dream_tuned"]["motion"]["mpjpe_mm"]) and r["code"]["commit"]
