"""The README's main command, ``dreamgym demo``, on a tiny budget: every stage runs, the report is
written, and a re-run skips the finished stages (what an interrupted demo relies on)."""

from __future__ import annotations

import json

from dreamgym.app.cli import main

TINY = [
    "tasks=[reach]",
    "collect_steps=192",
    "num_envs=4",
    "wm_steps=2",
    "eval_wm_starts=2",
    "policy_steps=128",
    "policy_envs=4",
    "eval_episodes=2",
    "overrides.collect=['heldout_fraction=0.5','progress=false']",
    "overrides.train_wm=['batch_size=4','num_threads=1','stats_windows=32','progress=false']",
    "overrides.eval_wm=['horizons=[1,2]','counterfactual.enabled=false','threads=1']",
    "overrides.train_policy=['ppo.n_steps=16','ppo.batch_size=32','progress=false','num_threads=1','checkpoint_every=1000']",
]


def test_demo_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", f"out={out}", *TINY]) == 0
    report = (out / "report.md").read_text()
    for stage in ("rooms", "collect", "world_model", "eval_wm", "policy", "eval_policy"):
        assert (out / "stages" / f"{stage}.json").exists(), stage
    wm = json.loads((out / "stages" / "world_model.json").read_text())["result"]
    assert wm["init"] == "default" and wm["trained_steps"] == 2
    assert "fine-tuned from `default` for 2 steps" in report
    assert "## World model vs the simulator" in report and "## Policies in the real simulator" in report
    ev = json.loads((out / "eval_policy.json").read_text())
    assert set(ev) == {"dream-trained", "expert", "random"}
    assert all(0.0 <= r["success_rate"] <= 1.0 and r["episodes"] == 2 for r in ev.values())
    assert (out / "rooms" / "reach.mp4").stat().st_size > 0
    capsys.readouterr()
    # a second run finds every stage done and only rewrites the report
    (out / "report.md").unlink()
    assert main(["demo", f"out={out}", *TINY]) == 0
    said = capsys.readouterr().out
    assert said.count("done in an earlier run, skipped") == 6
    assert (out / "report.md").read_text() == report
