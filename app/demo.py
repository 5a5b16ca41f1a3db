"""``dreamgym demo``: the end-to-end demo on the embedded default.

Stages, each a ``dreamgym`` command run in-process with the same code and configs as on the
command line, each skipped when a previous run finished it (``<out>/stages/<name>.json``), so an
interrupted demo is re-run with the same command:

1. ``rooms``     -- a few seeded rooms and one scripted-expert episode per task (mp4s);
2. ``collect``   -- a little data from the batched simulator (behaviour mix);
3. ``world_model`` -- the shipped default world model fine-tuned on the collected data for
   ``wm_steps`` steps by the one world-model trainer, configured as ``train-wm init=default``
   (``worldmodel.train.train``); ``wm_init=null`` trains one from scratch instead,
   ``wm_steps=0`` uses the shipped default as it is;
4. ``eval_wm``   -- the world model against the simulator on held-out rooms (metrics, plots,
   real | dream videos);
5. ``policy``    -- a policy trained only in imagination (``train-policy env=dream``);
6. ``eval_policy`` -- that policy, the scripted expert and a random policy in the real simulator;
7. ``report``    -- ``report.md`` with the tables, plots and videos.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm


def ego_frame(ego_rgb: np.ndarray, scale: int) -> np.ndarray:
    """(3, H, W) uint8 -> (H*scale, W*scale, 3) for video."""
    return np.kron(ego_rgb.transpose(1, 2, 0), np.ones((scale, scale, 1), np.uint8))


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Stages:
    """Runs named stages once: a finished stage leaves ``stages/<name>.json`` with its summary."""

    def __init__(self, out: Path):
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.summaries: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        marker = self.dir / f"{name}.json"
        if marker.exists():
            summary = json.loads(marker.read_text())
            print(f"[demo] {name}: done in an earlier run, skipped")
        else:
            print(f"[demo] {name} ...", flush=True)
            t0 = time.time()
            result = fn()
            summary = {"result": result, "seconds": round(time.time() - t0, 1)}
            _atomic_json(marker, summary)
            print(f"[demo] {name}: {summary['seconds']} s", flush=True)
        self.summaries[name] = summary
        return summary["result"]


def _cli(*argv: str) -> None:
    from dreamgym.app.cli import main

    code = main(list(argv))
    if code:
        raise SystemExit(f"dreamgym {' '.join(argv)} exited with {code}")


def expert_videos(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """One scripted-expert episode per task in the C MuJoCo env: ego | overhead mp4s."""
    import imageio.v2 as imageio

    from dreamgym.envs.ego_room_env import EgoRoomEnv

    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for k, task in enumerate(cfg.tasks):
        scale = int(cfg.video_scale)
        env = EgoRoomEnv(task=task, resolution=int(cfg.resolution), render_mode="rgb_array", render_resolution=int(cfg.resolution) * scale)
        obs, info = env.reset(seed=int(cfg.seed) + k)
        path, tmp = out / f"{task}.mp4", out / f".{task}.tmp.mp4"
        writer = imageio.get_writer(tmp, fps=env.metadata["render_fps"], macro_block_size=1)
        ret, steps = 0.0, 0
        with tqdm(total=env.core.task.max_steps, desc=f"{task}: {info['instruction_text']}", unit="step") as bar:
            while True:
                writer.append_data(np.concatenate([ego_frame(obs["ego_rgb"], scale), env.render()], axis=1))
                obs, r, term, trunc, info = env.step(env.expert_action())
                ret, steps = ret + r, steps + 1
                bar.update(1)
                if term or trunc:
                    break
        writer.append_data(np.concatenate([ego_frame(obs["ego_rgb"], scale), env.render()], axis=1))
        writer.close()
        os.replace(tmp, path)
        env.close()
        results[task] = {
            "instruction": info["instruction_text"],
            "success": bool(info["success"]),
            "return": round(float(ret), 3),
            "steps": steps,
            "video": str(path.relative_to(out.parent)),
        }
        print(f"{task:>7}: {'success' if info['success'] else 'failure'} in {steps} steps, return {ret:.2f} -> {path}")
    return results


def _table(rows: list[list[Any]], header: list[str]) -> str:
    fmt = lambda x: f"{x:.3g}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(cfg: DictConfig, out: Path, stages: Stages) -> str:
    """``report.md``: what each stage produced, with tables, plots and videos."""
    s = stages.summaries
    parts = ["# dreamgym demo report", ""]
    parts.append("Stage times (s): " + ", ".join(f"{k} {v['seconds']}" for k, v in s.items() if "seconds" in v))
    parts += ["", "## Rooms and scripted experts (simulator)", ""]
    rooms = s.get("rooms", {}).get("result", {})
    parts.append(
        _table(
            [[t, r["instruction"], r["success"], r["return"], r["steps"], f"[mp4]({r['video']})"] for t, r in rooms.items()],
            ["task", "instruction", "success", "return", "steps", "video (ego | overhead)"],
        )
    )
    wmr = s.get("world_model", {}).get("result", {})
    if wmr:
        how = (
            f"fine-tuned from `{wmr['init']}` for {wmr['trained_steps']} steps on the collected data"
            if wmr.get("init")
            else f"trained from scratch for {wmr['trained_steps']} steps"
            if wmr.get("trained_steps")
            else "used as shipped"
        )
        parts += ["", f"World model: `{wmr.get('checkpoint')}`, {how}."]
    wm = out / "eval_wm" / "metrics.json"
    if wm.exists():
        m = json.loads(wm.read_text())
        parts += ["", "## World model vs the simulator (held-out rooms)", ""]
        parts.append((out / "eval_wm" / "tables.md").read_text())
        parts.append("")
        for png in sorted((out / "eval_wm").glob("*.png")):
            parts.append(f"![{png.stem}]({png.relative_to(out)})")
        for mp4 in sorted((out / "eval_wm").rglob("*.mp4")):
            parts.append(f"- real | dream: [{mp4.name}]({mp4.relative_to(out)})")
        if "counterfactual" in m:
            parts += ["", "Counterfactual controllability:", "", "```", json.dumps(m["counterfactual"], indent=1)[:3000], "```"]
    ev = out / "eval_policy.json"
    if ev.exists():
        e = json.loads(ev.read_text())
        parts += ["", "## Policies in the real simulator (held-out rooms)", ""]
        ci = lambda v: "-".join(f"{x:.2f}" for x in v) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
        rows = [
            [name, r.get("success_rate"), ci(r.get("success_ci95")), r.get("mean_return"), ci(r.get("return_ci95")), r.get("episodes")]
            for name, r in e.items()
        ]
        parts.append(_table(rows, ["policy", "success rate", "95% CI", "mean return", "95% CI", "episodes"]))
    text = "\n".join(parts) + "\n"
    tmp = out / "report.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "report.md")
    return str(out / "report.md")


def world_model(cfg: DictConfig, data: Path, out: Path, overrides: list[str]) -> dict[str, Any]:
    """The demo's world model: ``wm_init`` fine-tuned on ``data`` for ``wm_steps`` steps by the one
    world-model trainer, configured as ``dreamgym train-wm`` would be (``wm_steps=0``: as it is)."""
    init = cfg.get("wm_init")
    if int(cfg.wm_steps) <= 0:  # wm_init as it is (default: the embedded default, as shipped)
        from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT

        return {"checkpoint": str(DEFAULT_CHECKPOINT if init in (None, "default") else init), "trained_steps": 0}
    from dreamgym.configs import compose
    from dreamgym.worldmodel.train import train as train_wm

    steps = int(cfg.wm_steps)
    args = [f"data={data}", f"out={out}", f"steps={steps}", f"seed={int(cfg.seed)}", f"eval_every={steps}"]
    args += [f"ckpt_every={max(50, steps // 4)}", f"warmup_steps={min(200, max(1, steps // 4))}", *([f"init={init}"] if init else [])]
    args.append(f"props_rollout_steps={min(3000, steps)}")  # the props rollout stage, as long as the fine-tuning
    train_wm(compose("train_wm", [*args, *overrides]))
    return {"checkpoint": str(out / "final"), "trained_steps": steps, "init": str(init) if init else None}


def run(cfg: DictConfig) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    task = str(cfg.task)
    data, wm, policy = out / "data", out / "world_model", out / "policy"

    stages.run("rooms", lambda: expert_videos(cfg, out / "rooms"))

    extra = cfg.get("overrides") or {}

    def more(cmd: str) -> list[str]:
        return [str(x) for x in (extra.get(cmd) or [])]

    def collect():
        _cli(
            "collect",
            f"task={task}",
            f"steps={int(cfg.collect_steps)}",
            f"num_envs={int(cfg.num_envs)}",
            f"resolution={int(cfg.wm_resolution)}",
            f"out={data}",
            f"seed={int(cfg.seed)}",
            f'policy="{cfg.behaviour}"',
            *more("collect"),
        )
        return {"dataset": str(data)}

    stages.run("collect", collect)

    ckpt = stages.run("world_model", lambda: world_model(cfg, data, wm, more("train_wm")))["checkpoint"]

    def eval_wm():
        _cli(
            "eval-wm",
            f"checkpoint={ckpt}",
            f"data={data}",
            f"out={out / 'eval_wm'}",
            f"starts_per_task={int(cfg.eval_wm_starts)}",
            "num_videos=2",
            *more("eval_wm"),
        )
        return json.loads((out / "eval_wm" / "metrics.json").read_text())

    stages.run("eval_wm", eval_wm)

    def train_policy():
        _cli(
            "train-policy",
            "env=dream",
            f"task={task}",
            f"checkpoint={ckpt}",
            f"out={policy}",
            f"steps={int(cfg.policy_steps)}",
            f"num_envs={int(cfg.get('policy_envs', 32))}",
            f"seed={int(cfg.seed)}",
            *more("train_policy"),
        )
        return {"policy": str(policy)}  # the run folder: load_policy checks that it finished

    pol = stages.run("policy", train_policy)

    def eval_policy():
        from dreamgym.policies.evaluate import evaluate_policy

        results = {}
        for name, spec in (("dream-trained", pol["policy"]), ("expert", "expert"), ("random", "random")):
            results[name] = evaluate_policy(spec, task=task, episodes=int(cfg.eval_episodes), seed=int(cfg.seed))
        _atomic_json(out / "eval_policy.json", results)
        return {k: {kk: v.get(kk) for kk in ("success_rate", "mean_return")} for k, v in results.items()}

    stages.run("eval_policy", eval_policy)
    report = write_report(cfg, out, stages)
    print(f"[demo] report: {report}")
    return 0
