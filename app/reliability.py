"""``dreamgym bench reliability``: bad input of every kind, tried as a hostile but fair user would, and counted.

Each case of ``reliability_cases.all_cases()`` is a command line with one thing wrong. It is run
through ``cli.main`` in this process, and passes when the command
  - is **refused in one line**: exit status 2, exactly one ``dreamgym <command>: ...`` line on
    stderr that says what to do (``; ...``), and no traceback (a ``report`` case, a check command:
    exit status 1, what it found on stdout, no traceback);
  - **names** what was wrong (the case's ``names``: the key, the value, the file);
  - **loses nothing**: every file of the case's folder and of the shared inputs is still there, byte
    for byte;
  - **writes nothing**: no new file anywhere under them (a crafted pickle's payload would write one,
    so this also shows that it never ran).

The shared inputs (``make_inputs``) are made once with the real commands: two tiny collected
datasets (state keys, other seeds), a finished train-wm run of a tiny state-only world model, and a
finished train-policy run; the shipped VLA checkpoint is copied where a case damages it. Each case
works in its own folder, on copies of what it changes.

``run(cfg)`` writes one record per case and the counts to ``benchmarks/results/reliability.json``
(``BenchRun``'s layout: ``arms`` holds the cases, ``summary`` the counts); ``tests/test_reliability.py``
runs the same cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .reliability_cases import Case, all_cases

B = 8  # worlds in every env these inputs are made with (Warp compiles its kernels once)
COLLECT = [f"num_envs={B}", "steps=64", "round_steps=8", "resolution=8", "obs_keys=[motion,partner_motion,task_obs]"]
COLLECT += ["shard_episodes=2", "heldout_fraction=0.3", "progress=false"]
STATE_WM = [
    "worldmodel.modalities=[motion,partner_motion,props]",
    "worldmodel.ego_warp=false",
    "worldmodel.occupancy_warp=false",
    "worldmodel.ego_render=false",
]
STATE_WM += ["worldmodel.context=2", "worldmodel.dim=32", "worldmodel.depth=1", "worldmodel.heads=2", "worldmodel.reward_hidden=32"]
STATE_WM += ["worldmodel.state_prior=32", "worldmodel.props_dynamics=16", "prior_rollout=2", "prior_batch=8", "steps=2", "batch_size=4"]
STATE_WM += ["props_rollout_steps=3", "props_rollout_horizon=2", "props_rollout_batch=4"]
STATE_WM += ["stats_windows=16", "eval_every=0", "ckpt_every=2", "warmup_steps=1", "progress=false", "num_threads=1"]
POLICY = ["env=real", f"num_envs={B}", "steps=64", "stats_steps=2", "ppo.n_steps=8", "ppo.batch_size=32", "ppo.n_epochs=1"]
POLICY += ["obs_keys=[task_obs]", "checkpoint_every=1000", "num_threads=1", "progress=false"]
VLA = Path(__file__).resolve().parent.parent / "policies" / "checkpoints" / "vla" / "final"


@dataclass(frozen=True)
class Inputs:
    """What the cases start from (made by ``make_inputs``; never changed by a case)."""

    root: Path
    collect_args: tuple[str, ...] = tuple(COLLECT)
    wm_args: tuple[str, ...] = tuple(STATE_WM)
    policy_args: tuple[str, ...] = tuple(POLICY)
    vla: Path = VLA

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def other_data(self) -> Path:
        return self.root / "other_data"

    @property
    def wm_run(self) -> Path:
        return self.root / "wm_run"

    @property
    def wm(self) -> Path:
        return self.wm_run / "final"

    @property
    def policy_run(self) -> Path:
        return self.root / "policy_run"


def make_inputs(root: str | Path) -> Inputs:
    """Make the shared inputs under ``root`` with the real commands (kept: a second call reuses them)."""
    from .cli import main

    inputs = Inputs(Path(root))
    done = inputs.root / "READY"
    if done.exists():
        return inputs
    shutil.rmtree(inputs.root, ignore_errors=True)
    inputs.root.mkdir(parents=True)
    with contextlib.redirect_stdout(io.StringIO()):
        main(["collect", f"out={inputs.data}", *COLLECT, "seed=0"])
        main(["collect", f"out={inputs.other_data}", *COLLECT, "seed=1"])
        main(["train-wm", f"data={inputs.data}", f"out={inputs.wm_run}", *STATE_WM])
        main(["train-policy", *POLICY, f"out={inputs.policy_run}"])
    done.write_text("made by dreamgym bench reliability\n")
    return inputs


# ----------------------------------------------------------------------------- one case
def _snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (by path)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.exists() else []:
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, inputs: Inputs, folder: Path) -> dict[str, Any]:
    """Try ``case`` in ``folder`` (made empty); returns its record (``passed`` and each check)."""
    from .cli import Refused, main

    if case.skip is not None and (why := case.skip()):
        return {"name": case.name, "skipped": why, "passed": None}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if case.setup is not None:
        case.setup(folder, inputs)
    argv = case.argv(folder, inputs)
    before = _snapshot(folder, inputs.root)
    err, out = io.StringIO(), io.StringIO()
    line, status, bug = None, None, None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except Refused as e:
            line, status = str(e), 2
        except SystemExit as e:
            status = e.code
        except Exception as e:  # noqa: BLE001 -- a bug: recorded with its traceback's last line
            bug = f"{type(e).__name__}: {e}".splitlines()[0] + " | " + traceback.format_exc().strip().splitlines()[-1]
    after = _snapshot(folder, inputs.root)
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.startswith("dreamgym")]
    one_line = line is not None and lines == [line] and "Traceback" not in text and "; " in line
    names = case.names(folder, inputs)
    if case.expect == "report":
        found = [ln.strip() for ln in out.getvalue().splitlines() if any(n in ln for n in names)]
        line = found[0] if found and status == 1 and "Traceback" not in text else None
        one_line = line is not None
    record = {
        "name": case.name,
        "expect": case.expect,
        "argv": [a.replace(str(folder), "<case>").replace(str(inputs.root), "<inputs>") for a in argv],
        "exit_status": status,
        "line": line.replace(str(folder), "<case>").replace(str(inputs.root), "<inputs>") if line else None,
        "refused_in_one_line": one_line,
        "named": line is not None and all(n in line for n in names),
        "lost": sorted(p for p in before if after.get(p) != before[p]),
        "wrote": sorted(p for p in after if p not in before),
        "bug": bug,
    }
    record["passed"] = record["refused_in_one_line"] and record["named"] and not record["lost"] and not record["wrote"]
    return record


def run_cases(workdir: str | Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Make the inputs under ``workdir`` and try the cases (``names``: only those); one record each."""
    cases = all_cases()
    if names is not None:
        unknown = sorted(set(names) - {c.name for c in cases})
        if unknown:
            raise ValueError(f"unknown case(s) {unknown}; the cases are {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in names]
    workdir = Path(workdir)
    inputs = make_inputs(workdir / "inputs")
    return [run_case(c, inputs, workdir / "cases" / f"{k:02d}") for k, c in enumerate(cases)]


def counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The suite's figures: cases tried, refused in one clear line, naming the input, nothing lost or written."""
    tried = [r for r in records if r.get("skipped") is None]
    return {
        "cases": len(records),
        "tried": len(tried),
        "skipped": [r["name"] for r in records if r.get("skipped") is not None],
        "refused_in_one_line": sum(r["refused_in_one_line"] for r in tried if r["expect"] == "refusal"),
        "reported_by_name": sum(r["refused_in_one_line"] for r in tried if r["expect"] == "report"),
        "named_what_was_wrong": sum(r["named"] for r in tried),
        "lost_nothing": sum(not r["lost"] for r in tried),
        "wrote_nothing": sum(not r["wrote"] for r in tried),
        "passed": sum(bool(r["passed"]) for r in tried),
        "failed": [r["name"] for r in tried if not r["passed"]],
    }


def run(cfg: DictConfig) -> int:
    """``dreamgym bench reliability``: try every case, write the records and counts (see the module docstring)."""
    from dreamgym.benchmarks.runner import start

    bench = start("reliability", cfg)
    temp = None if cfg.get("workdir") else tempfile.TemporaryDirectory(prefix="dreamgym-reliability-")
    try:
        records = run_cases(cfg.workdir or temp.name, list(cfg.cases) if cfg.get("cases") else None)  # type: ignore[union-attr]
    finally:
        if temp is not None:
            temp.cleanup()
    for r in records:
        bench.add(r["name"], r)
    bench.summary = counts(records)
    bench.write(cfg.get("out"))
    s = bench.summary
    print(
        f"bench reliability: {s['tried']} cases tried ({len(s['skipped'])} skipped), {s['refused_in_one_line']} refused in one line, "
        f"{s['reported_by_name']} reported by a check command, "
        f"{s['named_what_was_wrong']} naming what was wrong, {s['lost_nothing']} lost nothing, {s['wrote_nothing']} wrote nothing"
        + (f"; failed: {s['failed']}" if s["failed"] else "")
    )
    return 0 if not s["failed"] else 1
